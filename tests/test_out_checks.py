"""Checks on out= that depend on the out tensor itself, not on shapes (so the fast path's replays
make them too): whether it shares memory with an input, and whether it may be written here.

The overlap rule (fastconv/ops/_checks.py, ``_share_memory``) against brute force: two
random views of one small buffer (slices with steps and offsets along every dimension, permuted
dimensions, either memory format) share memory exactly when their element sets intersect.

The rule used to decompose the views' offset difference greedily over the strides, which read a
(+4 rows, -8 columns) shift as (+3 rows, +24 columns): an out overlapping x's rows 4-7 passed the
check and the cpu backend wrote into the input it was reading."""
from __future__ import annotations

import random

import pytest
import torch

import fastconv
from fastconv.ops import _checks


def _random_view(base: torch.Tensor, rng: random.Random) -> torch.Tensor:
    v = base
    for d in range(v.dim()):
        n = v.shape[d]
        start = rng.randrange(n)
        stop = rng.randrange(start + 1, n + 1)
        v = v.narrow(d, start, stop - start)
        if rng.random() < 0.3 and v.shape[d] > 1:
            idx = [slice(None)] * v.dim()
            idx[d] = slice(None, None, rng.choice([2, 3]))
            v = v[tuple(idx)]
    if rng.random() < 0.3:
        v = v.permute(*rng.sample(range(v.dim()), v.dim()))
    return v


@pytest.mark.parametrize("channels_last", [False, True])
def test_share_memory_matches_brute_force(channels_last):
    rng = random.Random(1234 + channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    base = torch.empty(2, 6, 5, 7).contiguous(memory_format=fmt)
    # each element's storage index, read through the same views
    index = torch.arange(base.numel(), dtype=torch.float64).as_strided(base.shape, base.stride())
    shared = apart = 0
    for _ in range(3000):
        seed = rng.random()
        ra, rb = random.Random(seed), random.Random(seed)
        a, ia = _random_view(base, ra), _random_view(index, rb)
        seed = rng.random()
        b, ib = _random_view(base, random.Random(seed)), _random_view(index, random.Random(seed))
        truth = bool(set(ia.flatten().tolist()) & set(ib.flatten().tolist()))
        assert _checks._share_memory(a, b) == truth, (a.shape, a.stride(), b.shape, b.stride(),
                                                      a.storage_offset(), b.storage_offset())
        shared += truth
        apart += not truth
    assert shared > 100 and apart > 100  # both outcomes exercised


def test_element_sizes_differ():
    buf = torch.zeros(64, dtype=torch.uint8)
    wide = buf[8:16].view(torch.float64)  # bytes 8..15
    assert _checks._share_memory(wide, buf[15:16]) and _checks._share_memory(buf[8:9], wide)
    assert not _checks._share_memory(wide, buf[16:17]) and not _checks._share_memory(buf[7:8], wide)


@pytest.mark.parametrize("backend", ["cpu", "torch", "reference"])
def test_out_overlapping_rows_and_columns_is_rejected(backend):
    """The reported case: x = buf[..., 0:8, 8:24] and out = buf[..., 4:12, 0:16] share rows 4-7,
    columns 8-15; rejected on every op, while DenseNet's disjoint channel slices still pass."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    buf = torch.randn(2, 16, 16, 32)
    x, out = buf[:, :, 0:8, 8:24], buf[:, :, 4:12, 0:16]
    with fastconv.use_backend(backend), torch.no_grad():
        with pytest.raises(RuntimeError, match="overlaps"):
            fastconv.conv1x1(x, torch.randn(16, 16), relu=False, out=out)
        with pytest.raises(RuntimeError, match="overlaps"):
            fastconv.conv2d_relu(x, torch.randn(16, 16, 1, 1), out=out)
        with pytest.raises(RuntimeError, match="overlaps"):
            fastconv.max_pool2d(x, 1, out=out)
        cl = torch.randn(2, 24, 6, 6).contiguous(memory_format=torch.channels_last)
        y = fastconv.conv2d_relu(cl[:, :16], torch.randn(8, 16, 3, 3), padding=1, out=cl[:, 16:])
        assert y.data_ptr() == cl[:, 16:].data_ptr()


@pytest.mark.parametrize("backend", ["cpu", "torch", "reference"])
def test_inference_tensor_out_outside_inference_mode(backend):
    """ATen refuses to write an inference tensor outside inference mode; fastconv's C++ kernels,
    writing through raw pointers, did not: every backend refuses now, on replays too."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    with torch.inference_mode():
        buf = torch.zeros(1, 4, 6, 6)
    with fastconv.use_backend(backend):
        with torch.inference_mode():
            for _ in range(2):  # allowed there; the second call replays
                fastconv.conv2d_relu(x, w, padding=1, out=buf)
                fastconv.max_pool2d(x, 1, out=buf)
        with torch.no_grad():
            for call in (lambda: fastconv.conv2d_relu(x, w, padding=1, out=buf),
                         lambda: fastconv.conv1x1(x, w[:, :, 0, 0], out=buf),
                         lambda: fastconv.max_pool2d(x, 1, out=buf)):
                with pytest.raises(RuntimeError, match="inference tensor"):
                    call()
