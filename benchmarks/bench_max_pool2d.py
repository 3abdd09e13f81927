"""fastconv.max_pool2d against F.max_pool2d at every max-pool shape of the five networks
(memory-bound: GB/s of one read of the input and one write of the output)."""
import pytest
import torch

import fastconv
from fastconv.ops import reference

from . import _common as C
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("POOL_SHAPES"), ids=shape_id)
def test_max_pool2d(benchmark, shape, provider):
    ctx = C.require(provider)
    n, k, s, p = C.batch(), shape.kernel, shape.stride, shape.padding
    inputs = C.make_inputs(lambda gen: (C.randn(n, shape.channels, shape.height, shape.width, gen=gen),))

    def torch_op(x):
        return reference.max_pool2d(x, [k, k], [s, s], [p, p], [1, 1], shape.ceil_mode)

    def fastconv_op(x):
        return fastconv.max_pool2d(x, k, s, p, 1, shape.ceil_mode)

    with torch.inference_mode():
        ref = torch_op(inputs[0][0].float())
    oh, ow = shape.out_hw
    moved = C.itemsize() * n * shape.channels * (shape.height * shape.width + oh * ow)
    C.run(benchmark, ctx, torch_op if provider == "torch" else fastconv_op, inputs, ref, moved=moved)
