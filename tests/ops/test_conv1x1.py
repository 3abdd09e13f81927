"""fastconv.conv1x1 and its grouped form conv1x1_multi: every backend against an fp64 reference.

Random configurations (seeded) cover layouts (NCHW, channels_last, strided views, x as a channel
prefix of a bigger buffer), strides, the pre-activation prologue, bias/residual/ReLU, out= into
channel slices of NaN-poisoned NCHW/NHWC buffers, zero batch and every dtype.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops import conv1x1_multi, reference
from tests.utils import REL_TOL, REL_TOL_TF32, assert_close_rel, to_layout

LAYOUTS = ("nchw", "nhwc", "strided", "prefix_nchw", "prefix_nhwc")
PROLOGUES = ("none", "scale", "shift", "both", "both_relu", "relu")


def make_x(shape, dtype, layout, gen_extra=3):
    """x in ``layout``; "prefix_*" is x = buf[:, :C] of a buffer with more channels (DenseNet's read)."""
    t = torch.randn(shape, dtype=torch.float64).to(dtype)
    if layout.startswith("prefix_"):
        n, c, h, w = shape
        mf = torch.channels_last if layout.endswith("nhwc") else torch.contiguous_format
        buf = torch.randn(n, c + gen_extra, h, w, dtype=torch.float64).to(dtype).contiguous(memory_format=mf)
        buf[:, :c] = t
        return buf[:, :c]
    return to_layout(t, layout)


def poisoned_slice(shape, dtype, layout, before=2, after=3):
    """(buffer, view): a NaN-filled buffer with extra channels and its [:, before:before+C] slice."""
    n, c, h, w = shape
    mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    buf = torch.full((n, before + c + after, h, w), float("nan"), dtype=dtype).contiguous(memory_format=mf)
    return buf, buf[:, before:before + c]


def prologue_args(kind, c, dtype):
    scale = torch.rand(c, dtype=torch.float64).add(0.5).to(dtype) if kind in ("scale", "both", "both_relu") else None
    shift = torch.randn(c, dtype=torch.float64).to(dtype) if kind in ("shift", "both", "both_relu") else None
    return scale, shift, kind in ("both_relu", "relu")


def ref64(x, w, bias, residual, scale, shift, in_relu, stride, relu):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return reference.conv1x1(d(x), d(w), d(bias), d(residual), d(scale), d(shift), in_relu, list(stride), relu)


def random_case(seed, dtype=None):
    """A random 1x1 call; ``dtype`` replaces the drawn dtype (every other draw stays the same)."""
    rng = random.Random(seed)
    drawn = rng.choices([torch.float32, torch.float16, torch.bfloat16, torch.float64], [6, 1, 1, 1])[0]
    dtype = drawn if dtype is None else dtype
    n = 0 if rng.random() < 0.04 else rng.randint(1, 3)
    ci, co = rng.randint(1, 48), rng.randint(1, 48)
    h, w = rng.randint(1, 11), rng.randint(1, 11)
    stride = rng.choice([1, 2, (1, 2), (2, 1), 3])
    s = (stride, stride) if isinstance(stride, int) else stride
    oh, ow = (h - 1) // s[0] + 1, (w - 1) // s[1] + 1
    torch.manual_seed(seed)
    layout = rng.choice(LAYOUTS)
    x = make_x((n, ci, h, w), dtype, layout)
    weight = torch.randn(co, ci, 1, 1, dtype=torch.float64).div(ci ** 0.5).to(dtype)
    if rng.random() < 0.3:
        weight = weight.reshape(co, ci)
    bias = torch.randn(co, dtype=torch.float64).to(dtype) if rng.random() < 0.7 else None
    residual = to_layout(torch.randn(n, co, oh, ow, dtype=torch.float64).to(dtype), rng.choice(("nchw", "nhwc", "strided"))) \
        if rng.random() < 0.35 else None
    scale, shift, in_relu = prologue_args(rng.choice(PROLOGUES), ci, dtype)
    relu = rng.random() < 0.7
    out_layout = rng.choice([None, "nchw", "nhwc"])
    return dict(x=x, weight=weight, bias=bias, residual=residual, scale=scale, shift=shift, in_relu=in_relu,
                stride=stride, s=s, relu=relu, out_layout=out_layout, dtype=dtype, layout=layout)


def check_case(case, backend, tol=None):
    x, dtype = case["x"], case["dtype"]
    kw = dict(relu=case["relu"], residual=case["residual"], in_scale=case["scale"], in_shift=case["shift"],
              in_relu=case["in_relu"])
    expected = ref64(x, case["weight"], case["bias"], case["residual"], case["scale"], case["shift"],
                     case["in_relu"], case["s"], case["relu"])
    what = f"{backend} {dtype} x{tuple(x.shape)} {case['layout']} stride={case['stride']} out={case['out_layout']}"
    with fastconv.use_backend(backend):
        if case["out_layout"] is None:
            y = fastconv.conv1x1(x, case["weight"], case["bias"], case["stride"], **kw)
            assert y.dtype == dtype
            if case["layout"] in ("nhwc", "prefix_nhwc") and x.shape[1] > 1 and y.shape[1] > 1 and y.numel():
                assert y.is_contiguous(memory_format=torch.channels_last), f"{what}: output not in x's layout"
        else:
            buf, view = poisoned_slice(expected.shape, dtype, case["out_layout"])
            y = fastconv.conv1x1(x, case["weight"], case["bias"], case["stride"], out=view, **kw)
            assert y is view
            assert torch.isnan(buf[:, :2]).all() and torch.isnan(buf[:, 2 + expected.shape[1]:]).all(), \
                f"{what}: wrote outside the out slice"
    assert_close_rel(y, expected, dtype, what, tol=tol)


@pytest.mark.parametrize("seed", range(120))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_random_configurations(backend, seed):
    if backend == "cpu" and "cpu" not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()["cpu"])
    check_case(random_case(seed), backend)


