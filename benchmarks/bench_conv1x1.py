"""fastconv.conv1x1 (a GEMM over channels, bias + ReLU epilogue) against PyTorch's 1×1 conv + ReLU
at every 1×1 shape of the five networks."""
import pytest

from . import _common as C
from ._ops import make_case, torch_result_fp32
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("CONV1X1_SHAPES"), ids=shape_id)
def test_conv1x1(benchmark, shape, provider):
    ctx = C.require(provider)
    case = make_case(shape, C.batch(), C.DEVICE, C.dtype(), C.channels_last())
    fn = case.torch_fn if provider == "torch" else case.fastconv_fn
    C.run(benchmark, ctx, fn, case.inputs, torch_result_fp32(case), flops=case.flops, moved=case.moved)
