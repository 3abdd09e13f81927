"""fastconv.conv2d_relu against PyTorch (conv2d + bias + ReLU) at every k×k conv shape of the
five networks (1×1 convs are bench_conv1x1.py's)."""
import pytest

from . import _common as C
from ._ops import make_case, torch_result_fp32
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("CONV_SHAPES"), ids=shape_id)
def test_conv2d_relu(benchmark, shape, provider):
    ctx = C.require(provider)
    case = make_case(shape, C.batch(), C.DEVICE, C.dtype(), C.channels_last())
    fn = case.torch_fn if provider == "torch" else case.fastconv_fn
    C.run(benchmark, ctx, fn, case.inputs, torch_result_fp32(case), flops=case.flops, moved=case.moved)
