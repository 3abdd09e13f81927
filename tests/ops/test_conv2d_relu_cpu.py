"""conv2d_relu on the `cpu` (fastconv's C++ kernel) and `reference` backends.

Every numeric check compares against an fp64 reference (fastconv.ops.reference.conv2d_relu on
float64 copies of the very inputs the backend saw) by relative error; outputs written through
out= land in NaN-poisoned buffers so any unwritten element, or any element written outside the
slice, fails the test.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops import reference
from tests.utils import REL_TOL, assert_close_rel, to_layout

needs_cpu_ext = pytest.mark.skipif(
    "cpu" not in fastconv.available_backends(), reason="the C++ extension (cpu backend) is not built"
)
BACKENDS = [pytest.param("cpu", marks=needs_cpu_ext), "reference"]
N_CASES = 120


# ---------------------------------------------------------------------------------------------
# helpers

def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def pad4(padding, kernel, stride, dilation):
    """[top, bottom, left, right] as F.conv2d pads (checked against F.conv2d in test_pad4_matches_torch)."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        th, tw = (d * (k - 1) for d, k in zip(dilation, kernel))
        return [th // 2, th - th // 2, tw // 2, tw - tw // 2]
    ph, pw = _pair(padding)
    return [ph, ph, pw, pw]


def out_hw(h, w, kernel, stride, dilation, p4):
    oh = (h + p4[0] + p4[1] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + p4[2] + p4[3] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    return oh, ow


def fp64_reference(x, w, b, r, stride, p4, dilation, groups, relu):
    """The oracle: the reference op in float64 on exact copies of the inputs (3-D x batched here)."""
    unbatched = x.dim() == 3
    x64 = x.double().unsqueeze(0) if unbatched else x.double()
    r64 = None if r is None else (r.double().unsqueeze(0) if unbatched else r.double())
    y = reference.conv2d_relu(x64, w.double(), None if b is None else b.double(), r64, stride, p4, dilation,
                              groups, relu)
    return y.squeeze(0) if unbatched else y


def slice_buffer(shape, c0, extra, layout, dtype):
    """A NaN-filled NCHW or NHWC buffer with `extra` more channels than `shape`, and the view of
    channels [c0, c0 + shape[ch]) in it (batched or unbatched shapes)."""
    ch = len(shape) - 3
    big = list(shape)
    big[ch] += extra
    if len(shape) == 4 and layout == "nhwc":
        buf = torch.full(big, float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
    elif len(shape) == 3 and layout == "nhwc":
        buf = torch.full([big[1], big[2], big[0]], float("nan"), dtype=dtype).permute(2, 0, 1)
    else:
        buf = torch.full(big, float("nan"), dtype=dtype)
    view = buf.narrow(ch, c0, shape[ch])
    return buf, view


def assert_only_slice_written(buf, view, c0, ch_dim, what):
    mask = torch.ones(buf.shape, dtype=torch.bool)
    mask.narrow(ch_dim, c0, view.shape[ch_dim]).fill_(False)
    assert torch.isnan(buf[mask]).all(), f"{what}: elements outside the out= slice were written"


# ---------------------------------------------------------------------------------------------
# random configurations

KERNELS = [  # (kh, kw, stride forced by the layer type or None)
    (1, 1, None), (1, 1, None), (3, 3, None), (3, 3, None), (3, 3, None), (5, 5, None), (7, 7, 2),
    (11, 11, 4), (3, 1, None), (1, 3, None), (2, 2, None), (4, 2, None),
]


def make_case(i: int) -> dict:
    rng = random.Random(1234 + i)
    kh, kw, forced = rng.choice(KERNELS)
    if rng.random() < 0.2:  # depthwise
        c = rng.choice([2, 3, 4, 6])
        groups, cg, co = c, 1, c * rng.choice([1, 2])
    else:
        groups = rng.choice([1, 1, 1, 2, 3])
        cg = rng.choice([1, 2, 3, 5, 8])
        c, co = cg * groups, groups * rng.choice([1, 2, 3, 5])
    dilation = [1, 1] if max(kh, kw) >= 7 else _pair(rng.choice([1, 1, 1, 2, (1, 2), (2, 3)]))
    stride = [forced, forced] if forced else _pair(rng.choice([1, 1, 1, 2, (1, 2), (2, 1), 3]))
    even = kh % 2 == 0 or kw % 2 == 0
    if even and rng.random() < 0.6:  # 'same' with an even kernel pads asymmetrically
        stride, dilation = [1, 1], [1, rng.choice([1, 3])]
    if stride == [1, 1] and (even or rng.random() < 0.3):
        padding = "same"
    elif rng.random() < 0.15:
        padding = "valid"
    elif rng.random() < 0.5:
        padding = rng.randint(0, max(kh, kw) // 2 + 1)
    else:
        padding = (rng.randint(0, kh // 2 + 1), rng.randint(0, kw // 2 + 1))
    p4 = pad4(padding, (kh, kw), stride, dilation)
    span = [dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1]
    h = max(1, span[0] - p4[0] - p4[1]) + rng.randint(0, 9)
    w = max(1, span[1] - p4[2] - p4[3]) + rng.randint(0, 9)
    n = 0 if i % 29 == 7 else rng.choice([1, 2, 3])
    dtype = {1: torch.float64, 2: torch.float16, 3: torch.bfloat16}.get(i % 10, torch.float32)
    return dict(
        i=i, n=n, c=c, h=h, w=w, co=co, kernel=(kh, kw), stride=stride, padding=padding, p4=p4,
        dilation=dilation, groups=groups, dtype=dtype,
        unbatched=(i % 11 == 4 and n > 0),
        x_layout=rng.choice(["nchw", "nhwc", "strided"]),
        w_layout=rng.choice(["nchw", "nhwc", "strided"]),
        bias=rng.random() < 0.75,
        residual=rng.choice([None, None, "nchw", "nhwc", "strided"]),
        relu=rng.random() < 0.8,
        out=rng.choice([None, None, "nchw", "nhwc"]),
        # the C++ kernel's schedules: many 16-pixel tiles (crossing rows and images), one whole
        # GEMM per group, and the default choice
        cpu_env=[{"FASTCONV_CPU_TILE_BYTES": "1", "FASTCONV_CPU_SCHEDULE": "tiles"},
                 {"FASTCONV_CPU_SCHEDULE": "whole"}, {}][i % 3],
    )


def build_inputs(case):
    g = torch.Generator().manual_seed(case["i"])
    dt = case["dtype"]
    x = torch.randn(case["n"], case["c"], case["h"], case["w"], generator=g).to(dt)
    x = to_layout(x, case["x_layout"])
    w = torch.randn(case["co"], case["c"] // case["groups"], *case["kernel"], generator=g).to(dt)
    w = to_layout(w, case["w_layout"])
    b = torch.randn(case["co"], generator=g).to(dt) if case["bias"] else None
    oh, ow = out_hw(case["h"], case["w"], case["kernel"], case["stride"], case["dilation"], case["p4"])
    r = None
    if case["residual"]:
        r = to_layout(torch.randn(case["n"], case["co"], oh, ow, generator=g).to(dt), case["residual"])
    if case["unbatched"]:
        x, r = x[0], (None if r is None else r[0])  # 3-D views keep the 4-D tensor's strides
    return x, w, b, r, (oh, ow)


def run_case(backend, case, monkeypatch):
    for key, value in case["cpu_env"].items():
        monkeypatch.setenv(key, value)
    x, w, b, r, (oh, ow) = build_inputs(case)
    dt = case["dtype"]
    ref = fp64_reference(x, w, b, r, case["stride"], case["p4"], case["dilation"], case["groups"], case["relu"])
    what = f"{backend} case {case}"
    kwargs = dict(bias=b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                  groups=case["groups"], relu=case["relu"], residual=r)
    with fastconv.use_backend(backend):
        if case["out"] is None:
            y = fastconv.conv2d_relu(x, w, **kwargs)
            assert y.dtype == dt
            if case["x_layout"] == "nhwc" and not case["unbatched"] and case["c"] > 1:
                assert y.is_contiguous(memory_format=torch.channels_last), f"{what}: layout not kept"
        else:
            c0, extra = 2, 5
            buf, view = slice_buffer(tuple(ref.shape), c0, extra, case["out"], dt)
            y = fastconv.conv2d_relu(x, w, out=view, **kwargs)
            assert y is view
            assert_only_slice_written(buf, view, c0, ref.dim() - 3, what)
    assert_close_rel(y, ref, dt, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(N_CASES))
def test_random_configs(backend, i, monkeypatch):
    run_case(backend, make_case(i), monkeypatch)


@pytest.mark.gpu
@pytest.mark.parametrize("i", range(0, N_CASES, 3))
def test_cuda_direct_kernel(i):
    """The `cuda` backend's direct-conv baseline on the same configurations (skipped without a GPU)."""
    if "cuda" not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()["cuda"])
    case = make_case(i)
    x, w, b, r, _ = build_inputs(case)
    ref = fp64_reference(x, w, b, r, case["stride"], case["p4"], case["dilation"], case["groups"], case["relu"])
    dev = lambda t: None if t is None else t.cuda()  # noqa: E731  (dense tensors keep their strides)
    kwargs = dict(bias=dev(b), stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                  groups=case["groups"], relu=case["relu"], residual=dev(r))
    with fastconv.use_backend("cuda"):
        if case["out"] is None:
            y = fastconv.conv2d_relu(dev(x), dev(w), **kwargs)
        else:
            buf = slice_buffer(tuple(ref.shape), 2, 5, case["out"], case["dtype"])[0].cuda()  # strides kept
            view = buf.narrow(ref.dim() - 3, 2, ref.shape[ref.dim() - 3])
            y = fastconv.conv2d_relu(dev(x), dev(w), out=view, **kwargs)
            torch.cuda.synchronize()
            assert_only_slice_written(buf.cpu(), view.cpu(), 2, ref.dim() - 3, f"cuda case {case}")
    assert_close_rel(y.cpu(), ref, case["dtype"], f"cuda case {case}")


def test_random_configs_cover_the_brief():
    """The seeded configurations really include every feature the tests claim to cover."""
    cases = [make_case(i) for i in range(N_CASES)]
    have = lambda pred: any(pred(c) for c in cases)  # noqa: E731
    assert have(lambda c: c["kernel"] == (1, 1))
    assert have(lambda c: c["kernel"] == (3, 3))
    assert have(lambda c: c["kernel"] == (5, 5))
    assert have(lambda c: c["kernel"] == (7, 7) and c["stride"] == [2, 2])
    assert have(lambda c: c["kernel"] == (11, 11) and c["stride"] == [4, 4])
    assert have(lambda c: c["kernel"] == (3, 1))
    assert have(lambda c: c["groups"] > 1 and c["c"] // c["groups"] > 1)
    assert have(lambda c: c["groups"] == c["c"] > 1)  # depthwise
    assert have(lambda c: c["dilation"] != [1, 1])
    assert have(lambda c: c["stride"][0] != c["stride"][1])
    assert have(lambda c: c["p4"][0] != c["p4"][1])  # asymmetric ("same" with an even kernel)
    assert have(lambda c: c["padding"] == "same") and have(lambda c: c["padding"] == "valid")
    for layout in ("nchw", "nhwc", "strided"):
        assert have(lambda c: c["x_layout"] == layout)
        assert have(lambda c: c["residual"] == layout)
    assert have(lambda c: not c["relu"]) and have(lambda c: not c["bias"])
    assert have(lambda c: c["out"] == "nchw") and have(lambda c: c["out"] == "nhwc")
    assert have(lambda c: c["n"] == 0) and have(lambda c: c["unbatched"])
    for dt in (torch.float16, torch.bfloat16, torch.float64, torch.float32):
        assert have(lambda c: c["dtype"] == dt)


def test_pad4_matches_torch():
    """The test's own 'same' padding (odd element on the far side) is what F.conv2d does."""
    g = torch.Generator().manual_seed(0)
    for kernel, dilation in [((2, 2), [1, 1]), ((4, 2), [1, 1]), ((3, 2), [2, 3]), ((2, 4), [3, 1])]:
        x = torch.randn(1, 2, 9, 8, generator=g, dtype=torch.float64)
        w = torch.randn(3, 2, *kernel, generator=g, dtype=torch.float64)
        want = F.conv2d(x, w, None, 1, "same", dilation)
        got = reference.conv2d_relu(x, w, None, None, [1, 1], pad4("same", kernel, [1, 1], dilation), dilation, 1,
                                    False)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# targeted cases on the C++ kernel's special paths

@needs_cpu_ext
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhwc_slice"])
@pytest.mark.parametrize("schedule", ["tiles", "small_tiles", "whole"])
def test_pointwise_fast_paths(layout, schedule, monkeypatch):
    """1x1 stride-1 convs multiply x in place (no packing): NHWC across the batch, NCHW per image."""
    monkeypatch.setenv("FASTCONV_CPU_SCHEDULE", "whole" if schedule == "whole" else "tiles")
    if schedule == "small_tiles":
        monkeypatch.setenv("FASTCONV_CPU_TILE_BYTES", "1")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 24, 7, 5, generator=g)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "nhwc_slice":  # a channel slice of an NHWC buffer: pixel stride 40, not 24
        big = torch.randn(3, 40, 7, 5, generator=g).contiguous(memory_format=torch.channels_last)
        big[:, 8:32].copy_(x)
        x = big[:, 8:32]
    w = torch.randn(16, 12, 1, 1, generator=g)
    b = torch.randn(16, generator=g)
    r = torch.randn(3, 16, 7, 5, generator=g)
    with fastconv.use_backend("cpu"):
        y = fastconv.conv2d_relu(x, w, b, groups=2, residual=r)
    assert_close_rel(y, fp64_reference(x, w, b, r, [1, 1], [0] * 4, [1, 1], 2, True), torch.float32, layout)


@needs_cpu_ext
@pytest.mark.parametrize("schedule", ["tiles", "whole", ""])
def test_resnet_like_shapes(schedule, monkeypatch):
    """A large K (the 512-channel layer's geometry, scaled): tiles spanning image boundaries, the
    whole-GEMM schedule, and whichever the kernel picks by itself."""
    monkeypatch.setenv("FASTCONV_CPU_TILE_BYTES", str(64 * 1024))
    monkeypatch.setenv("FASTCONV_CPU_SCHEDULE", schedule)
    g = torch.Generator().manual_seed(6)
    for cl in (False, True):
        x = torch.randn(3, 64, 7, 7, generator=g)
        w = torch.randn(48, 64, 3, 3, generator=g)
        if cl:
            x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
        b = torch.randn(48, generator=g)
        with fastconv.use_backend("cpu"):
            y = fastconv.conv2d_relu(x, w, b, padding=1)
        assert_close_rel(y, fp64_reference(x, w, b, None, [1, 1], [1] * 4, [1, 1], 1, True), torch.float32, str(cl))


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_propagates_nan(backend):
    """A NaN input stays NaN through the epilogue (as torch.relu), it is not clamped to 0."""
    x = torch.ones(1, 1, 3, 3)
    x[0, 0, 1, 1] = float("nan")
    w = torch.ones(1, 1, 1, 1)
    with fastconv.use_backend(backend):
        y = fastconv.conv2d_relu(x, w)
    assert torch.isnan(y[0, 0, 1, 1]) and (y.isnan().sum() == 1)


# ---------------------------------------------------------------------------------------------
# argument errors: clear, naming the argument, on every backend

def _good():
    return dict(x=torch.randn(2, 4, 8, 8), w=torch.randn(6, 4, 3, 3), b=torch.randn(6))


def _call(x, w, b=None, **kw):
    return fastconv.conv2d_relu(x, w, b, **kw)


ERROR_CASES = {
    "x_int": (lambda t: _call(t["x"].long(), t["w"]), TypeError, r"\bx\b.*floating"),
    "weight_dtype_mismatch": (lambda t: _call(t["x"], t["w"].double()), TypeError, r"weight.*dtype"),
    "x_rank": (lambda t: _call(t["x"][0, 0], t["w"]), ValueError, r"\bx\b must be 3-D or 4-D"),
    "weight_rank": (lambda t: _call(t["x"], t["w"][0]), ValueError, r"weight must be 4-D"),
    "groups_divisibility": (lambda t: _call(torch.randn(2, 6, 8, 8), torch.randn(8, 2, 3, 3), groups=4),
                            ValueError, r"groups"),
    "weight_channels": (lambda t: _call(t["x"], torch.randn(6, 3, 3, 3)), ValueError, r"weight.*input channels"),
    "stride_zero": (lambda t: _call(t["x"], t["w"], stride=0), ValueError, r"stride"),
    "padding_negative": (lambda t: _call(t["x"], t["w"], padding=-1), ValueError, r"padding"),
    "padding_bad_string": (lambda t: _call(t["x"], t["w"], padding="full"), ValueError, r"padding"),
    "dilation_zero": (lambda t: _call(t["x"], t["w"], dilation=(1, 0)), ValueError, r"dilation"),
    "kernel_too_big": (lambda t: _call(t["x"], torch.randn(6, 4, 11, 3)), ValueError, r"kernel size"),
    # padding would make a non-empty output of bias alone; torch refuses it too
    "x_zero_height": (lambda t: _call(t["x"][:, :, :0], t["w"], t["b"], padding=1), ValueError, r"spatial"),
    "bias_shape": (lambda t: _call(t["x"], t["w"], torch.randn(5)), ValueError, r"bias must have shape"),
    "bias_dtype": (lambda t: _call(t["x"], t["w"], t["b"].half()), TypeError, r"bias has dtype"),
    "residual_shape": (lambda t: _call(t["x"], t["w"], residual=torch.randn(2, 6, 8, 8)), ValueError,
                       r"residual must have shape"),
    "residual_dtype": (lambda t: _call(t["x"], t["w"], residual=torch.randn(2, 6, 6, 6, dtype=torch.float64)),
                       TypeError, r"residual has dtype"),
    "out_shape": (lambda t: _call(t["x"], t["w"], out=torch.empty(2, 6, 8, 8)), ValueError, r"out must have shape"),
    "out_dtype": (lambda t: _call(t["x"], t["w"], out=torch.empty(2, 6, 6, 6, dtype=torch.float64)), TypeError,
                  r"out has dtype"),
    "out_is_x": (lambda t: _call(t["x"], torch.randn(4, 4, 1, 1), out=t["x"]), RuntimeError, r"overlaps.*\bx\b"),
    "out_is_residual": (lambda t: _call(t["x"], t["w"], residual=(r := torch.randn(2, 6, 6, 6)), out=r),
                        RuntimeError, r"overlaps.*residual"),
    "out_reads_own_channels": (  # writing buf[:, 2:6] while reading buf[:, :4]: they intersect
        lambda t: (lambda buf: _call(buf[:, :4], torch.randn(4, 4, 1, 1), out=buf[:, 2:6]))(torch.randn(2, 8, 5, 5)),
        RuntimeError, r"overlaps"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_bad_arguments_raise(backend, name):
    fn, exc, pattern = ERROR_CASES[name]
    with fastconv.use_backend(backend), pytest.raises(exc, match=pattern):
        fn(_good())


@pytest.mark.parametrize("backend", BACKENDS)
def test_densenet_slice_pattern_allowed(backend):
    """out= buf[:, c:] while reading buf[:, :c] shares storage but no elements: allowed, exact."""
    buf = torch.full((2, 10, 5, 5), float("nan"))
    buf[:, :4].normal_()
    w, b = torch.randn(6, 4, 3, 3), torch.randn(6)
    with fastconv.use_backend(backend):
        fastconv.conv2d_relu(buf[:, :4], w, b, padding=1, out=buf[:, 4:])
    ref = fp64_reference(buf[:, :4], w, b, None, [1, 1], [1] * 4, [1, 1], 1, True)
    assert_close_rel(buf[:, 4:], ref, torch.float32, "densenet slice")


# ---------------------------------------------------------------------------------------------
# the private op called directly: TORCH_CHECKs, never a crash

@needs_cpu_ext
@pytest.mark.parametrize(
    "name, mutate",
    [
        ("out_shape", lambda a: a.__setitem__("out", torch.empty(2, 6, 5, 6))),
        ("out_rank", lambda a: a.__setitem__("out", torch.empty(2, 6, 36))),
        ("out_dtype", lambda a: a.__setitem__("out", torch.empty(2, 6, 6, 6, dtype=torch.float64))),
        ("weight_dtype", lambda a: a.__setitem__("weight", a["weight"].double())),
        ("bias_shape", lambda a: a.__setitem__("bias", torch.randn(7))),
        ("residual_shape", lambda a: a.__setitem__("residual", torch.randn(2, 6, 6, 5))),
        ("padding_len", lambda a: a.__setitem__("padding", [0, 0])),
        ("stride_zero", lambda a: a.__setitem__("stride", [0, 1])),
        ("dilation_zero", lambda a: a.__setitem__("dilation", [1, 0])),
        ("padding_negative", lambda a: a.__setitem__("padding", [0, -1, 0, 0])),
        ("groups", lambda a: a.__setitem__("groups", 3)),
        ("groups_zero", lambda a: a.__setitem__("groups", 0)),
        ("kernel_too_big", lambda a: a.__setitem__("weight", torch.randn(6, 4, 9, 3))),
        ("x_zero_width", lambda a: (a.__setitem__("x", torch.randn(2, 4, 8, 0)), a.__setitem__("padding", [1, 1, 2, 2]),
                                    a.__setitem__("out", torch.empty(2, 6, 8, 2)))),
        ("x_int", lambda a: (a.__setitem__("x", a["x"].long()), a.__setitem__("weight", a["weight"].long()),
                             a.__setitem__("out", a["out"].long()), a.__setitem__("bias", None))),
        ("out_is_x", lambda a: (a.__setitem__("weight", torch.randn(4, 4, 1, 1)), a.__setitem__("bias", None),
                                a.__setitem__("padding", [0, 0, 0, 0]), a.__setitem__("out", a["x"]))),
    ],
)
def test_private_op_checks(name, mutate):
    args = dict(x=torch.randn(2, 4, 8, 8), weight=torch.randn(6, 4, 3, 3), bias=torch.randn(6), residual=None,
                stride=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1], groups=1, relu=True,
                out=torch.empty(2, 6, 6, 6))
    mutate(args)
    with pytest.raises(RuntimeError):
        torch.ops.fastconv._conv2d_relu_cpu(*args.values())


@needs_cpu_ext
def test_private_op_valid_call():
    """The same direct call with good arguments works (so the failures above are the checks)."""
    x, w, b = torch.randn(2, 4, 8, 8), torch.randn(6, 4, 3, 3), torch.randn(6)
    out = torch.full((2, 6, 7, 7), float("nan"))
    torch.ops.fastconv._conv2d_relu_cpu(x, w, b, None, [1, 1], [1, 0, 1, 0], [1, 1], 1, False, out)
    assert_close_rel(out, fp64_reference(x, w, b, None, [1, 1], [1, 0, 1, 0], [1, 1], 1, False), torch.float32)


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck and torch.compile

def _opcheck_samples():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 4, 7, 6, generator=g)
    w = torch.randn(6, 2, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    r = torch.randn(2, 6, 7, 6, generator=g)
    xc = x.contiguous(memory_format=torch.channels_last)
    return [
        (x, w, b, None, [1, 1], [1, 1, 1, 1], [1, 1], 2, True),
        (xc, w, None, r, [1, 1], [1, 1, 1, 1], [1, 1], 2, False),
        (x, torch.randn(6, 4, 1, 1, generator=g), b, None, [2, 1], [0, 0, 0, 0], [1, 1], 1, True),
    ]


@needs_cpu_ext
@pytest.mark.parametrize("k", range(3))
def test_opcheck(k):
    args = _opcheck_samples()[k]
    with fastconv.use_backend("cpu"):
        torch.library.opcheck(torch.ops.fastconv.conv2d_relu.default, args)
        x, w = args[0], args[1]
        shape = torch.ops.fastconv.conv2d_relu(*args).shape
        out = torch.empty(shape, dtype=x.dtype)
        torch.library.opcheck(torch.ops.fastconv.conv2d_relu_out.default, (*args, out))


@needs_cpu_ext
def test_compile_aot_eager_functional_and_out_slice():
    g = torch.Generator().manual_seed(10)
    x, w, b = torch.randn(2, 3, 9, 9, generator=g), torch.randn(5, 3, 3, 3, generator=g), torch.randn(5, generator=g)
    r = torch.randn(2, 5, 9, 9, generator=g)

    def f(x, w, b, r, buf):
        y = fastconv.conv2d_relu(x, w, b, padding=1, residual=r)
        fastconv.conv2d_relu(x, w, b, padding="same", relu=False, out=buf[:, 2:7])
        return y * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    buf = torch.full((2, 9, 9, 9), float("nan"))
    with fastconv.use_backend("cpu"):
        y = compiled(x, w, b, r, buf)
    assert_close_rel(y, 2 * fp64_reference(x, w, b, r, [1, 1], [1] * 4, [1, 1], 1, True), torch.float32, "y")
    assert_close_rel(buf[:, 2:7], fp64_reference(x, w, b, None, [1, 1], [1] * 4, [1, 1], 1, False), torch.float32,
                     "slice")
    assert_only_slice_written(buf, buf[:, 2:7], 2, 1, "compiled out= slice")


@needs_cpu_ext
def test_compile_inductor():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g)

    def f(x, w, b):  # one pointwise op after the custom op: one generated C++ kernel keeps it quick
        return fastconv.conv2d_relu(x, w, b, stride=2, padding=1) - 1

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    with fastconv.use_backend("cpu"):
        y = compiled(x, w, b)
    ref = fp64_reference(x, w, b, None, [2, 2], [1] * 4, [1, 1], 1, True) - 1
    assert_close_rel(y, ref, torch.float32, "inductor")
