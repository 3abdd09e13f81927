"""A whole DenseNet-121 dense block: torchvision's _DenseBlock in eval mode (torch.cat of the
growing features, BN and ReLU as separate kernels) against fastconv.convert() of it (one
preallocated buffer, BN-ReLU as the 1×1's prologue, every 3×3 writing its slice in place)."""
import pytest

from . import _common as C
from ._ops import make_case, torch_result_fp32
from .shapes import shape_id


@pytest.mark.parametrize("provider", C.PROVIDERS)
@pytest.mark.parametrize("shape", C.shapes("DENSE_BLOCK_SHAPES"), ids=shape_id)
def test_dense_block(benchmark, shape, provider):
    ctx = C.require(provider)
    case = make_case(shape, C.batch(), C.DEVICE, C.dtype(), C.channels_last())
    fn = case.torch_fn if provider == "torch" else case.fastconv_fn
    C.run(benchmark, ctx, fn, case.inputs, torch_result_fp32(case), flops=case.flops, moved=case.moved)