@pytest.mark.parametrize("seed", range(0, 120, 7))
def test_cpu_aten_gemm_fallback(seed, monkeypatch):
    """The ATen mm_out path the C++ kernel takes where torch exports no BLAS symbols."""
    monkeypatch.setenv("FASTCONV_CPU_GEMM", "aten")
    check_case(random_case(seed), "cpu")


def test_cpu_bottleneck_shapes():
    """Shapes large enough for several pixel tiles per image, tile edges not aligned to rows."""
    torch.manual_seed(0)
    for layout, stride, c_in, c_out, hw in [("nchw", 1, 96, 40, 23), ("nhwc", 1, 64, 130, 29),
                                             ("nchw", 2, 72, 48, 31), ("nhwc", 2, 40, 72, 30),
                                             ("prefix_nhwc", 1, 48, 16, 27)]:
        x = make_x((2, c_in, hw, hw), torch.float32, layout)
        w = torch.randn(c_out, c_in, 1, 1) / c_in ** 0.5
        b, r = torch.randn(c_out), None
        scale, shift, in_relu = prologue_args("both_relu", c_in, torch.float32)
        with fastconv.use_backend("cpu"):
            y = fastconv.conv1x1(x, w, b, stride, in_scale=scale, in_shift=shift, in_relu=in_relu)
            y2 = fastconv.conv1x1(x, w, b, stride, residual=r)
        assert_close_rel(y, ref64(x, w, b, r, scale, shift, in_relu, (stride, stride), True), torch.float32, layout)
        assert_close_rel(y2, ref64(x, w, b, r, None, None, False, (stride, stride), True), torch.float32, layout)


# ---------------------------------------------------------------------------------------------
# the grouped form

def check_multi(backend, dtype, layout, out_layout, stride=1, concatenated=False, prologue="both_relu", tol=None):
    torch.manual_seed(1)
    n, ci, h, w = 2, 24, 7, 6
    sizes = [8, 12, 5]
    x = make_x((n, ci, h, w), dtype, layout)
    ws = [torch.randn(c, ci, 1, 1, dtype=torch.float64).div(ci ** 0.5).to(dtype) for c in sizes]
    bs = [torch.randn(sizes[0], dtype=dtype), None, torch.randn(sizes[2], dtype=dtype)]
    scale, shift, in_relu = prologue_args(prologue, ci, dtype)
    s = (stride, stride)
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    # GoogLeNet: branch 1 lands in the module's output slice, the other two in fresh buffers
    buf, view = poisoned_slice((n, sizes[0], oh, ow), dtype, out_layout, before=0, after=20)
    kw = dict(relu=True, in_scale=scale, in_shift=shift, in_relu=in_relu)
    with fastconv.use_backend(backend):
        if concatenated:
            weight = torch.cat([w_.reshape(c, ci) for w_, c in zip(ws, sizes)])
            bias = torch.cat([bs[0], torch.zeros(sizes[1], dtype=dtype), bs[2]])
            outs = conv1x1_multi(x, weight, bias, stride, outs=[view, None, None], split_sizes=sizes, **kw)
        else:
            outs = conv1x1_multi(x, ws, bs, stride, outs=[view, None, None], **kw)
    assert outs[0] is view and len(outs) == 3
    assert torch.isnan(buf[:, sizes[0]:]).all(), "grouped conv wrote past its out slice"
    for j, (o, w_, b_) in enumerate(zip(outs, ws, bs)):
        assert_close_rel(o, ref64(x, w_, b_, None, scale, shift, in_relu, s, True), dtype, f"{backend} outs[{j}]", tol=tol)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout,out_layout", [("nchw", "nchw"), ("nhwc", "nhwc"), ("prefix_nhwc", "nchw"),
                                               ("strided", "nhwc")])
