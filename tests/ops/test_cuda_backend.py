"""The cuda backend on a GPU: every op, dtype and layout against the fp64 reference and cuDNN,
and the dispatch actually taken (fastconv::_cuda_plan) for the shapes meant to hit CUTLASS.

All tests here are @pytest.mark.gpu: on a machine without CUDA they skip (tests/conftest.py).
The CPU-side rules of the dispatch are tested in tests/test_cuda_plan.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv import _ext
from fastconv.ops import conv1x1_multi, reference
from tests.utils import REL_TOL, REL_TOL_TF32, assert_close_rel, poisoned_like, to_layout

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_ext.load_error() is not None, reason="the C++ extension is not built"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
CL = torch.channels_last


def _cc():
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _built_sm90a():
    from fastconv import _build_info

    return "9.0a" in str(getattr(_build_info, "CUDA_ARCH_LIST", ""))


def _tol(dtype):
    # fp32 runs exact fp32 math on the direct kernels (no TF32 kernel is built)
    return REL_TOL[dtype] if dtype != torch.float32 else 1e-5


def _ref64(fn, *tensors, **kw):
    return fn(*[None if t is None else t.double() for t in tensors], **kw)


# ---------------------------------------------------------------------------------------------
# conv2d_relu

CONV_CASES = [
    # (n, c, h, w, co, k, stride, pad, dilation, groups)
    (2, 64, 14, 14, 64, 3, 1, 1, 1, 1),      # ResNet basic block: CUTLASS on sm_90
    (2, 64, 28, 28, 128, 3, 2, 1, 1, 1),     # strided
    (2, 128, 14, 14, 256, 1, 2, 0, 1, 1),    # projection shortcut
    (1, 32, 17, 19, 48, 3, 1, 2, 2, 1),      # dilation, odd sizes
    (2, 3, 32, 32, 64, 7, 2, 3, 1, 1),       # 3-channel stem: direct
    (2, 32, 9, 9, 32, 3, 1, 1, 1, 4),        # groups: direct
    (1, 200, 7, 7, 136, 3, 1, 1, 1, 1),      # large K, C % 8 == 0, Co % 8 == 0, not a tile multiple
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_res", [False, True])
def test_conv2d_relu_cuda(dtype, layout, case, with_res):
    n, c, h, w, co, k, s, p, d, g = case
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = to_layout(torch.randn(n, c, h, w, device="cuda", dtype=dtype, generator=gen), layout)
    wt = (torch.randn(co, c // g, k, k, device="cuda", dtype=dtype, generator=gen) / (c // g * k * k) ** 0.5)
    wt = to_layout(wt, layout)
    b = torch.randn(co, device="cuda", dtype=dtype, generator=gen)
    ref_shape = F.conv2d(x.double(), wt.double(), None, s, p, d, g).shape
    res = to_layout(torch.randn(ref_shape, device="cuda", dtype=dtype, generator=gen), layout) if with_res else None
    with fastconv.use_backend("cuda"):
        y = fastconv.conv2d_relu(x, wt, b, s, p, d, g, residual=res)
    ref = _ref64(reference.conv2d_relu, x, wt, b, res, stride=[s, s], padding=[p] * 4, dilation=[d, d], groups=g,
                 relu=True)
    assert_close_rel(y, ref, dtype, f"conv2d_relu cuda {case}", tol=_tol(dtype))
    # cuDNN in the same dtype, for scale
    cud = torch.relu(F.conv2d(x, wt, b, s, p, d, g) + (res if with_res else 0))
    assert_close_rel(cud, ref, dtype, "cuDNN", tol=max(_tol(dtype), 2e-3) if dtype == torch.float32 else _tol(dtype))


def test_conv2d_relu_takes_cutlass_on_h100():
    if _cc() != 90 or not _built_sm90a():
        pytest.skip(f"CUTLASS SM90 kernels need compute capability 9.0 and an sm_90a build (cc={_cc()})")
    x = torch.randn(2, 64, 14, 14, device="cuda", dtype=torch.float16).contiguous(memory_format=CL)
    w = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.float16).contiguous(memory_format=CL)
    out = torch.empty(2, 64, 14, 14, device="cuda", dtype=torch.float16).contiguous(memory_format=CL)
    plan = torch.ops.fastconv._cuda_plan("conv2d_relu", x, w, None, out, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    assert plan == "cutlass_sm90"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_relu_out_channel_slice_and_asymmetric_padding(dtype, relu):
    x = torch.randn(2, 32, 10, 12, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    w = (torch.randn(16, 32, 3, 3, device="cuda", dtype=dtype) / 17).contiguous(memory_format=CL)
    buf = torch.full((2, 64, 9, 11), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=CL)
    out = buf[:, 24:40]
    torch.ops.fastconv._conv2d_relu_cuda(x, w, None, None, [1, 1], [0, 1, 1, 0], [1, 1], 1, relu, out)
    ref = _ref64(reference.conv2d_relu, x, w, None, None, stride=[1, 1], padding=[0, 1, 1, 0], dilation=[1, 1],
                 groups=1, relu=relu)
    assert_close_rel(out, ref, dtype, "out slice")
    assert torch.isnan(buf[:, :24]).all() and torch.isnan(buf[:, 40:]).all()


@pytest.mark.parametrize("kernels", ["default", "sm80", "sm90_tf32"])
def test_conv2d_relu_nan_propagates(kernels, request):
    dtype = torch.float32 if kernels == "sm90_tf32" else torch.float16
    if kernels == "sm80":
        request.getfixturevalue("force_sm80")  # the CUTLASS 2.x epilogue's own ReLU
    elif kernels == "sm90_tf32":
        request.getfixturevalue("sm90_tf32")
    x = torch.randn(1, 32, 6, 6, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    x[0, 3, 2, 2] = float("nan")
    w = torch.randn(16, 32, 3, 3, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    with fastconv.use_backend("cuda"):
        y = fastconv.conv2d_relu(x, w, None, 1, 1)
    assert torch.isnan(y[0, :, 1:4, 1:4]).all()


@pytest.mark.parametrize("kernels", ["default", "sm80"])
def test_cutlass_takes_a_misaligned_channels_last_weight_through_a_repack(kernels, request):
    # a channels_last weight at an odd storage offset: plan_conv asks for a repack, and the repack
    # must move it to an aligned copy (the host check, tests/test_cutlass_check.py, asserts the
    # pointers; this runs it)
    if kernels == "sm80":
        request.getfixturevalue("force_sm80")
    elif _cc() != 90 or not _built_sm90a():
        pytest.skip(f"CUTLASS SM90 kernels need compute capability 9.0 and an sm_90a build (cc={_cc()})")
    dtype = torch.float16
    x = torch.randn(2, 16, 10, 10, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    base = torch.randn(16 * 3 * 3 * 16 + 1, device="cuda", dtype=dtype) / 12
    w = base[1:].view(16, 3, 3, 16).permute(0, 3, 1, 2)
    assert w.is_contiguous(memory_format=CL) and w.data_ptr() % 16 != 0
    out = torch.full((2, 16, 10, 10), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=CL)
    args = ([1, 1], [1] * 4, [1, 1], 1)
    plan = torch.ops.fastconv._cuda_plan("conv2d_relu", x, w, None, out, *args)
    assert plan.startswith("cutlass_") and "repacked" in plan, plan
    torch.ops.fastconv._conv2d_relu_cuda(x, w, None, None, *args, True, out)
    ref = _ref64(reference.conv2d_relu, x, w, None, None, stride=[1, 1], padding=[1] * 4, dilation=[1, 1],
                 groups=1, relu=True)
    assert_close_rel(out, ref, dtype, f"{kernels}: misaligned weight")


# ---------------------------------------------------------------------------------------------
# The CUTLASS 2.x (sm_80) kernels, forced (FASTCONV_CUTLASS_SM80=force): on an 8.x card they are
# the path FASTCONV_CUTLASS_SM80=1 would take; on Hopper they run in place of the SM90 kernel
# (mma.sync runs there), so one H100 run verifies them. float32 runs them as TF32.

SM80_CASES = [
    # (n, c, h, w, co, k, stride, pad, dilation)
    (2, 64, 14, 14, 64, 3, 1, 1, 1),        # ResNet basic block
    (2, 64, 28, 28, 128, 3, 2, 1, 1),       # strided
    (2, 128, 14, 14, 256, 1, 2, 0, 1),      # projection shortcut (1x1, stride 2)
    (1, 32, 17, 19, 48, 3, 1, 2, 2),        # dilation, odd sizes
    (1, 200, 7, 7, 136, 3, 1, 1, 1),        # K = 1800 and C_out not tile multiples
    (2, 16, 40, 40, 32, 3, 10, 1, 1),       # stride 10: beyond TMA im2col, fine for cp.async
    (1, 64, 5, 5, 64, 11, 1, 5, 1),         # AlexNet-size filter
    (2, 3, 32, 32, 64, 7, 2, 3, 1),         # stems: 3 channels zero-padded to 4, few-channels kernel
    (2, 3, 39, 39, 64, 11, 4, 2, 1),        # (TF32: the regular kernel on the 4 padded channels)
    (2, 3, 16, 16, 64, 3, 1, 1, 1),
]


@pytest.fixture
def force_sm80(monkeypatch):
    if not 80 <= _cc() <= 90:
        pytest.skip(f"the CUTLASS 2.x kernels run on compute capability 8.x and 9.0 (cc={_cc()})")
    monkeypatch.setenv("FASTCONV_CUTLASS_SM80", "force")
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True  # float32 through TF32, as PyTorch's default for convs
    yield
    torch.backends.cudnn.allow_tf32 = prev


def _sm80_tol(dtype):
    return REL_TOL_TF32 if dtype == torch.float32 else REL_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", SM80_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_res", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_relu_cutlass_sm80(force_sm80, dtype, case, with_res, relu):
    _check_cutlass_conv(case, dtype, with_res, relu, "cutlass_sm80")


def _check_cutlass_conv(case, dtype, with_res, relu, path):
    """One conv2d_relu problem on the CUTLASS kernel ``path`` (asserted through _cuda_plan) against
    the fp64 reference, into a NaN-poisoned channels_last out."""
    n, c, h, w, co, k, s, p, d = case
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype, generator=gen).contiguous(memory_format=CL)
    wt = (torch.randn(co, c, k, k, device="cuda", dtype=dtype, generator=gen) / (c * k * k) ** 0.5)
    wt = wt.contiguous(memory_format=CL)
    b = torch.randn(co, device="cuda", dtype=dtype, generator=gen)
    oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    res = torch.randn(n, co, oh, ow, device="cuda", dtype=dtype, generator=gen).contiguous(memory_format=CL) \
        if with_res else None
    out = torch.full((n, co, oh, ow), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=CL)
    args = ([s, s], [p] * 4, [d, d], 1)
    plan = torch.ops.fastconv._cuda_plan("conv2d_relu", x, wt, res, out, *args)
    assert plan == path or (c == 3 and plan.startswith(path + ": C_in=3 zero-padded")), plan
    torch.ops.fastconv._conv2d_relu_cuda(x, wt, b, res, *args, relu, out)
    ref = _ref64(reference.conv2d_relu, x, wt, b, res, stride=[s, s], padding=[p] * 4, dilation=[d, d], groups=1,
                 relu=relu)
    assert_close_rel(out, ref, dtype, f"{path} {case}", tol=_sm80_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cutlass_sm80_out_slice_x_slice_and_asymmetric_padding(force_sm80, dtype):
    _check_slices(dtype, "cutlass_sm80")


def _check_slices(dtype, path):
    """DenseNet's pattern: x a channel slice of one NHWC buffer, out another one; the channels
    around out stay untouched (NaN), padding (top 0, bottom 1, left 1, right 0)."""
    xbuf = torch.randn(2, 48, 10, 12, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    x = xbuf[:, 8:40]
    w = (torch.randn(16, 32, 3, 3, device="cuda", dtype=dtype) / 17).contiguous(memory_format=CL)
    b = torch.randn(16, device="cuda", dtype=dtype)
    buf = torch.full((2, 64, 9, 11), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=CL)
    out = buf[:, 24:40]
    args = ([1, 1], [0, 1, 1, 0], [1, 1], 1)
    assert torch.ops.fastconv._cuda_plan("conv2d_relu", x, w, None, out, *args) == path
    torch.ops.fastconv._conv2d_relu_cuda(x, w, b, None, *args, True, out)
    ref = _ref64(reference.conv2d_relu, x, w, b, None, stride=[1, 1], padding=[0, 1, 1, 0], dilation=[1, 1],
                 groups=1, relu=True)
    assert_close_rel(out, ref, dtype, f"{path} out slice", tol=_sm80_tol(dtype))
    assert torch.isnan(buf[:, :24]).all() and torch.isnan(buf[:, 40:]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prologue", [False, True])
def test_conv1x1_cutlass_sm80(force_sm80, dtype, stride, prologue):
    _check_conv1x1(dtype, stride, prologue, "cutlass_sm80")


def _check_conv1x1(dtype, stride, prologue, path):
    gen = torch.Generator(device="cuda").manual_seed(4)
    n, c, h, w, co = 2, 64, 13, 15, 96
    x = torch.randn(n, c, h, w, device="cuda", dtype=dtype, generator=gen).contiguous(memory_format=CL)
    wt = torch.randn(co, c, device="cuda", dtype=dtype, generator=gen) / c ** 0.5
    b = torch.randn(co, device="cuda", dtype=dtype, generator=gen)
    scale = torch.rand(c, device="cuda", dtype=dtype, generator=gen) + 0.5 if prologue else None
    shift = torch.randn(c, device="cuda", dtype=dtype, generator=gen) if prologue else None
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    out = torch.full((n, co, oh, ow), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=CL)
    plan = torch.ops.fastconv._cuda_plan("conv1x1", x, wt, None, out, [stride, stride], [], [], 1, prologue)
    assert plan.startswith(path), plan
    with fastconv.use_backend("cuda"):
        fastconv.conv1x1(x, wt, b, stride, in_scale=scale, in_shift=shift, in_relu=prologue, out=out)
    ref = _ref64(reference.conv1x1, x, wt, b, None, scale, shift, in_relu=prologue, stride=[stride, stride], relu=True)
    assert_close_rel(out, ref, dtype, f"conv1x1 {path}", tol=_sm80_tol(dtype))


# ---------------------------------------------------------------------------------------------
# The SM90 kernel's TF32 instantiation (FASTCONV_CUTLASS_SM90_TF32=1; off by default until this
# runs on a GPU): float32 operands, TF32 wgmma, fp32 accumulation and epilogue.

SM90_TF32_CASES = [c for c in SM80_CASES if c[1] >= 8 and c[6] <= 8] + [
    (2, 8, 12, 12, 32, 3, 1, 1, 1),         # the smallest C_in it takes: 8 x fp32 = 32 bytes
]


@pytest.fixture
def sm90_tf32(monkeypatch):
    if _cc() != 90 or not _built_sm90a():
        pytest.skip(f"the SM90 TF32 kernel needs compute capability 9.0 and an sm_90a build (cc={_cc()})")
    monkeypatch.setenv("FASTCONV_CUTLASS_SM90_TF32", "1")
    monkeypatch.delenv("FASTCONV_CUTLASS_SM80", raising=False)
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32 = prev


@pytest.mark.parametrize("case", SM90_TF32_CASES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("with_res", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_relu_cutlass_sm90_tf32(sm90_tf32, case, with_res, relu):
    _check_cutlass_conv(case, torch.float32, with_res, relu, "cutlass_sm90")


def test_cutlass_sm90_tf32_out_slice_x_slice_and_asymmetric_padding(sm90_tf32):
    _check_slices(torch.float32, "cutlass_sm90")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prologue", [False, True])
def test_conv1x1_cutlass_sm90_tf32(sm90_tf32, stride, prologue):
    _check_conv1x1(torch.float32, stride, prologue, "cutlass_sm90")


# ---------------------------------------------------------------------------------------------
# conv1x1

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "strided"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prologue", [False, True])
def test_conv1x1_cuda(dtype, layout, stride, prologue):
    gen = torch.Generator(device="cuda").manual_seed(1)
    n, c, h, w, co = 2, 64, 13, 15, 96
    x = to_layout(torch.randn(n, c, h, w, device="cuda", dtype=dtype, generator=gen), layout)
    wt = torch.randn(co, c, device="cuda", dtype=dtype, generator=gen) / c ** 0.5
    b = torch.randn(co, device="cuda", dtype=dtype, generator=gen)
    scale = torch.rand(c, device="cuda", dtype=dtype, generator=gen) + 0.5 if prologue else None
    shift = torch.randn(c, device="cuda", dtype=dtype, generator=gen) if prologue else None
    with fastconv.use_backend("cuda"):
        y = fastconv.conv1x1(x, wt, b, stride, in_scale=scale, in_shift=shift, in_relu=prologue)
    ref = _ref64(reference.conv1x1, x, wt, b, None, scale, shift, in_relu=prologue, stride=[stride, stride], relu=True)
    assert_close_rel(y, ref, dtype, "conv1x1 cuda", tol=_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_conv1x1_cuda_grouped_outs_and_residual(dtype):
    x = torch.randn(2, 64, 8, 8, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    w1, w2 = torch.randn(32, 64, device="cuda", dtype=dtype) / 8, torch.randn(24, 64, device="cuda", dtype=dtype) / 8
    buf = torch.full((2, 80, 8, 8), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=CL)
    with fastconv.use_backend("cuda"):
        y1, y2 = conv1x1_multi(x, [w1, w2], outs=[buf[:, 16:48], None])
    assert_close_rel(y1, _ref64(reference.conv1x1, x, w1, None, None, None, None, in_relu=False, stride=[1, 1],
                                relu=True), dtype, "out 0", tol=_tol(dtype))
    assert_close_rel(y2, _ref64(reference.conv1x1, x, w2, None, None, None, None, in_relu=False, stride=[1, 1],
                                relu=True), dtype, "out 1", tol=_tol(dtype))
    assert torch.isnan(buf[:, :16]).all() and torch.isnan(buf[:, 48:]).all()
    res = torch.randn(2, 32, 8, 8, device="cuda", dtype=dtype).contiguous(memory_format=CL)
    with fastconv.use_backend("cuda"):
        y = fastconv.conv1x1(x, w1, None, residual=res, relu=False)
    assert_close_rel(y, _ref64(reference.conv1x1, x, w1, None, res, None, None, in_relu=False, stride=[1, 1],
                               relu=False), dtype, "residual", tol=_tol(dtype))


# ---------------------------------------------------------------------------------------------
# max_pool2d and dense_concat

POOL_CASES = [((3, 3), (2, 2), (1, 1), (1, 1), False), ((2, 2), (2, 2), (0, 0), (1, 1), True),
              ((3, 3), (1, 1), (1, 1), (2, 2), False), ((3, 3), (2, 2), (0, 0), (1, 1), True)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "strided"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("channels", [64, 3])
def test_max_pool2d_cuda_bit_exact(dtype, layout, case, channels):
    k, s, p, d, ceil = case
    x = to_layout(torch.randn(2, channels, 15, 17, device="cuda", dtype=dtype), layout)
    x[0, 0, 3, 4] = float("nan")  # NaN propagates as in PyTorch
    x[1, -1, 14, 16] = float("nan")
    with fastconv.use_backend("cuda"):
        y = fastconv.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
    ref = F.max_pool2d(x, k, s, p, d, ceil_mode=ceil)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.equal(y.nan_to_num(), ref.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_dense_concat_cuda(dtype, layout):
    feats = [to_layout(torch.randn(2, c, 7, 9, device="cuda", dtype=dtype), layout) for c in (64, 32, 5, 16)]
    with fastconv.use_backend("cuda"):
        y = fastconv.dense_concat(feats)
    assert torch.equal(y, torch.cat(feats, 1))
    memory_format = CL if layout == "nhwc" else torch.contiguous_format
    buf = torch.full((2, 130, 7, 9), float("nan"), device="cuda", dtype=dtype).contiguous(memory_format=memory_format)
    out = buf[:, 8:125]
    torch.ops.fastconv._dense_concat_cuda(feats, out)
    assert torch.equal(out, torch.cat(feats, 1))
    assert torch.isnan(buf[:, :8]).all() and torch.isnan(buf[:, 125:]).all()


def test_cuda_ops_reject_cpu_tensors():
    x = torch.randn(1, 8, 4, 4, device="cuda")
    out = poisoned_like(torch.empty(1, 8, 2, 2, device="cuda"))
    with pytest.raises(RuntimeError, match="one device"):
        torch.ops.fastconv._max_pool2d_cuda(x, [2, 2], [2, 2], [0, 0], [1, 1], out.cpu())
