"""A whole DenseNet-121 dense block: torchvision's _DenseBlock in eval mode (torch.cat of the
growing features, BN and ReLU as separate kernels) against fastconv.convert() of it (one
preallocated buffer, BN-ReLU as the 1×1's prologue, every 3×3 writing its slice in place)."""
import pytest
import torch

import fastconv
from fastconv._bench import randomize_batchnorm

from . import _common as C
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("DENSE_BLOCK_SHAPES"), ids=shape_id)
def test_dense_block(benchmark, shape, provider):
    from torchvision.models.densenet import _DenseBlock

    ctx = C.require(provider)
    n = C.batch()
    gen = torch.Generator().manual_seed(0)
    block = randomize_batchnorm(_DenseBlock(shape.num_layers, shape.in_channels, shape.bn_size,
                                            shape.growth_rate, 0.0), gen).eval()
    with torch.inference_mode(), C.fp32_precision():
        inputs = C.make_inputs(lambda g: (C.randn(n, shape.in_channels, shape.height, shape.width, gen=g),))
        ref = block.to(C.DEVICE)(inputs[0][0].float())
    if provider == "torch":
        model = block.to(C.dtype())
        if C.channels_last():
            model = model.to(memory_format=torch.channels_last)
    else:
        model = fastconv.convert(block, dtype=C.dtype(), channels_last=C.channels_last())
    C.run(benchmark, ctx, model, inputs, ref, flops=2 * shape.macs(n))
