"""64-bit indexing: tensors with more than 2**31 elements.

The C++ CPU kernels index in int64 and must compute such tensors correctly (checked on a few
~4 GiB float16 tensors, one at a time, freed promptly; peak memory stays near 5 GiB). The Triton
conv kernels address in int32 and must refuse such tensors with a clear error before launch
(checked with meta tensors and strided views, which allocate nothing).
"""
import gc
import re

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops import reference

from tests.utils import assert_close_rel

HAS_EXT = "cpu" in fastconv.available_backends()
BIG = 2**31 + 2**16  # just past what int32 offsets can reach

needs_ext = pytest.mark.skipif(not HAS_EXT, reason="C++ extension not built")


def _avail_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _need_memory(gib: float):
    if _avail_bytes() < gib * 2**30:
        pytest.skip(f"needs {gib} GiB of free memory")


def _fill_pattern(t: torch.Tensor) -> None:
    """Exactly representable float16 values that differ from row to row and column to column (an
    int32 wrap-around would read values from the wrong rows), written by one broadcast add per plane
    straight into ``t`` (no full-size temporaries)."""
    n, c, h, w = t.shape
    rows = ((torch.arange(h) * 31) % 1021).to(t.dtype).view(h, 1)
    cols = ((torch.arange(w) * 17) % 1013 - 1000).to(t.dtype).view(1, w)
    chan = (7 * torch.arange(c)).to(t.dtype)
    for i in range(n):
        if t[i].permute(1, 2, 0).is_contiguous():  # channels_last: one pass in memory order
            torch.add(rows.view(h, 1, 1), (cols.view(w, 1) + chan.view(1, c)).view(1, w, c), out=t[i].permute(1, 2, 0))
        else:
            for j in range(c):
                torch.add(rows, cols + chan[j], out=t[i, j])  # |values| < 2048: exact in float16


