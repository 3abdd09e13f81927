"""The cuda backend's dispatch rules held against CUTLASS's own host-side checks, without a GPU.

fastconv::_cutlass_check (csrc/cuda/cutlass_check.cpp) plans a problem as the CUDA op would
(csrc/cuda_plan.h) and, when the plan names a CUTLASS kernel, prepares the operands (channel
padding, weight repacking, conv1x1's prologue temporary) and builds the kernel's arguments with
the same code the CUDA ops use, then asks that kernel's can_implement: "<path>: ok", or
"<path>: refused: <why>". A refusal is a dispatch bug: on a GPU the op would raise instead of
taking the direct kernel. The tests below run every layer of the five networks and a few hundred
random problems (layouts, slices, strides, odd alignments) through it for the SM90 kernels, the
SM90 TF32 kernel and the CUTLASS 2.x kernels (on 8.0 and forced on 9.0)."""
import random

import pytest
import torch

from benchmarks import shapes
from fastconv import _ext

try:
    from fastconv import _build_info
except ImportError:  # never built
    _build_info = None

pytestmark = pytest.mark.skipif(
    _ext.load_error() is not None or _build_info is None or not _build_info.WITH_CUDA,
    reason="fastconv._C was built without its CUDA sources (FASTCONV_CUDA=0 or no nvcc)",
)

CL = torch.channels_last
# (compute capability, FASTCONV_CUTLASS_SM80 mode, FASTCONV_CUTLASS_SM90_TF32): the SM90 kernels
# (TF32 switched on), the 2.x kernels forced on Hopper, and the 2.x kernels on an A100.
MODES = [(90, 0, True), (90, 2, False), (80, 1, False)]
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def cutlass_check(op, x, w, out, *, bias=None, residual=None, stride=(1, 1), padding=(0, 0, 0, 0),
                  dilation=(1, 1), prologue=False, relu=True, cc=90, tf32=True, sm80=0, sm90_tf32=True,
                  kernel=None):
    return torch.ops.fastconv._cutlass_check(op, x, w, bias, residual, out, list(stride), list(padding),
                                             list(dilation), prologue, relu, cc, tf32, sm80, sm90_tf32, kernel)


def accepted(result):
    """The plan named a CUTLASS kernel and it accepts the arguments."""
    return result.startswith(("cutlass_sm90: ok", "cutlass_sm80: ok"))


def assert_taken_or_direct(result, what):
    assert result.startswith("direct:") or accepted(result), f"{what}: {result}"


def test_the_op_is_built():
    # a CUDA build without it would make every test here vacuous
    assert hasattr(torch.ops.fastconv, "_cutlass_check")


def _nhwc(n, c, h, w, dtype, device="meta"):
    return torch.empty(n, c, h, w, dtype=dtype, device=device).contiguous(memory_format=CL)


