"""fastconv.max_pool2d against F.max_pool2d: bit-exact values on every backend.

A max involves no rounding, so every backend must return exactly F.max_pool2d's values: equal
NaN positions and, elsewhere, equal bits (which also pins which of +0/-0 wins a tie). NaN
payloads are not compared: PyTorch's own bfloat16 NaN bits differ between its NCHW and
channels_last kernels.
"""
from __future__ import annotations

import os
import random
import sys

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops import _checks
from tests.utils import to_layout

mp = sys.modules["fastconv.ops.max_pool2d"]  # the module; fastconv.ops.max_pool2d is the function

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
SENTINEL = float("inf")  # poison for out buffers: inputs here are finite, so +inf is never a correct output


def assert_pool_equal(y: torch.Tensor, ref: torch.Tensor, what: str = "") -> None:
    assert y.shape == ref.shape, f"{what}: shape {tuple(y.shape)} != {tuple(ref.shape)}"
    assert y.dtype == ref.dtype, f"{what}: dtype {y.dtype} != {ref.dtype}"
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(y), nan), f"{what}: NaN positions differ"
    bits = BITS[y.dtype]
    mismatched = (y[~nan].view(bits) != ref[~nan].view(bits)).sum().item()
    assert mismatched == 0, f"{what}: bits differ at {mismatched} positions (+0/-0 counts)"


def channel_slice(x: torch.Tensor, nhwc: bool, extra: int = 3) -> torch.Tensor:
    """x's values in channels [2, 2 + C) of a buffer with ``extra`` more channels (NCHW or NHWC)."""
    n, c, h, w = x.shape
    buf = torch.randn(n, c + extra, h, w, dtype=x.dtype)
    if nhwc:
        buf = buf.contiguous(memory_format=torch.channels_last)
    view = buf[:, 2:2 + c]
    view.copy_(x)
    return view


def make_input(rng: random.Random, shape, dtype, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    if kind == "ties":  # small integers and signed zeros: many equal maxima, so scan order matters
        x = torch.randint(-2, 3, shape, generator=g).to(dtype)
        x[torch.rand(shape, generator=g) < 0.3] = -0.0
        return x
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if kind == "negative":  # all-negative: a padded zero winning would show
        x = -x.abs() - 1
    elif kind == "nan":
        x[torch.rand(shape, generator=g) < 0.05] = float("nan")
    return x


def arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout in ("nchw", "nhwc", "strided"):
        return to_layout(x, layout)
    return channel_slice(x, nhwc=layout == "nhwc_slice")


def random_case(rng: random.Random):
    """A random valid configuration (F.max_pool2d is the judge of validity)."""
    while True:
        k = [rng.randint(1, 5), rng.randint(1, 5)] if rng.random() < 0.5 else [rng.randint(1, 5)] * 2
        s = rng.choice([None, rng.randint(1, 4), (rng.randint(1, 3), rng.randint(1, 3))])
        d = rng.choice([1, 1, 2, (1, 3)])
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        ceil = rng.random() < 0.5
        c = rng.choice([1, 3, 8, 70])  # 70: more than one 64-channel chunk in the CPU's NHWC path
        shape = (rng.choice([0, 1, 2, 3]) if rng.random() < 0.1 else rng.randint(1, 3), c, rng.randint(1, 17), rng.randint(1, 17))
        try:
            F.max_pool2d(torch.zeros(shape), k, s, p, d, ceil)
        except RuntimeError:
            continue
        dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.float64])
        layout = rng.choice(["nchw", "nhwc", "strided", "nchw_slice", "nhwc_slice"])
        kind = rng.choice(["normal", "negative", "nan", "ties"])
        unbatched = shape[0] >= 1 and rng.random() < 0.1
        return dict(shape=shape, k=k, s=s, p=p, d=d, ceil=ceil, dtype=dtype, layout=layout, kind=kind,
                    unbatched=unbatched)