def test_multi(backend, dtype, layout, out_layout):
    check_multi(backend, dtype, layout, out_layout)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_multi_concatenated_strided(backend):
    check_multi(backend, torch.float32, "nchw", "nhwc", stride=2, concatenated=True, prologue="scale")


def test_multi_many_outs_cpu():
    """More outs than the Triton launcher stores per launch: the split must still be exact."""
    torch.manual_seed(2)
    x = torch.randn(1, 10, 5, 5)
    ws = [torch.randn(c, 10) for c in (3, 1, 4, 2, 5)]
    with fastconv.use_backend("cpu"):
        outs = conv1x1_multi(x, ws, None, relu=False)
    for o, w in zip(outs, ws):
        assert_close_rel(o, ref64(x, w, None, None, None, None, False, (1, 1), False), torch.float32, "multi")


# ---------------------------------------------------------------------------------------------
# Triton, interpreted on the CPU (DESIGN §6.1): a fixed subset, every config once

TRITON_CASES = [3, 5, 8, 11, 14, 17, 21, 26, 30, 33, 40, 47, 52, 58]


def _triton_case(seed, dtype):
    case = random_case(seed)
    while case["dtype"] != dtype:  # re-draw the same geometry family in the wanted dtype
        seed += 1000
        case = random_case(seed)
    return case


@pytest.mark.parametrize("seed", TRITON_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_interpreted(seed, dtype):
    if "triton" not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()["triton"])
    case = _triton_case(seed, dtype)
    # fp32 on a GPU may run as tf32; the interpreter computes in ieee fp32
    check_case(case, "triton", tol=REL_TOL_TF32 if dtype == torch.float32 and torch.cuda.is_available() else None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout,out_layout,concatenated", [("nchw", "nhwc", False), ("prefix_nhwc", "nchw", True)])
def test_triton_multi(dtype, layout, out_layout, concatenated):
    if "triton" not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()["triton"])
    check_multi("triton", dtype, layout, out_layout, concatenated=concatenated)


def test_triton_every_config(monkeypatch):
    if not fastconv._backend.triton_interpreted():
        pytest.skip("configs are selected by FASTCONV_TRITON_CONFIG only under TRITON_INTERPRET=1")
    from fastconv.ops.triton import conv1x1 as tmod

    torch.manual_seed(3)
    x = make_x((2, 40, 9, 8), torch.float32, "nhwc")
    ws = [torch.randn(c, 40) / 40 ** 0.5 for c in (20, 30, 9)]
    b = torch.randn(59)
    scale, shift, in_relu = prologue_args("both_relu", 40, torch.float32)
    for i in range(len(tmod.CONFIGS)):
        monkeypatch.setenv("FASTCONV_TRITON_CONFIG", str(i))
        with fastconv.use_backend("triton"):
            outs = conv1x1_multi(x, torch.cat(ws), b, 2, in_scale=scale, in_shift=shift, in_relu=in_relu,
                                 split_sizes=[20, 30, 9])
        ref = ref64(x, torch.cat(ws), b, None, scale, shift, in_relu, (2, 2), True)
        assert_close_rel(torch.cat(outs, 1), ref, torch.float32, f"config {i}")


