"""fastconv.conv2d_relu against PyTorch (conv2d + bias + ReLU) at every k×k conv shape of the
five networks (1×1 convs are bench_conv1x1.py's)."""
import pytest
import torch

import fastconv
from fastconv.ops import reference

from . import _common as C
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("CONV_SHAPES"), ids=shape_id)
def test_conv2d_relu(benchmark, shape, provider):
    ctx = C.require(provider)
    n, (kh, kw), (ph, pw) = C.batch(), shape.kernel, shape.padding
    fan_in = shape.in_channels * kh * kw

    def make(gen):
        return (C.randn(n, shape.in_channels, shape.height, shape.width, gen=gen),
                C.randn(shape.out_channels, shape.in_channels, kh, kw, gen=gen, scale=fan_in ** -0.5, layout=False),
                C.randn(shape.out_channels, gen=gen, layout=False))

    inputs = C.make_inputs(make)

    def torch_op(x, w, b):
        return reference.conv2d_relu(x, w, b, None, list(shape.stride), [ph, ph, pw, pw], [1, 1], 1, True)

    def fastconv_op(x, w, b):
        return fastconv.conv2d_relu(x, w, b, shape.stride, shape.padding)

    with torch.inference_mode(), C.fp32_precision():
        ref = torch_op(*(t.float() for t in inputs[0]))
    oh, ow = shape.out_hw
    moved = C.itemsize() * (n * shape.in_channels * shape.height * shape.width + shape.out_channels * fan_in
                            + n * shape.out_channels * oh * ow)
    C.run(benchmark, ctx, torch_op if provider == "torch" else fastconv_op, inputs, ref,
          flops=2 * shape.macs(n), moved=moved)