def _rows(total: int, k: int):
    """Output row ranges to check: the first, the middle and the last rows."""
    return [(0, k), (total // 2 - k // 2, total // 2 + (k + 1) // 2), (total - k, total)]


@needs_ext
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_max_pool2d_cpu_beyond_int32(layout):
    _need_memory(6.5)
    # NCHW: 2 huge planes (the row kernel); NHWC: 64 channels (the channels-inner kernel)
    c, h, w = (2, 32768, 32770) if layout == "nchw" else (64, 5793, 5793)
    assert c * h * w > 2**31
    storage = torch.empty(c * h * w, dtype=torch.float16)
    if layout == "nchw":
        x = storage.view(1, c, h, w)
    else:
        x = storage.as_strided((1, c, h, w), (c * h * w, 1, w * c, c))
        assert x.is_contiguous(memory_format=torch.channels_last)
    _fill_pattern(x)
    try:
        with fastconv.use_backend("cpu"):
            y = fastconv.max_pool2d(x, 3, stride=2, padding=1)
        assert y.shape == (1, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
        for r0, r1 in _rows(y.shape[2], 5):
            lo, hi = 2 * r0 - 1, 2 * (r1 - 1) + 2  # the input rows these outputs read (with padding)
            xs = x[:, :, max(lo, 0):min(hi, h)].float()
            xs = F.pad(xs, (0, 0, max(0, -lo), max(0, hi - h)), value=float("-inf"))
            ref = F.max_pool2d(xs, 3, stride=2, padding=(0, 1))
            assert ref.shape[2] == r1 - r0
            assert torch.equal(y[:, :, r0:r1].float(), ref), (layout, r0, r1)
        # the very last element lies beyond 2**31 elements from the start
        oh, ow = y.shape[2:]
        last = x[0, :, 2 * (oh - 1) - 1:, 2 * (ow - 1) - 1:].float().amax((1, 2))
        assert torch.equal(y[0, :, -1, -1].float(), last)
    finally:
        del x, storage
        y = None
        gc.collect()


@needs_ext
@pytest.mark.parametrize("case", ["input", "output"])
def test_conv1x1_cpu_beyond_int32(case):
    """``input``: an NCHW x of > 2**31 elements (C_out 2); ``output``: a channels_last out of > 2**31
    elements from a small x (C_in 3, C_out 16), written into a channel slice of a larger buffer."""
    _need_memory(6.5)
    g = torch.Generator().manual_seed(0)
    if case == "input":
        n, ci, co, h, w = 1, 16, 2, 16384, 8200
        x = torch.empty(n, ci, h, w, dtype=torch.float16)
    else:
        n, ci, co, h, w = 1, 3, 16, 8192, 16400
        x = torch.empty(n, ci, h, w, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    _fill_pattern(x)
    weight = (torch.randn(co, ci, 1, 1, generator=g) / ci**0.5).half()
    bias = torch.randn(co, generator=g).half()
    scale, shift = torch.rand(ci, generator=g).half() + 0.5, torch.randn(ci, generator=g).half()
    kw = dict(in_scale=scale, in_shift=shift, in_relu=True)
    try:
        with fastconv.use_backend("cpu"):
            if case == "input":
                assert x.numel() > 2**31
                y = fastconv.conv1x1(x, weight, bias, **kw)
                view = y
            else:
                buf = torch.empty(n, co + 1, h, w, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
                view = buf[:, 1:]
                assert view.numel() > 2**31
                buf[:, 0].fill_(123)
                fastconv.conv1x1(x, weight, bias, out=view, **kw)
                assert (buf[:, 0] == 123).all()  # the channel outside the slice is untouched
        for r0, r1 in _rows(h, 3):
            ref = reference.conv1x1(x[:, :, r0:r1].double(), weight.double(), bias.double(), None, scale.double(),
                                    shift.double(), True, [1, 1], True)
            assert_close_rel(view[:, :, r0:r1], ref, torch.float16, f"{case} rows {r0}:{r1}")
    finally:
        del x
        view = y = buf = None
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Triton: rejected before launch (meta tensors and strided views: nothing is allocated)

def _triton_conv1x1():
    pytest.importorskip("triton")
    from fastconv.ops.triton import conv1x1 as triton_conv1x1

    return triton_conv1x1


@pytest.mark.parametrize("what", ["x", "outs[0]", "strided x", "weight", "residual"])
def test_triton_conv1x1_rejects_int32_overflow(what):
    tc = _triton_conv1x1()
    meta = dict(device="meta", dtype=torch.float16)
    x = torch.empty(1, 16, 64, 64, **meta)
    w = torch.empty(32, 16, **meta)
    out = torch.empty(1, 32, 64, 64, **meta)
    residual = None
    if what == "x":
        x = torch.empty(1, 16, 16384, 8200, **meta)
        out = torch.empty(1, 32, 16384, 8200, **meta)
    elif what == "outs[0]":
        x = torch.empty(1, 2, 16384, 8200, **meta)
        w = torch.empty(32, 2, **meta)
        out = torch.empty(1, 32, 16384, 8200, **meta)
    elif what == "strided x":  # few elements, but the last one lies 2**31 elements past the first
        x = torch.empty(1, **meta).as_strided((2, 16, 64, 64), (BIG, 4096, 64, 1))
        out = torch.empty(2, 32, 64, 64, **meta)
        what = "x"
    elif what == "weight":
        w = torch.empty(1, **meta).as_strided((32, 16), (BIG // 31, 1))
    elif what == "residual":
        residual = torch.empty(1, **meta).as_strided((1, 32, 64, 64), (BIG, BIG // 31, 64, 1))
    with pytest.raises(RuntimeError, match=rf"int32; {re.escape(what)}(?!\w).*2\*\*31-1"):
        tc.conv1x1(x, w, None, residual, None, None, False, [1, 1], True, [out])


def test_triton_conv1x1_accepts_just_below_int32():
    """The guard is not over-eager: spans just under 2**31 pass the check (then the meta tensors
    stop at the launch, which is the first thing after the guard)."""
    tc = _triton_conv1x1()
    x = torch.empty(1, 16, 64, 64, device="meta", dtype=torch.float16)
    tc._check_int32([("x", x.as_strided((1, 16, 64, 64), (2**31 - 1 - 15 * 4096 - 63 * 65, 4096, 64, 1)))])
    with pytest.raises(RuntimeError, match="int32"):
        tc._check_int32([("x", x.as_strided((2, 16, 64, 64), (2**31, 4096, 64, 1)))])
