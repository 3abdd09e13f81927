"""dense_concat: equal to torch.cat(features, 1); a view (no copy) for adjacent slices of one buffer."""
import random

import pytest
import torch

import fastconv
from fastconv.ops.dense_concat import adjacent_view

from tests.utils import to_layout

COPY_BACKENDS = ["reference", "cpu", "triton"]


def _features(rng, n, channels, h, w, dtype, layout):
    return [to_layout(torch.randn(n, c, h, w, dtype=dtype, generator=rng), layout) for c in channels]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_adjacent_slices_are_a_view(layout):
    memory_format = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    buf = torch.randn(2, 12, 5, 6).contiguous(memory_format=memory_format)
    feats = [buf[:, 0:4], buf[:, 4:5], buf[:, 5:12]]
    y = fastconv.dense_concat(feats)
    assert y.data_ptr() == buf.data_ptr() and y.stride() == buf.stride()
    assert torch.equal(y, torch.cat(feats, 1))
    prefix = fastconv.dense_concat(feats[:2])  # a prefix of the buffer is a view as well
    assert prefix.data_ptr() == buf.data_ptr() and torch.equal(prefix, buf[:, :5])


def test_non_adjacent_slices_copy():
    buf = torch.randn(2, 12, 5, 6)
    feats = [buf[:, 0:4], buf[:, 6:9]]  # a gap between them
    assert adjacent_view(feats) is None
    y = fastconv.dense_concat(feats)
    assert y.data_ptr() != buf.data_ptr()
    assert torch.equal(y, torch.cat(feats, 1))


@pytest.mark.parametrize("backend", COPY_BACKENDS)
@pytest.mark.parametrize("seed", range(8))
def test_copy_matches_cat(backend, seed):
    rng = torch.Generator().manual_seed(seed)
    pyrng = random.Random(seed)
    dtype = [torch.float32, torch.float16, torch.bfloat16, torch.float64][seed % 4]
    if backend == "triton" and dtype == torch.float64:
        dtype = torch.float32
    channels = [pyrng.randint(1, 7) for _ in range(pyrng.randint(1, 4))]
    layouts = ["nchw", "nhwc", "strided"]
    n, h, w = pyrng.randint(1, 3), pyrng.randint(1, 6), pyrng.randint(1, 6)
    feats = [to_layout(torch.randn(n, c, h, w, generator=rng).to(dtype), pyrng.choice(layouts)) for c in channels]
    expected = torch.cat(feats, 1)
    with fastconv.use_backend(backend):
        y = fastconv.dense_concat(feats)
        assert torch.equal(y, expected)
        # out= into a channel slice of a NaN-poisoned NHWC buffer: the slice written, the rest untouched
        total = sum(channels)
        buf = torch.full((n, total + 3, h, w), float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
        fastconv.dense_concat(feats, out=buf[:, 2:2 + total])
    assert torch.equal(buf[:, 2:2 + total], expected)
    assert buf[:, :2].isnan().all() and buf[:, 2 + total:].isnan().all()


@pytest.mark.parametrize("backend", COPY_BACKENDS)
def test_zero_batch(backend):
    feats = [torch.randn(0, 3, 4, 4), torch.randn(0, 2, 4, 4)]
    with fastconv.use_backend(backend):
        y = fastconv.dense_concat([feats[0], feats[1].clone()])
    assert y.shape == (0, 5, 4, 4)


def test_out_already_holding_the_slices_is_returned():
    buf = torch.randn(1, 6, 3, 3)
    out = buf[:, 1:6]
    assert fastconv.dense_concat([buf[:, 1:3], buf[:, 3:6]], out=out) is out


@pytest.mark.parametrize(
    "features, exc, match",
    [
        ([], ValueError, "must not be empty"),
        (torch.randn(1, 2, 3, 3), TypeError, "list or tuple"),
        ([torch.randn(1, 2, 3, 3), torch.randn(1, 2, 4, 3)], ValueError, r"features\[1\]"),
        ([torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3)], ValueError, r"features\[1\]"),
        ([torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3).half()], TypeError, r"features\[1\]"),
        ([torch.randn(1, 2, 3, 3), torch.ones(1, 2, 3, 3, dtype=torch.int32)], TypeError, r"features\[1\]"),
        ([torch.randn(2, 3, 3)], ValueError, r"features\[0\] must be 4-D"),
    ],
)
def test_bad_input(features, exc, match):
    with pytest.raises(exc, match=match):
        fastconv.dense_concat(features)


def test_out_errors():
    feats = [torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3)]
    with pytest.raises(ValueError, match="out must have shape"):
        fastconv.dense_concat(feats, out=torch.empty(1, 4, 3, 3))
    with pytest.raises(TypeError, match="out has dtype"):
        fastconv.dense_concat(feats, out=torch.empty(1, 5, 3, 3, dtype=torch.float64))
    buf = torch.randn(1, 8, 3, 3)
    with pytest.raises(RuntimeError, match="overlaps"):
        fastconv.dense_concat([buf[:, 0:2], buf[:, 4:7]], out=buf[:, 1:6])