def test_triton_compile_specs_cover_configs_and_dtypes():
    from fastconv.ops.triton import conv1x1 as tmod

    specs = tmod.compile_specs()
    assert len(specs) == 3 * len(tmod.CONFIGS)
    assert 6 <= len(tmod.CONFIGS) <= 8
    for spec in specs:
        assert {"kernel", "config", "dtype", "fn", "signature", "constexprs", "attrs", "options"} <= spec.keys()
        assert all(spec["constexprs"][k] >= 16 for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        assert set(spec["signature"]) == set(tmod._conv1x1_kernel.arg_names)


# ---------------------------------------------------------------------------------------------
# bad input: clear errors naming the argument

def _bad_cases():
    x = torch.randn(2, 8, 5, 5)
    w = torch.randn(4, 8, 1, 1)
    return [
        (lambda: fastconv.conv1x1(x, torch.randn(4, 8, 3, 3)), ValueError, "weight"),
        (lambda: fastconv.conv1x1(x, torch.randn(4, 7, 1, 1)), ValueError, "weight"),
        (lambda: fastconv.conv1x1(x, torch.randn(4, 8, 1)), ValueError, "weight"),
        (lambda: fastconv.conv1x1(x, w, in_scale=torch.randn(7)), ValueError, "in_scale"),
        (lambda: fastconv.conv1x1(x, w, in_shift=torch.randn(9)), ValueError, "in_shift"),
        (lambda: fastconv.conv1x1(x, w, torch.randn(5)), ValueError, "bias"),
        (lambda: fastconv.conv1x1(x, w.double()), TypeError, "weight"),
        (lambda: fastconv.conv1x1(x, w, in_scale=torch.randn(8, dtype=torch.float16)), TypeError, "in_scale"),
        (lambda: fastconv.conv1x1(x, w, residual=torch.randn(2, 4, 5, 4)), ValueError, "residual"),
        (lambda: fastconv.conv1x1(x, w, None, 0), ValueError, "stride"),
        (lambda: fastconv.conv1x1(x, w, out=torch.empty(2, 4, 5, 4)), ValueError, "out"),
        (lambda: fastconv.conv1x1(x, w, out=torch.empty(2, 4, 5, 5, dtype=torch.float64)), TypeError, "out"),
        (lambda: fastconv.conv1x1(x, torch.randn(8, 8, 1, 1), out=x), RuntimeError, "overlaps"),
        (lambda: conv1x1_multi(x, torch.randn(9, 8), outs=[torch.empty(2, 4, 5, 5), torch.empty(2, 4, 5, 5)]),
         ValueError, "outs"),
        (lambda: conv1x1_multi(x, torch.randn(9, 8), split_sizes=[4, 4]), ValueError, "split_sizes"),
        (lambda: conv1x1_multi(x, [w, torch.randn(3, 7)]), ValueError, "weight"),
        # (torch.cat promoted a bfloat16 weight to x's float32, and a mismatch was blamed on "weight")
        (lambda: conv1x1_multi(x, [w, torch.randn(3, 8, dtype=torch.bfloat16)]), TypeError, "weights[1]"),
        (lambda: conv1x1_multi(x.half(), [w.bfloat16(), w.half()]), TypeError, "weights[0]"),
        (lambda: conv1x1_multi(x, [w, w], outs=[torch.empty(2, 4, 5, 5), torch.empty(2, 4, 5, 5, dtype=torch.float64)]),
         TypeError, "outs[1]"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_cases())))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_input(backend, index):
    fn, exc, name = _bad_cases()[index]
    with fastconv.use_backend(backend), pytest.raises(exc, match=name.replace("[", r"\[").replace("]", r"\]")):
        fn()


def test_bad_input_multi_outs_overlap_each_other():
    x = torch.randn(1, 4, 3, 3)
    buf = torch.empty(1, 8, 3, 3)
    with pytest.raises(RuntimeError, match=r"outs\[0\]"):
        conv1x1_multi(x, torch.randn(8, 4), outs=[buf[:, 2:6], buf[:, 0:4]])


def test_residual_with_several_outs_is_rejected():
    x = torch.randn(1, 4, 3, 3)
    outs = [torch.empty(1, 2, 3, 3), torch.empty(1, 2, 3, 3)]
    # the public grouped op has no residual argument at all; the private kernel must refuse one
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.fastconv._conv1x1_cpu(x, torch.randn(4, 4), None, torch.randn(1, 4, 3, 3), None, None, False,
                                        [1, 1], True, outs)
    with pytest.raises(TypeError):
        conv1x1_multi(x, torch.randn(4, 4), residual=torch.randn(1, 4, 3, 3))