def run_case(case, rng, use_out: bool):
    x = arrange(make_input(rng, case["shape"], case["dtype"], case["kind"]), case["layout"])
    if case["unbatched"]:
        x = x[0]
    args = (case["k"], case["s"], case["p"], case["d"], case["ceil"])
    ref = F.max_pool2d(x, *args)
    if use_out:
        out = torch.full_like(ref, SENTINEL)
        y = fastconv.max_pool2d(x, *args, out=out)
        assert y is out
    else:
        y = fastconv.max_pool2d(x, *args)
        if x.dim() == 4:  # output in the input's layout
            assert y.is_contiguous(memory_format=_checks.output_layout(x)), f"{case}: output layout"
    assert_pool_equal(y, ref, str(case))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_random_configurations_bit_exact(backend):
    rng = random.Random(1234)
    with fastconv.use_backend(backend):
        for i in range(150):
            run_case(random_case(rng), rng, use_out=i % 3 == 0)


# (name, C, H, kernel, stride, padding, ceil_mode) of the pools in the five networks
NETWORK_POOLS = [
    ("alexnet 3x3/2", 64, 55, 3, 2, 0, False),
    ("alexnet 3x3/2 @13", 256, 13, 3, 2, 0, False),
    ("vgg 2x2/2", 64, 28, 2, 2, 0, False),
    ("googlenet 3x3/2 ceil", 64, 28, 3, 2, 0, True),
    ("googlenet 3x3/2 ceil @14", 832, 14, 3, 2, 0, True),
    ("googlenet branch 3x3/1 pad 1 ceil", 192, 14, 3, 1, 1, True),
    ("resnet stem 3x3/2 pad 1", 64, 56, 3, 2, 1, False),
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("pool", NETWORK_POOLS, ids=[p[0] for p in NETWORK_POOLS])
def test_network_pools(backend, layout, pool):
    _, c, h, k, s, p, ceil = pool
    for dtype in (torch.float32, torch.bfloat16):
        x = to_layout(torch.randn(2, c, h, h).to(dtype), layout)
        with fastconv.use_backend(backend):
            y = fastconv.max_pool2d(x, k, s, p, 1, ceil)
        assert_pool_equal(y, F.max_pool2d(x, k, s, p, 1, ceil), f"{pool} {layout} {dtype}")


# (input size, kernel, stride, padding, ceil_mode, expected output size), worked out by hand
CEIL_EDGES = [
    (6, 3, 2, 0, False, 2),
    (6, 3, 2, 0, True, 3),    # ceil adds a window starting at 4, inside the input
    (112, 3, 2, 0, True, 56),  # GoogLeNet's maxpool1 (floor would give 55)
    (5, 2, 2, 1, True, 3),    # ceil's extra window would start at 6 >= 5 + 1: dropped
    (5, 3, 3, 1, True, 2),    # extra window would start at 6 >= 5 + 1: dropped
    (7, 3, 3, 1, True, 3),    # extra window starts at 6 < 7 + 1: kept
    (1, 1, 2, 0, True, 1),
    (4, 2, 3, 0, True, 2),    # second window starts at 3, inside: holds one element
]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("edge", CEIL_EDGES)
def test_ceil_mode_output_size(backend, edge):
    size, k, s, p, ceil, expected = edge
    x = torch.randn(2, 3, size, size + 1)
    with fastconv.use_backend(backend):
        y = fastconv.max_pool2d(x, (k, k), (s, s), (p, p), 1, ceil)
    assert y.shape[2] == expected, f"{edge}: output height {y.shape[2]} != {expected}"
    assert_pool_equal(y, F.max_pool2d(x, k, s, p, 1, ceil), str(edge))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_nan_and_padding_semantics(backend, layout):
    x = torch.full((1, 2, 4, 4), -5.0)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 3, 3] = 7.0
    x = to_layout(x, layout)
    with fastconv.use_backend(backend):
        y = fastconv.max_pool2d(x, 3, 2, 1)  # 2x2 output; every window holds (1, 1) and some padding
    assert torch.isnan(y[0, 0]).all(), "a NaN in the window must make the output NaN"
    assert torch.equal(y[0, 1], torch.tensor([[-5.0, -5.0], [-5.0, 7.0]])), "padding must never win"
    assert_pool_equal(y, F.max_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_unbatched_and_zero_batch(backend):
    x3 = torch.randn(5, 9, 9)
    x0 = torch.randn(0, 5, 9, 9)
    with fastconv.use_backend(backend):
        y3 = fastconv.max_pool2d(x3, 3, 2, 1, ceil_mode=True)
        y0 = fastconv.max_pool2d(x0, 3, 2)
        out3 = torch.full((5, 5, 5), SENTINEL)
        fastconv.max_pool2d(x3, 3, 2, 1, ceil_mode=True, out=out3)
    assert_pool_equal(y3, F.max_pool2d(x3, 3, 2, 1, ceil_mode=True))
    assert_pool_equal(out3, F.max_pool2d(x3, 3, 2, 1, ceil_mode=True))
    assert y0.shape == F.max_pool2d(x0, 3, 2).shape == (0, 5, 4, 4)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw_buffer", "nhwc_buffer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_out_into_channel_slice(backend, nhwc, dtype):
    x = torch.randn(2, 6, 11, 11).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
    buf = torch.full((2, 10, 6, 6), SENTINEL, dtype=dtype)
    buf = buf.contiguous(memory_format=torch.channels_last) if nhwc else buf
    with fastconv.use_backend(backend):
        r = fastconv.max_pool2d(x, 3, 2, 1, out=buf[:, 3:9])
    assert r.data_ptr() == buf[:, 3:9].data_ptr()
    assert_pool_equal(buf[:, 3:9], F.max_pool2d(x, 3, 2, 1))
    rest = torch.cat([buf[:, :3], buf[:, 9:]], 1)
    assert (rest == SENTINEL).all(), "out= wrote outside its channel slice"


def test_output_reads_x_from_same_buffer():
    # DenseNet-style: pool channels [0, 4) of buf into channels [4, 8) of the same buffer
    buf = torch.randn(2, 8, 6, 6)
    buf[:, 4:] = SENTINEL
    src = buf[:, :4].clone()
    fastconv.max_pool2d(buf[:, :4], 3, 1, 1, out=buf[:, 4:])
    assert_pool_equal(buf[:, 4:], F.max_pool2d(src, 3, 1, 1))
    assert torch.equal(buf[:, :4], src)


# ---------------------------------------------------------------------------------------------
# argument errors: raised before any kernel, naming the argument, where PyTorch rejects too

BAD_ARGS = [
    (dict(kernel_size=0), ValueError, "kernel_size"),
    (dict(kernel_size=(2, 3, 4)), TypeError, "kernel_size"),
    (dict(kernel_size=3, stride=0), ValueError, "stride"),
    (dict(kernel_size=3, stride=(1, -1)), ValueError, "stride"),
    (dict(kernel_size=3, stride=1.5), TypeError, "stride"),
    (dict(kernel_size=3, dilation=0), ValueError, "dilation"),
    (dict(kernel_size=3, padding=-1), ValueError, "padding"),
    (dict(kernel_size=3, padding=2), ValueError, "padding"),          # > kernel / 2
    (dict(kernel_size=(3, 2), padding=(1, 2)), ValueError, "padding"),
    (dict(kernel_size=2, padding=2, dilation=3), ValueError, "padding"),  # PyTorch compares to the undilated kernel
    (dict(kernel_size=9), ValueError, "kernel_size"),                  # larger than the 8x8 input
    (dict(kernel_size=3, dilation=4), ValueError, "kernel_size"),      # dilated span 9 > 8
]


@pytest.mark.parametrize("kwargs,exc,name", BAD_ARGS, ids=[str(b[0]) for b in BAD_ARGS])
def test_bad_arguments(monkeypatch, kwargs, exc, name):
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(Exception):  # the rule is PyTorch's
        F.max_pool2d(x, **kwargs)
    calls = []
    monkeypatch.setattr(mp, "KERNELS", {b: lambda *a: calls.append(a) for b in mp.KERNELS})
    with pytest.raises(exc, match=name):
        fastconv.max_pool2d(x, **kwargs)
    assert not calls, "a kernel ran before the arguments were rejected"


@pytest.mark.parametrize(
    "x,exc,name",
    [
        (torch.randn(2, 8, 8).int(), TypeError, "x"),
        (torch.randn(8, 8), ValueError, "x"),
        (torch.randn(1, 1, 2, 8, 8), ValueError, "x"),
        (torch.randn(1, 0, 8, 8), ValueError, "x"),
        (torch.randn(1, 2, 0, 8), ValueError, "x"),
    ],
    ids=["int", "2d", "5d", "no_channels", "no_height"],
)
def test_bad_input(x, exc, name):
    with pytest.raises(exc, match=rf"\b{name}\b"):
        fastconv.max_pool2d(x, 2)


def test_bad_out():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="out must have shape"):
        fastconv.max_pool2d(x, 2, out=torch.empty(2, 3, 5, 5))
    with pytest.raises(TypeError, match="out has dtype"):
        fastconv.max_pool2d(x, 2, out=torch.empty(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="out is on"):
        fastconv.max_pool2d(x, 2, out=torch.empty(2, 3, 4, 4, device="meta"))
    # a stride-1 pool whose output is the input itself, and one writing into the channels it reads
    with pytest.raises(RuntimeError, match="overlaps"):
        fastconv.max_pool2d(x, 1, out=x)
    buf = torch.randn(2, 6, 8, 8)
    with pytest.raises(RuntimeError, match="overlaps"):
        fastconv.max_pool2d(buf[:, :4], 3, 1, 1, out=buf[:, 2:6])


def test_private_cpu_op_checks():
    """Direct calls of the private kernel with inconsistent arguments fail instead of crashing."""
    op = torch.ops.fastconv._max_pool2d_cpu
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="batch and channels"):
        op(x, [2, 2], [2, 2], [0, 0], [1, 1], torch.empty(2, 4, 4, 4))
    with pytest.raises(RuntimeError, match="dtype"):
        op(x, [2, 2], [2, 2], [0, 0], [1, 1], torch.empty(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="positive"):
        op(x, [2, 0], [2, 2], [0, 0], [1, 1], torch.empty(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="2 elements"):
        op(x, [2], [2, 2], [0, 0], [1, 1], torch.empty(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match="4-D"):
        op(x[0], [2, 2], [2, 2], [0, 0], [1, 1], torch.empty(3, 4, 4))
    with pytest.raises(RuntimeError):  # at::assert_no_overlap
        op(x, [1, 1], [1, 1], [0, 0], [1, 1], x)
    # an out of another spatial size than the pooling rules give (with or without ceil_mode) is rejected
    with pytest.raises(RuntimeError, match="not the pooled shape"):
        op(x, [2, 2], [2, 2], [0, 0], [1, 1], torch.empty(2, 3, 6, 6))
    out = torch.empty(2, 3, 4, 5)  # ceil_mode's width for a 3x3/2 pool of 8 + padding 1: accepted
    op(x, [3, 3], [2, 2], [1, 1], [1, 1], out)
    assert torch.equal(out[:, :, :, :4], F.max_pool2d(x, 3, 2, 1)[:, :, :, :4])


# ---------------------------------------------------------------------------------------------
# torch.library integration

@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_opcheck(layout):
    x = to_layout(torch.randn(2, 5, 9, 9), layout)
    args = (x, [3, 3], [2, 2], [1, 1], [1, 1], True)
    torch.library.opcheck(torch.ops.fastconv.max_pool2d.default, args)
    out = torch.empty(2, 5, 5, 5)
    torch.library.opcheck(torch.ops.fastconv.max_pool2d_out.default, args + (out,))


def test_torch_compile_out_into_buffer_slice():
    def f(x, buf):
        fastconv.max_pool2d(x, 3, 2, 1, ceil_mode=True, out=buf[:, 4:])
        return buf

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 9, 9)
    buf = torch.full((2, 8, 5, 5), SENTINEL)
    res = compiled(x, buf)
    assert res is buf or res.data_ptr() == buf.data_ptr()
    assert_pool_equal(buf[:, 4:], F.max_pool2d(x, 3, 2, 1, ceil_mode=True))
    assert (buf[:, :4] == SENTINEL).all()
    y = torch.compile(lambda t: fastconv.max_pool2d(t, 2) + 1, fullgraph=True, backend="aot_eager")(x)
    assert_pool_equal(y, F.max_pool2d(x, 2) + 1)


# ---------------------------------------------------------------------------------------------
# Triton: interpreted on the CPU (a fixed subset), compiled for sm_80/sm_90, run on a GPU

# (shape, kernel, stride, padding, dilation, ceil_mode, layout)
TRITON_CASES = [
    ((2, 5, 11, 11), 3, 2, 0, 1, False, "nchw"),
    ((2, 5, 11, 11), 3, 2, 0, 1, True, "nhwc"),
    ((1, 70, 9, 9), 3, 2, 1, 1, False, "nhwc"),
    ((2, 3, 8, 8), 2, 2, 0, 1, False, "nchw"),
    ((2, 3, 9, 9), 3, 1, 1, 1, True, "nhwc_slice"),
    ((1, 4, 10, 7), (2, 3), (1, 2), (1, 1), (2, 1), True, "strided"),
    ((3, 2, 6, 6), 5, 3, 2, 1, True, "nchw_slice"),
    ((1, 1, 5, 5), 1, 2, 0, 1, True, "nchw"),
    ((2, 6, 13, 13), 4, 3, 2, 2, False, "nhwc"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_interpreted(monkeypatch, dtype):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("interpreted Triton runs only without a CUDA device (conftest sets TRITON_INTERPRET)")
    from fastconv.ops.triton import max_pool2d as triton_pool

    rng = random.Random(7)
    for i, (shape, k, s, p, d, ceil, layout) in enumerate(TRITON_CASES):
        monkeypatch.setenv("FASTCONV_TRITON_CONFIG", str(i % len(triton_pool.CONFIGS)))  # every config runs
        kind = ["normal", "nan", "negative", "ties"][i % 4]
        x = arrange(make_input(rng, shape, dtype, kind), layout)
        ref = F.max_pool2d(x, k, s, p, d, ceil)
        out = torch.full_like(ref, SENTINEL) if i % 2 else None
        with fastconv.use_backend("triton"):
            y = fastconv.max_pool2d(x, k, s, p, d, ceil, out=out)
        assert_pool_equal(y, ref, f"case {i} {dtype} config {i % len(triton_pool.CONFIGS)}")


def test_triton_rejects_float64():
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs interpreted Triton")
    with fastconv.use_backend("triton"), pytest.raises(TypeError, match="float64"):
        fastconv.max_pool2d(torch.randn(1, 2, 4, 4, dtype=torch.float64), 2)


# The sm_80/sm_90 compile check of every config lives in tests/test_gpu_compile.py (compile_check).


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_cuda(dtype):
    rng = random.Random(11)
    with fastconv.use_backend("triton"):
        for i in range(12):  # each new shape autotunes the Triton configs: 40 took > 90 s on an H200
            case = random_case(rng)
            if case["dtype"] == torch.float64:
                continue
            case["dtype"] = dtype
            x = arrange(make_input(rng, case["shape"], dtype, case["kind"]), case["layout"]).cuda()
            args = (case["k"], case["s"], case["p"], case["d"], case["ceil"])
            assert_pool_equal(fastconv.max_pool2d(x, *args).cpu(), F.max_pool2d(x, *args).cpu(), str(case))
        for name, c, h, k, s, p, ceil in NETWORK_POOLS:
            for layout in ("nchw", "nhwc"):
                x = to_layout(torch.randn(4, c, h, h, device="cuda", dtype=dtype), layout)
                assert_pool_equal(fastconv.max_pool2d(x, k, s, p, 1, ceil), F.max_pool2d(x, k, s, p, 1, ceil), name)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_triton_pixel_count_past_int32(n):
    """The kernel's bound N*OH*OW came from int32 arguments and wrapped at 2**31 pixels: every pixel
    was masked out and the output never written. One program of the launcher's grid, with the
    sizes of x [n, 1, 32768, 32768] (an expanded x: no 4 GiB here) and an out holding its pixels."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("interpreted Triton runs only without a CUDA device (conftest sets TRITON_INTERPRET)")
    from fastconv.ops.triton.max_pool2d import _max_pool2d_kernel

    side = 32768
    x = torch.full((1,), 5.0).expand(n, 1, side, side)  # kernel 1, stride 1: every output is 5
    out = torch.full((64,), -1.0)
    _max_pool2d_kernel[(1, 1)](x, out, n, 1, side, side, side, side, *x.stride(), side * side, 1, side, 1,
                               1, 1, 1, 1, 0, 0, 1, 1, BLOCK_P=64, BLOCK_C=2)
    assert torch.equal(out, torch.full((64,), 5.0))