def test_copy_path_is_differentiable():
    a = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    with fastconv.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda a, b: fastconv.dense_concat([a, b]), (a, b))


def test_opcheck():
    feats = [torch.randn(2, 3, 4, 4), torch.randn(2, 2, 4, 4).contiguous(memory_format=torch.channels_last)]
    with fastconv.use_backend("cpu"):
        torch.library.opcheck(torch.ops.fastconv.dense_concat.default, (feats,))
        torch.library.opcheck(torch.ops.fastconv.dense_concat_out.default, (feats, torch.empty(2, 5, 4, 4)))


def test_compile_fullgraph():
    def f(a, b, buf):
        fastconv.dense_concat([a, b], out=buf[:, 1:6])
        return fastconv.dense_concat([a, b]) * 2

    a, b = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 4, 4)
    buf = torch.full((2, 8, 4, 4), float("nan"))
    with fastconv.use_backend("cpu"):
        y = torch.compile(f, fullgraph=True, backend="aot_eager")(a, b, buf)
    expected = torch.cat([a, b], 1)
    assert torch.equal(y, expected * 2)
    assert torch.equal(buf[:, 1:6], expected) and buf[:, :1].isnan().all() and buf[:, 6:].isnan().all()


def test_exact_out_of_features_that_require_grad_under_no_grad():
    """Under no_grad, features that are slices of a buffer requiring grad, concatenated into that
    buffer: refused as overlapping (torch.cat accepts it); it is the concatenation already."""
    buf = torch.randn(1, 8, 5, 5, requires_grad=True)
    with torch.no_grad():
        got = fastconv.dense_concat([buf[:, :3], buf[:, 3:]], out=buf)
        assert got is buf
        view = fastconv.dense_concat([buf[:, :3], buf[:, 3:]])
        assert view.data_ptr() == buf.data_ptr() and torch.equal(view, buf)


def test_traced_adjacent_slices_copy_at_every_size():
    """torch.jit.trace of the view recorded an as_strided with the traced call's strides: at another
    H x W the traced function returned other elements (20.8 off) or raised. Traced, it copies."""
    def f(x):
        buf = x.new_empty(x.shape[0], 2 * x.shape[1], x.shape[2], x.shape[3])
        buf[:, :x.shape[1]] = x
        buf[:, x.shape[1]:] = x * 2
        return fastconv.dense_concat([buf[:, :x.shape[1]], buf[:, x.shape[1]:]])

    with torch.no_grad():
        traced = torch.jit.trace(f, torch.randn(2, 3, 8, 8))
        for shape in [(2, 3, 8, 8), (1, 3, 9, 9), (2, 3, 12, 10), (1, 3, 10, 6)]:
            x = torch.randn(shape)
            assert torch.equal(traced(x), torch.cat([x, x * 2], 1)), shape


def test_traced_exact_out_is_returned():
    """Features that already are out's slices, traced: out is returned (the copy path refused the
    overlap), at every size."""
    def f(x):
        buf = x.new_empty(x.shape[0], 2 * x.shape[1], x.shape[2], x.shape[3])
        buf[:, :x.shape[1]] = x
        buf[:, x.shape[1]:] = x * 2
        return fastconv.dense_concat([buf[:, :x.shape[1]], buf[:, x.shape[1]:]], out=buf)

    with torch.no_grad():
        traced = torch.jit.trace(f, torch.randn(2, 3, 4, 4), check_trace=False)
        for shape in [(2, 3, 4, 4), (1, 3, 7, 5)]:
            x = torch.randn(shape)
            assert torch.equal(traced(x), torch.cat([x, x * 2], 1)), shape


def test_meta_and_fake_slices_of_two_buffers_are_not_a_view():
    """Every meta or fake storage reports address 0: slices of two different buffers looked adjacent
    and came back as a view of the first (torch.cat gives a new tensor); make_fx's tensors have no
    data pointer at all (it raised)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    ma, mb = torch.empty(2, 12, 5, 5, device="meta"), torch.empty(2, 12, 5, 5, device="meta")
    y = fastconv.dense_concat([ma[:, :4], mb[:, 4:8]])
    assert y._base is None and y.stride() == (200, 25, 5, 1)
    with FakeTensorMode():
        fa, fb = torch.empty(2, 12, 5, 5), torch.empty(2, 12, 5, 5)
        y = fastconv.dense_concat([fa[:, :4], fb[:, 4:8]])
        assert y._base is None and y.stride() == torch.cat([fa[:, :4], fb[:, 4:8]], 1).stride()
    a, b = torch.randn(2, 12, 5, 5), torch.randn(2, 12, 5, 5)
    for mode in ("fake", "symbolic"):
        graph = make_fx(lambda a, b: fastconv.dense_concat([a[:, :4], b[:, 4:8]]), tracing_mode=mode)(a, b)
        assert torch.equal(graph(a, b), torch.cat([a[:, :4], b[:, 4:8]], 1))