def test_private_cpu_op_rejects_bad_direct_calls():
    """Direct calls of the private kernel get errors, not crashes."""
    x = torch.randn(1, 4, 3, 3)
    op = torch.ops.fastconv._conv1x1_cpu
    with pytest.raises(RuntimeError, match="weight"):
        op(x, torch.randn(4, 4, 1, 1), None, None, None, None, False, [1, 1], True, [torch.empty(1, 4, 3, 3)])
    with pytest.raises(RuntimeError, match="channels"):
        op(x, torch.randn(4, 4), None, None, None, None, False, [1, 1], True, [torch.empty(1, 3, 3, 3)])
    with pytest.raises(RuntimeError, match="outs"):
        op(x, torch.randn(4, 4), None, None, None, None, False, [1, 1], True, [torch.empty(1, 4, 2, 3)])
    with pytest.raises(RuntimeError, match="in_scale"):
        op(x, torch.randn(4, 4), None, None, torch.randn(3), None, False, [1, 1], True, [torch.empty(1, 4, 3, 3)])
    with pytest.raises(RuntimeError, match="stride"):
        op(x, torch.randn(4, 4), None, None, None, None, False, [0, 1], True, [torch.empty(1, 4, 3, 3)])


# ---------------------------------------------------------------------------------------------
# torch.library integration

def _opcheck_args():
    torch.manual_seed(4)
    x = torch.randn(2, 6, 5, 4)
    w = torch.randn(5, 6, 1, 1)
    b, r = torch.randn(5), torch.randn(2, 5, 3, 2)
    sc, sh = torch.rand(6) + 0.5, torch.randn(6)
    return x, w, b, r, sc, sh


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_opcheck(backend):
    x, w, b, r, sc, sh = _opcheck_args()
    with fastconv.use_backend(backend):
        torch.library.opcheck(torch.ops.fastconv.conv1x1.default, (x, w, b, r, sc, sh, True, [2, 2], True))
        torch.library.opcheck(torch.ops.fastconv.conv1x1_out.default,
                              (x, w, b, r, sc, sh, True, [2, 2], True, torch.empty(2, 5, 3, 2)))
        outs = [torch.empty(2, 2, 5, 4), torch.empty(2, 3, 5, 4)]
        torch.library.opcheck(torch.ops.fastconv.conv1x1_multi_out.default,
                              (x, w.reshape(5, 6), b, sc, None, False, [1, 1], False, outs))


def test_compile_densenet_pattern():
    """A DenseNet layer reads buf[:, :c] and writes its g new channels into buf[:, c:c+g] in place."""
    torch.manual_seed(5)
    c, g = 12, 8
    w = torch.randn(g, c, 1, 1) / c ** 0.5
    sc, sh = torch.rand(c) + 0.5, torch.randn(c)

    def layer(buf):
        fastconv.conv1x1(buf[:, :c], w, None, in_scale=sc, in_shift=sh, in_relu=True, out=buf[:, c:c + g])
        return buf

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for mf in (torch.contiguous_format, torch.channels_last):
        buf = torch.randn(2, c + g + 4, 6, 6).contiguous(memory_format=mf)
        buf[:, c:] = float("nan")
        before = buf[:, :c].clone()
        result = compiled(buf)
        assert result.data_ptr() == buf.data_ptr()
        assert torch.equal(buf[:, :c], before), "the read channels changed"
        assert torch.isnan(buf[:, c + g:]).all(), "channels past the written slice changed"
        assert_close_rel(buf[:, c:c + g], ref64(before, w, None, None, sc, sh, True, (1, 1), True),
                         torch.float32, "compiled densenet layer")


def test_public_exports():
    assert fastconv.conv1x1 is fastconv.ops.conv1x1
    assert "conv1x1" in fastconv.__all__ and "conv1x1_multi" in fastconv.ops.__all__


def test_unbatched_input():
    x, w = torch.randn(6, 4, 4), torch.randn(3, 6)
    y = fastconv.conv1x1(x, w, relu=False)
    assert_close_rel(y, ref64(x[None], w, None, None, None, None, False, (1, 1), False)[0], torch.float32, "3-D")


