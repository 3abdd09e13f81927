"""fastconv.conv1x1 (a GEMM over channels, bias + ReLU epilogue) against PyTorch's 1×1 conv + ReLU
at every 1×1 shape of the five networks."""
import pytest
import torch

import fastconv
from fastconv.ops import reference

from . import _common as C
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("CONV1X1_SHAPES"), ids=shape_id)
def test_conv1x1(benchmark, shape, provider):
    ctx = C.require(provider)
    n, s = C.batch(), shape.stride

    def make(gen):
        return (C.randn(n, shape.in_channels, shape.height, shape.width, gen=gen),
                C.randn(shape.out_channels, shape.in_channels, 1, 1, gen=gen, scale=shape.in_channels ** -0.5,
                        layout=False),
                C.randn(shape.out_channels, gen=gen, layout=False))

    inputs = C.make_inputs(make)

    def torch_op(x, w, b):
        return reference.conv1x1(x, w, b, None, None, None, False, [s, s], True)

    def fastconv_op(x, w, b):
        return fastconv.conv1x1(x, w, b, s, relu=True)

    with torch.inference_mode(), C.fp32_precision():
        ref = torch_op(*(t.float() for t in inputs[0]))
    oh, ow = shape.out_hw
    moved = C.itemsize() * (n * shape.in_channels * shape.height * shape.width
                            + shape.out_channels * shape.in_channels + n * shape.out_channels * oh * ow)
    C.run(benchmark, ctx, torch_op if provider == "torch" else fastconv_op, inputs, ref,
          flops=2 * shape.macs(n), moved=moved)
