"""fastconv.max_pool2d against F.max_pool2d at every max-pool shape of the five networks
(memory-bound: GB/s of one read of the input and one write of the output)."""
import pytest

from . import _common as C
from ._ops import make_case, torch_result_fp32
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("POOL_SHAPES"), ids=shape_id)
def test_max_pool2d(benchmark, shape, provider):
    ctx = C.require(provider)
    case = make_case(shape, C.batch(), C.DEVICE, C.dtype(), C.channels_last())
    fn = case.torch_fn if provider == "torch" else case.fastconv_fn
    C.run(benchmark, ctx, fn, case.inputs, torch_result_fp32(case), flops=case.flops, moved=case.moved)