# ---------------------------------------------------------------------------------------------
# GPU: Triton against cuDNN

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(4, 256, 56, 56, 64, 1), (4, 1024, 14, 14, 256, 1), (4, 256, 56, 56, 512, 2)])
def test_triton_vs_cudnn(dtype, channels_last, shape):
    n, ci, h, w, co, s = shape
    torch.manual_seed(6)
    x = torch.randn(n, ci, h, w, device="cuda", dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(co, ci, 1, 1, device="cuda", dtype=dtype) / ci ** 0.5
    b = torch.randn(co, device="cuda", dtype=dtype)
    with fastconv.use_backend("triton"):
        y = fastconv.conv1x1(x, wt, b, s)
    expected = F.relu(F.conv2d(x.double(), wt.double(), b.double(), s))
    tol = REL_TOL_TF32 if dtype == torch.float32 else REL_TOL[dtype]
    assert_close_rel(y, expected, dtype, f"triton vs cudnn {shape}", tol=tol)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.gpu
def test_triton_grouped_and_prologue_on_gpu():
    torch.manual_seed(7)
    x = torch.randn(2, 192, 28, 28, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    ws = [torch.randn(c, 192, device="cuda", dtype=torch.float16) / 14 for c in (64, 96, 16)]
    sc, sh = torch.rand(192, device="cuda", dtype=torch.float16) + 0.5, torch.randn(192, device="cuda", dtype=torch.float16)
    with fastconv.use_backend("triton"):
        outs = conv1x1_multi(x, ws, None, in_scale=sc, in_shift=sh, in_relu=True)
    for o, w in zip(outs, ws):
        assert_close_rel(o, ref64(x, w, None, None, sc, sh, True, (1, 1), True), torch.float16, "gpu grouped")


def test_multi_clear_errors_and_empty_parts():
    """conv1x1_multi writes its outputs in place: with an input requiring grad the error said
    outs[0]= even when no outs were passed; negative split sizes and 0-row weights failed in
    PyTorch's own calls (a reshape, a negative dimension)."""
    x = torch.randn(1, 6, 3, 3)
    with pytest.raises(RuntimeError, match="conv1x1_multi is not differentiable"):
        fastconv.ops.conv1x1_multi(x.clone().requires_grad_(), [torch.randn(3, 6)])
    with pytest.raises(ValueError, match="split sizes must be non-negative"):
        fastconv.ops.conv1x1_multi(x, torch.randn(9, 6), split_sizes=[-1, 10])
    w = torch.randn(2, 6)
    for ys in (fastconv.ops.conv1x1_multi(x, [torch.randn(0, 6), w]),
               fastconv.ops.conv1x1_multi(x, torch.cat([torch.randn(0, 6), w]), split_sizes=[0, 2])):
        assert ys[0].shape == (1, 0, 3, 3)
        assert_close_rel(ys[1], torch.relu(torch.nn.functional.conv2d(x.double(), w.double()[:, :, None, None])),
                         torch.float32, "the non-empty part")


def test_multi_weight_list_under_autocast_computes_in_the_outs_dtype():
    """Under autocast the op computes in the given outs' dtype: a list of float32 weights was cast
    to x's bfloat16 first (1.6e-3 off with float32 outs, as a concatenated weight is 1.5e-7)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 8, 5, 5, generator=g).bfloat16()
    ws, bs = [torch.randn(3, 8, generator=g), torch.randn(5, 8, generator=g)], [torch.randn(3, generator=g), None]
    ref = reference.conv1x1(x.double(), torch.cat(ws).double(), torch.cat([bs[0], torch.zeros(5)]).double(),
                            None, None, None, False, [1, 1], True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = conv1x1_multi(x, ws, bs, outs=[torch.empty(2, 3, 5, 5), torch.empty(2, 5, 5, 5)])
        fresh = conv1x1_multi(x, ws, bs)  # no outs given: the region's dtype
    assert_close_rel(torch.cat(outs, 1), ref, torch.float32, "float32 outs under autocast")
    assert all(o.dtype == torch.bfloat16 for o in fresh)
    assert_close_rel(torch.cat(fresh, 1), ref, torch.bfloat16, "bfloat16 under autocast")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        # a float16 out in a bfloat16 region: the weights are concatenated in float16 (autocast's
        # promote policy refused that mix inside torch.cat)
        half = conv1x1_multi(x, ws, bs, outs=[torch.empty(2, 3, 5, 5, dtype=torch.float16), None])
        assert [o.dtype for o in half] == [torch.float16, torch.float16]
        with pytest.raises(TypeError, match=r"weights\[0\] has dtype torch.float64"):  # not cast, as the rule
            conv1x1_multi(x, [ws[0].double(), ws[1]], bs)
        with pytest.raises(TypeError, match=r"outs\[0\] must be a floating"):  # named, not a weight
            conv1x1_multi(x, ws, bs, outs=[torch.empty(2, 3, 5, 5, dtype=torch.int32), None])
    assert_close_rel(torch.cat(half, 1), ref, torch.float16, "float16 outs in a bfloat16 region")