@pytest.mark.parametrize("cc,sm80,sm90_tf32", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_network_conv_is_taken(dtype, cc, sm80, sm90_tf32):
    """Every k x k conv layer of the five networks, batch 2, channels_last, with a bias and (for
    the stride-1 ones) a residual: the plan takes a CUTLASS kernel (the stems too, where the 2.x
    kernels pad them) and the kernel accepts the arguments."""
    mode = dict(cc=cc, sm80=sm80, sm90_tf32=sm90_tf32)
    for s in shapes.CONV_SHAPES:
        x = _nhwc(2, s.in_channels, s.height, s.width, dtype)
        w = _nhwc(s.out_channels, s.in_channels, *s.kernel, dtype)
        out = _nhwc(2, s.out_channels, *s.out_hw, dtype)
        bias = torch.empty(s.out_channels, dtype=dtype, device="meta")
        res = _nhwc(2, s.out_channels, *s.out_hw, dtype) if s.stride == (1, 1) else None
        pad = (s.padding[0], s.padding[0], s.padding[1], s.padding[1])
        got = cutlass_check("conv2d_relu", x, w, out, bias=bias, residual=res, stride=s.stride, padding=pad, **mode)
        stem_on_sm90 = s.in_channels * dtype.itemsize < 32 and sm80 == 0
        if stem_on_sm90:  # the SM90 kernel refuses inputs under 32 bytes a pixel (csrc/cuda_plan.h)
            assert got.startswith("direct:"), f"{s}: {got}"
        else:
            assert accepted(got), f"{s}: {got}"


@pytest.mark.parametrize("cc,sm80,sm90_tf32", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_network_conv1x1_is_taken(dtype, cc, sm80, sm90_tf32):
    """Every 1x1 layer (ResNet's strided projections included), with a residual where the shapes
    allow one, and DenseNet's with the BN-ReLU prologue (its temporary, then the GEMM)."""
    mode = dict(cc=cc, sm80=sm80, sm90_tf32=sm90_tf32)
    for s in shapes.CONV1X1_SHAPES:
        x = _nhwc(2, s.in_channels, s.height, s.width, dtype)
        w = torch.empty(s.out_channels, s.in_channels, dtype=dtype, device="meta")
        out = _nhwc(2, s.out_channels, *s.out_hw, dtype)
        res = _nhwc(2, s.out_channels, *s.out_hw, dtype)
        prologue = "densenet121" in s.nets
        got = cutlass_check("conv1x1", x, w, out, residual=res, stride=(s.stride, s.stride), prologue=prologue,
                            **mode)
        assert accepted(got), f"{s}: {got}"


def test_kernels_over_32_taps_take_the_direct_kernel_on_sm80():
    # CUTLASS 2.x's optimized activation iterator keeps one mask bit per filter row/column (R, S <= 32)
    x, out = _nhwc(1, 16, 40, 40, torch.float16), _nhwc(1, 16, 40, 8, torch.float16)
    w = _nhwc(16, 16, 1, 33, torch.float16)
    got = cutlass_check("conv2d_relu", x, w, out, cc=80, sm80=1)
    assert got.startswith("direct:") and "32" in got, got
    # what the rule spares: the kernel itself refuses it
    forced = cutlass_check("conv2d_relu", x, w, out, cc=80, sm80=1, kernel="cutlass_sm80")
    assert forced.startswith("cutlass_sm80: refused: can_implement"), forced
    w_ok = _nhwc(16, 16, 1, 32, torch.float16)
    out_ok = _nhwc(1, 16, 40, 9, torch.float16)
    assert cutlass_check("conv2d_relu", x, w_ok, out_ok, cc=80, sm80=1) == "cutlass_sm80: ok"


@pytest.mark.parametrize("kernel", ["cutlass_sm90", "cutlass_sm80"])
def test_the_kernels_refuse_what_the_plan_keeps_from_them(kernel):
    # the check is live: asked directly, each kernel refuses 12 input channels (not a multiple of
    # its 8-element, 16-byte accesses), and a misaligned x
    x, w, out = _nhwc(1, 12, 8, 8, torch.float16), _nhwc(16, 12, 3, 3, torch.float16), _nhwc(1, 16, 6, 6, torch.float16)
    assert cutlass_check("conv2d_relu", x, w, out).startswith("direct:")
    got = cutlass_check("conv2d_relu", x, w, out, sm80=2, kernel=kernel)
    assert got.startswith(f"{kernel}: refused: can_implement"), got
    buf = torch.empty(1 * 8 * 8 * 16 + 1, dtype=torch.float16)
    x_odd = buf[1:].view(1, 8, 8, 16).permute(0, 3, 1, 2)  # channels_last at a 2-byte offset
    w16, out16 = _nhwc(16, 16, 3, 3, torch.float16, "cpu"), _nhwc(1, 16, 6, 6, torch.float16, "cpu")
    assert "x is not 16-byte aligned" in cutlass_check("conv2d_relu", x_odd, w16, out16, sm80=2)
    got = cutlass_check("conv2d_relu", x_odd, w16, out16, sm80=2, kernel=kernel)
    assert got.startswith(f"{kernel}: refused: x is not 16-byte aligned"), got


def test_a_misaligned_channels_last_weight_is_copied_to_an_aligned_one():
    # a channels_last weight viewed at an odd storage offset: plan_conv asks for a repack, and the
    # repack must move it (a .contiguous() of an already-contiguous view would hand back the same
    # misaligned pointer)
    x, out = _nhwc(1, 16, 8, 8, torch.float16, "cpu"), _nhwc(1, 16, 8, 8, torch.float16, "cpu")
    base = torch.empty(16 * 16 * 9 + 1, dtype=torch.float16)
    w = base[1:].view(16, 3, 3, 16).permute(0, 3, 1, 2)  # [K, C, R, S] strides (144, 1, 48, 16)
    assert w.is_contiguous(memory_format=CL) and w.data_ptr() % 16 != 0
    for cc, sm80, _ in MODES:
        got = cutlass_check("conv2d_relu", x, w, out, padding=(1, 1, 1, 1), cc=cc, sm80=sm80)
        assert accepted(got) and "repacked" in got, got


@pytest.mark.parametrize("cc,sm80,sm90_tf32", MODES)
@pytest.mark.parametrize("n,c,hw,k", [(16, 64, 512, 64), (66, 64, 512, 64), (1, 64, 6000, 64), (1, 16, 46341, 16),
                                      (2, 8, 40000, 8), (1, 3, 30000, 64), (1, 4096, 32, 4096)])
def test_huge_problems(n, c, hw, k, cc, sm80, sm90_tf32):
    # meta tensors around the 2 GiB and 2^31-element marks (x, out, N*OH*OW, the weight): what the
    # plan hands a CUTLASS kernel, the kernel takes
    for dtype in DTYPES:
        x, out = _nhwc(n, c, hw, hw, dtype), _nhwc(n, k, hw, hw, dtype)
        got = cutlass_check("conv2d_relu", x, _nhwc(k, c, 3, 3, dtype), out, padding=(1, 1, 1, 1), cc=cc, sm80=sm80,
                            sm90_tf32=sm90_tf32)
        assert_taken_or_direct(got, f"{dtype} x{tuple(x.shape)}")
        got = cutlass_check("conv1x1", x, torch.empty(k, c, dtype=dtype, device="meta"), out, cc=cc, sm80=sm80,
                            sm90_tf32=sm90_tf32)
        assert_taken_or_direct(got, f"1x1 {dtype} x{tuple(x.shape)}")


def test_bad_arguments_raise():
    x, w, out = _nhwc(1, 16, 8, 8, torch.float16), _nhwc(16, 16, 3, 3, torch.float16), _nhwc(1, 16, 6, 6, torch.float16)
    with pytest.raises(RuntimeError, match="op must be"):
        cutlass_check("conv3d", x, w, out)
    with pytest.raises(RuntimeError, match="out must have shape"):
        cutlass_check("conv2d_relu", x, w, _nhwc(1, 16, 7, 7, torch.float16))
    with pytest.raises(RuntimeError, match="prologue belongs to conv1x1"):
        cutlass_check("conv2d_relu", x, w, out, prologue=True)
    with pytest.raises(RuntimeError, match="kernel must be"):
        cutlass_check("conv2d_relu", x, w, out, kernel="cudnn")
    with pytest.raises(RuntimeError, match="conv1x1 shapes disagree"):
        cutlass_check("conv1x1", x, torch.empty(16, 8, dtype=torch.float16, device="meta"), out)


# ---- random problems ----

def _view(rng, n, c, h, w, dtype, kind):
    """[n, c, h, w] as channels_last, NCHW, or a channel slice of a wider NHWC buffer (at an
    aligned or an odd channel offset): real CPU tensors, so pointer alignment is real too."""
    if kind == "cl":
        return torch.empty(n, c, h, w, dtype=dtype).contiguous(memory_format=CL)
    if kind == "nchw":
        return torch.empty(n, c, h, w, dtype=dtype)
    c0 = rng.choice([0, 8, 16]) if kind == "slice" else rng.choice([1, 3, 5])
    buf = torch.empty(n, c0 + c + rng.choice([0, 8, 24]), h, w, dtype=dtype).contiguous(memory_format=CL)
    return buf[:, c0:c0 + c]


def _random_problem(rng):
    dtype = rng.choice(DTYPES)
    op = rng.choice(["conv2d_relu", "conv2d_relu", "conv1x1"])
    n, h, w = rng.randint(1, 3), rng.randint(1, 17), rng.randint(1, 17)
    c = rng.choice([3, 4, 8, 16, 24, 32, 40, 64, 72])
    k = rng.choice([8, 16, 24, 64, 72])
    kinds = ["cl", "cl", "nchw", "slice", "odd_slice"]
    x = _view(rng, n, c, h, w, dtype, rng.choice(kinds))
    args = dict(relu=rng.random() < 0.5)
    if op == "conv1x1":
        stride = (rng.randint(1, 2), rng.randint(1, 2))
        oh, ow = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
        wt = torch.empty(k, c, dtype=dtype)
        if rng.random() < 0.3:
            wt = torch.empty(c, k, dtype=dtype).t()  # column-major rows: repacked
        elif rng.random() < 0.3:  # rows of a wider weight, as the grouped form hands each out
            r0 = rng.choice([1, 8, 16])
            wt = torch.empty(r0 + k, c, dtype=dtype)[r0:]
        args["prologue"] = rng.random() < 0.4
    else:
        kh, kw = rng.choice([1, 2, 3, 3, 5, 7, 11]), rng.choice([1, 3, 3, 5, 7])
        if rng.random() < 0.05:
            kh = rng.choice([31, 33, 40])
        dil = (rng.randint(1, 2), rng.randint(1, 3))
        pad = tuple(rng.randint(0, 3) for _ in range(4))
        stride = (rng.choice([1, 1, 2, 3, 9]), rng.choice([1, 2, 4]))
        span_h, span_w = (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1
        h_pad, w_pad = h + pad[0] + pad[1], w + pad[2] + pad[3]
        if span_h > h_pad or span_w > w_pad:  # too big a kernel for this input: pad it to fit
            extra_h, extra_w = max(0, span_h - h_pad), max(0, span_w - w_pad)
            pad = (pad[0] + extra_h, pad[1], pad[2] + extra_w, pad[3])
            h_pad, w_pad = h_pad + extra_h, w_pad + extra_w
        oh, ow = (h_pad - span_h) // stride[0] + 1, (w_pad - span_w) // stride[1] + 1
        wt = torch.empty(k, c, kh, kw, dtype=dtype)
        if rng.random() < 0.6:
            wt = wt.contiguous(memory_format=CL)
        args.update(padding=pad, dilation=dil)
    args["stride"] = stride
    out = _view(rng, n, k, oh, ow, dtype, rng.choice(["cl", "cl", "slice", "odd_slice", "nchw"]))
    if rng.random() < 0.4:
        args["residual"] = _view(rng, n, k, oh, ow, dtype, rng.choice(["cl", "slice", "nchw"]))
    if rng.random() < 0.6:
        args["bias"] = torch.empty(k + 8, dtype=dtype)[rng.choice([0, 1, 8]):][:k]  # aligned or not
    return op, x, wt, out, args


@pytest.mark.parametrize("cc,sm80,sm90_tf32", MODES)
def test_random_problems_the_plan_takes_cutlass_accepts(cc, sm80, sm90_tf32):
    rng = random.Random(1234 + cc + sm80)
    taken = 0
    for i in range(400):
        op, x, w, out, args = _random_problem(rng)
        got = cutlass_check(op, x, w, out, cc=cc, sm80=sm80, sm90_tf32=sm90_tf32, **args)
        what = (f"#{i} {op} x{tuple(x.shape)}/{x.stride()} w{tuple(w.shape)}/{w.stride()} "
                f"out{tuple(out.shape)}/{out.stride()} {x.dtype} " +
                " ".join(f"{k}={v if not torch.is_tensor(v) else tuple(v.stride())}" for k, v in args.items()))
        assert_taken_or_direct(got, what)
        taken += accepted(got)
    assert taken >= 60, f"only {taken} of 400 random problems reached a CUTLASS kernel: the generator drifted"
