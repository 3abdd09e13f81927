"""The cpu backend's Winograd F(2x2, 3x3) and F(4x4, 3x3) kernel (csrc/cpu/winograd_conv_kernel.cpp),
which takes 3x3 stride-1 float32 channels_last convs with >= 16 channels in and out: against the
fp64 reference on odd sizes, every padding, residual and ReLU variants, out layouts and slices (NaN
poisoned), NaN and Inf inputs, weight updates; its argument checks; and where the dispatch sends
it (and with which tile)."""
from __future__ import annotations

import importlib

import pytest
import torch

import fastconv
from fastconv import _ext
from fastconv.ops import _weight_cache, reference
from tests.utils import assert_close_rel

conv_mod = importlib.import_module("fastconv.ops.conv2d_relu")  # the module (fastconv.ops.conv2d_relu is the function)

pytestmark = pytest.mark.skipif(_ext.load_error() is not None or not hasattr(torch.ops.fastconv, "_conv2d_winograd_cpu"),
                                reason="the C++ extension (with _conv2d_winograd_cpu) is not built")

CL = torch.channels_last
CASES = [
    # (n, c, h, w, k, padding [top, bottom, left, right])
    (2, 16, 8, 8, 16, [1, 1, 1, 1]),
    (1, 24, 7, 7, 40, [1, 1, 1, 1]),       # odd output: the last tile row/column half used
    (3, 32, 5, 9, 16, [0, 0, 0, 0]),       # 'valid': 3x7 output
    (1, 16, 6, 5, 24, [2, 2, 2, 2]),       # pads wider than the filter's reach
    (2, 16, 9, 6, 16, [0, 1, 1, 0]),       # asymmetric ('same' for an even map)
    (1, 48, 1, 1, 16, [1, 1, 1, 1]),       # 1x1 map: one tile, three of its outputs unused
    (1, 16, 3, 40, 32, [1, 1, 0, 2]),
    (5, 64, 14, 14, 64, [1, 1, 1, 1]),     # many tiles: several blocks per thread
]


def _inputs(n, c, h, w, k, padding, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=CL)
    weight = (torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5).contiguous(memory_format=CL)
    bias = torch.randn(k, generator=gen)
    oh, ow = h + padding[0] + padding[1] - 2, w + padding[2] + padding[3] - 2
    residual = torch.randn(n, k, oh, ow, generator=gen)
    return x, weight, bias, residual


def _ref(x, weight, bias, residual, padding, relu):
    return reference.conv2d_relu(x.double(), weight.double(), None if bias is None else bias.double(),
                                 None if residual is None else residual.double(), stride=[1, 1], padding=padding,
                                 dilation=[1, 1], groups=1, relu=relu)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + "-p" + "".join(map(str, c[5])))
@pytest.mark.parametrize("with_res", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("out_layout", ["nhwc", "nchw", "nhwc_slice"])
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matches_the_fp64_reference(case, with_res, relu, out_layout, m):
    n, c, h, w, k, padding = case
    x, weight, bias, residual = _inputs(*case)
    residual = residual.contiguous(memory_format=CL) if with_res and out_layout != "nchw" else \
        (residual if with_res else None)
    ref = _ref(x, weight, bias, residual, padding, relu)
    shape = tuple(ref.shape)
    if out_layout == "nhwc_slice":
        buf = torch.full((n, k + 12, shape[2], shape[3]), float("nan")).contiguous(memory_format=CL)
        out = buf[:, 5:5 + k]
    else:
        out = torch.full(shape, float("nan"))
        out = out.contiguous(memory_format=CL) if out_layout == "nhwc" else out
    torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, m), bias, residual, padding,
                                            relu, out, weight)
    assert_close_rel(out, ref, torch.float32, f"F({m}x{m}) {case} res={with_res} relu={relu} {out_layout}")
    if out_layout == "nhwc_slice":
        assert torch.isnan(buf[:, :5]).all() and torch.isnan(buf[:, 5 + k:]).all()


@pytest.mark.parametrize("m", [2, 4])
def test_x_a_channel_slice_of_an_nhwc_buffer(m):
    """DenseNet's pattern: x is the first channels of a wider channels_last concat buffer."""
    gen = torch.Generator().manual_seed(9)
    buf = torch.randn(2, 56, 9, 7, generator=gen).contiguous(memory_format=CL)
    x = buf[:, 4:36]
    weight = torch.randn(24, 32, 3, 3, generator=gen) / 17
    bias = torch.randn(24, generator=gen)
    out = torch.full((2, 24, 9, 7), float("nan")).contiguous(memory_format=CL)
    torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, m), bias, None, [1, 1, 1, 1],
                                            True, out)
    assert_close_rel(out, _ref(x, weight, bias, None, [1, 1, 1, 1], True), torch.float32, "x slice")


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("values", ["nan", "inf", "mixed"])
@pytest.mark.parametrize("epilogue", ["none", "bias_residual_relu"])
def test_non_finite_inputs_reach_exactly_the_outputs_of_a_direct_conv(m, values, epilogue):
    """The transforms combine a tile's inputs (Inf - Inf = NaN, NaN * 0 = NaN), so given the 3x3
    weight (as the dispatch passes it) the kernel computes tiles with a NaN or Inf input directly:
    NaN where a direct conv gives NaN, the same Inf where it gives Inf (an Inf times a zero weight
    is NaN there too), the other outputs as usual. Without an epilogue nothing hides a value; with
    one, the direct tiles take the same bias, residual and ReLU (into an NCHW out)."""
    x, weight, bias, residual = _inputs(2, 16, 11, 13, 24, [1, 1, 1, 1], seed=7)
    weight[0, 0, 1, 1] = 0.0
    bad = {"nan": [float("nan")] * 3, "inf": [float("inf"), float("-inf"), float("inf")],
           "mixed": [float("nan"), float("inf"), float("-inf")]}[values]
    for v, (n, c, h, w) in zip(bad, [(0, 3, 2, 2), (1, 0, 6, 12), (1, 15, 10, 0)]):
        x[n, c, h, w] = v
    full = epilogue != "none"
    bias, residual = (bias, residual.contiguous(memory_format=CL)) if full else (None, None)
    ref = _ref(x, weight, bias, residual, [1, 1, 1, 1], full)
    out = torch.empty(2, 24, 11, 13) if full else torch.empty(2, 24, 11, 13).contiguous(memory_format=CL)
    torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, m), bias, residual,
                                            [1, 1, 1, 1], full, out, weight)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (int(torch.isnan(out).sum()), int(torch.isnan(ref).sum()))
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(out), inf) and torch.equal(out[inf], ref[inf].float())
    assert torch.isnan(ref).any() or inf.any()
    ok = torch.isfinite(ref)
    torch.testing.assert_close(out[ok], ref[ok].float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m", [2, 4])
def test_finite_inputs_that_overflow_in_the_transforms_are_computed_directly(m):
    """Inputs near FLT_MAX: the input transform scales them by up to 100 (F(4x4)) and overflows to
    Inf, and Inf - Inf = NaN came out of every tile, though the true outputs are finite."""
    x, weight, bias, _ = _inputs(1, 16, 8, 8, 16, [1, 1, 1, 1], seed=3)
    x = x.clamp(-1, 1) * 3e38  # F(2x2)'s transform adds up to four inputs, F(4x4)'s scales by up to 100
    weight = weight * 1e-3
    ref = _ref(x, weight, bias, None, [1, 1, 1, 1], False)
    assert torch.isfinite(ref).all() and ref.abs().max() < 3e38
    out = torch.full((1, 16, 8, 8), float("nan")).contiguous(memory_format=CL)
    torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, m), bias, None, [1, 1, 1, 1],
                                            False, out, weight)
    assert_close_rel(out, ref, torch.float32, f"F({m}x{m}) near FLT_MAX")


def test_recomputed_tiles_do_not_overflow_where_the_true_result_is_finite():
    """Inputs ~3e37 with unit weights: the recomputed (overflowed) tiles summed per tap in float32,
    where +Inf and -Inf met as NaN though the float64 result is finite (or 0 after the ReLU)."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 16, 12, 12, generator=gen) * 3e37).contiguous(memory_format=CL)
    weight, bias = torch.randn(16, 16, 3, 3, generator=gen), torch.randn(16, generator=gen)
    ref = _ref(x, weight, bias, None, [1, 1, 1, 1], True)
    for m in (2, 4):
        out = torch.empty(1, 16, 12, 12).contiguous(memory_format=CL)
        torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, m), bias, None,
                                                [1, 1, 1, 1], True, out, weight)
        fits = ref.abs() < 3.4e38
        assert not out.isnan().any() and torch.equal(torch.isinf(out), ~fits)
        torch.testing.assert_close(out[fits].double(), ref[fits], rtol=1e-4, atol=0)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_weight_keeps_the_conv_off_winograd(value):
    """G g Gᵀ spreads a weight's Inf over its transformed row as Inf - Inf = NaN: the whole output
    channel came out NaN where a direct conv gives +-Inf (and 0 after the ReLU). Such a weight has
    no Winograd form (cached as such), so the im2col kernel runs; the kernel itself, handed that
    form anyway, recomputes the non-finite tiles directly."""
    x, weight, bias, _ = _inputs(1, 16, 6, 6, 16, [1, 1, 1, 1], seed=5)
    weight[2, 1, 1, 1] = value  # the centre tap: every output of channel 2 meets it, none in padding
    ref = _ref(x, weight, bias, None, [1, 1, 1, 1], True)
    assert conv_mod.use_winograd(x, weight, [1, 1], [1, 1], 1)
    assert conv_mod.winograd_weight(weight, 2) is None and conv_mod.winograd_weight(weight, 4) is None
    with fastconv.use_backend("cpu"):
        y = fastconv.conv2d_relu(x, weight, bias, padding=1)
    torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, 4), bias, None, [1, 1, 1, 1],
                                            True, direct := torch.empty_like(y), weight)
    for out in (y, direct):
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.equal(torch.isinf(out), torch.isinf(ref))
        ok = torch.isfinite(ref)
        assert ok.sum() > 0
        torch.testing.assert_close(out[ok], ref[ok].float(), rtol=1e-4, atol=1e-5)
    _weight_cache.clear()


def test_zero_batch():
    x = torch.empty(0, 16, 5, 5).contiguous(memory_format=CL)
    out = torch.empty(0, 16, 5, 5).contiguous(memory_format=CL)
    torch.ops.fastconv._conv2d_winograd_cpu(x, torch.randn(16, 16, 16), None, None, [1, 1, 1, 1], True, out)
    torch.ops.fastconv._conv2d_winograd_cpu(x, torch.randn(36, 16, 16), None, None, [1, 1, 1, 1], True, out)


def test_bad_arguments_raise():
    x, weight, bias, _ = _inputs(1, 16, 6, 6, 16, [1, 1, 1, 1])
    u = conv_mod.make_winograd_weight(weight)
    out = torch.empty(1, 16, 6, 6).contiguous(memory_format=CL)
    op = torch.ops.fastconv._conv2d_winograd_cpu
    with pytest.raises(RuntimeError, match="float32 only"):
        op(x.double(), u, None, None, [1, 1, 1, 1], True, out)
    with pytest.raises(RuntimeError, match="channels_last"):
        op(x.contiguous(), u, None, None, [1, 1, 1, 1], True, out)
    with pytest.raises(RuntimeError, match=r"\[16 or 36, C_in, C_out\]"):
        op(x, u[:, :8], None, None, [1, 1, 1, 1], True, out)
    with pytest.raises(RuntimeError, match=r"\[16 or 36, C_in, C_out\]"):
        op(x, torch.randn(25, 16, 16), None, None, [1, 1, 1, 1], True, out)
    with pytest.raises(RuntimeError, match="weight must be the float32 CPU"):
        op(x, u, None, None, [1, 1, 1, 1], True, out, weight[:8])
    with pytest.raises(RuntimeError, match="weight must be the float32 CPU"):
        op(x, u, None, None, [1, 1, 1, 1], True, out, weight.double())
    with pytest.raises(RuntimeError, match="out must be"):
        op(x, u, None, None, [0, 0, 0, 0], True, out)
    with pytest.raises(RuntimeError, match="bias"):
        op(x, u, bias[:8], None, [1, 1, 1, 1], True, out)
    with pytest.raises(RuntimeError, match="residual"):
        op(x, u, None, torch.randn(1, 16, 5, 5), [1, 1, 1, 1], True, out)
    with pytest.raises(RuntimeError, match="smaller than the 3x3"):
        op(torch.randn(1, 16, 1, 1).contiguous(memory_format=CL), u, None, None, [0, 0, 0, 0], True, out)
    with pytest.raises(RuntimeError, match="overlap|memory location"):
        buf = torch.empty(1, 16, 6, 6).contiguous(memory_format=CL)
        op(buf, u, None, None, [1, 1, 1, 1], True, buf)


def test_dispatch_takes_winograd_only_where_it_applies(monkeypatch):
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=CL)
    w = torch.randn(16, 16, 3, 3)
    assert conv_mod.use_winograd(x, w, [1, 1], [1, 1], 1)
    assert not conv_mod.use_winograd(x.contiguous(), w, [1, 1], [1, 1], 1)          # NCHW
    assert not conv_mod.use_winograd(x, w, [2, 2], [1, 1], 1)                       # strided
    assert not conv_mod.use_winograd(x, w, [1, 1], [2, 2], 1)                       # dilated
    assert not conv_mod.use_winograd(x.double(), w.double(), [1, 1], [1, 1], 1)     # float64
    assert not conv_mod.use_winograd(x, torch.randn(16, 16, 5, 5), [1, 1], [1, 1], 1)
    assert not conv_mod.use_winograd(x[:, :8], torch.randn(16, 8, 3, 3), [1, 1], [1, 1], 1)  # too few channels
    assert not conv_mod.use_winograd(x, w.clone().requires_grad_(), [1, 1], [1, 1], 1)  # a weight being trained
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "0")
    assert not conv_mod.use_winograd(x, w, [1, 1], [1, 1], 1)


def test_tile_choice(monkeypatch):
    # F(4x4) from max(16, C_in * C_out / 8192) 4x4 output tiles and 64 output channels up, F(2x2)
    # below; the environment forces either
    def tile(n, c, h, w, k=None):
        return conv_mod.winograd_tile(torch.empty(n, c, h, w), torch.empty(n, k or c, h, w))
    assert conv_mod.WINOGRAD_4X4_MIN_TILES == 16
    assert tile(4, 64, 56, 56) == 4
    assert tile(1, 256, 14, 14) == 4        # 16 tiles
    assert tile(1, 64, 13, 13) == 4         # 16 tiles, the last row/column partly used
    assert tile(3, 64, 7, 7) == 2           # 12 tiles
    assert tile(4, 512, 7, 7) == 2          # 16 tiles, but 36 weight matrices of 1 MiB
    assert tile(8, 512, 7, 7) == 4          # 32
    assert tile(4, 128, 56, 56, k=32) == 2  # DenseNet's growth convs
    assert tile(4, 128, 14, 14, k=64) == 4
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "2")
    assert tile(4, 64, 56, 56) == 2
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "4")
    assert tile(1, 512, 7, 7) == 4
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", "3")
    with pytest.raises(ValueError, match="FASTCONV_CPU_WINOGRAD must be"):
        tile(1, 64, 7, 7)


@pytest.mark.parametrize("env,m", [(None, 4), ("2", 2)])
def test_the_cpu_tactic_caches_the_tile_it_runs(env, m, monkeypatch):
    if env:
        monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", env)
    _weight_cache.clear()
    x, weight, bias, _ = _inputs(1, 16, 16, 16, 64, [1, 1, 1, 1], seed=8)  # 16 4x4 tiles, 64 out channels
    with fastconv.use_backend("cpu"):
        y = fastconv.conv2d_relu(x, weight, bias, 1, 1)
    assert _weight_cache.cached_count() == 1
    assert torch.equal(conv_mod.winograd_weight(weight, m), conv_mod.make_winograd_weight(weight, m))
    assert _weight_cache.cached_count() == 1  # the same entry
    assert_close_rel(y, _ref(x, weight, bias, None, [1, 1, 1, 1], True), torch.float32, f"F({m}x{m})")
    _weight_cache.clear()


@pytest.mark.parametrize("grad_mode", ["enable_grad", "no_grad", "inference_mode"])
def test_layers_with_trainable_weights_take_winograd_when_autograd_is_off(grad_mode):
    """fastconv.nn.Conv2dReLU in inference (its weight requires grad, the call runs under no_grad or
    inference_mode) takes the Winograd kernel; with autograd on (training) the im2col kernel, and
    the gradients are right. The op's implementation cannot see grad mode: the Python API marks the
    weight for its call only."""
    torch.manual_seed(4)
    layer = fastconv.nn.Conv2dReLU(16, 24, 3, padding=1)
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=CL)
    _weight_cache.clear()
    with fastconv.use_backend("cpu"), getattr(torch, grad_mode)():
        y = layer(x)
        assert not conv_mod.grad_free(layer.weight)  # the mark is gone after the call
    assert _weight_cache.cached_count() == (0 if grad_mode == "enable_grad" else 1)
    ref = _ref(x, layer.weight.detach(), layer.bias.detach(), None, [1, 1, 1, 1], True)
    assert_close_rel(y.detach(), ref, torch.float32, grad_mode)
    if grad_mode == "enable_grad":
        y.square().sum().backward()
        w = layer.weight.detach().double().requires_grad_()
        ref_y = torch.relu(torch.nn.functional.conv2d(x.double(), w, layer.bias.detach().double(), padding=1))
        ref_y.square().sum().backward()
        assert_close_rel(layer.weight.grad, w.grad, torch.float32, "weight grad")
    _weight_cache.clear()


def test_auto_keys_a_weight_that_needs_its_gradient_apart():
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=CL)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    out = torch.empty(1, 16, 6, 6).contiguous(memory_format=CL)
    args = (x, w, None, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, out)
    trained = conv_mod._signature(*args)
    with torch.no_grad():
        assert conv_mod._mark_grad_free(w)
        try:
            inference = conv_mod._signature(*args)
        finally:
            conv_mod._marks.ids.pop()
    assert not conv_mod.grad_free(w)
    assert trained[1][-1] == "weight-grad" and inference[1] == trained[1][:-1]
    assert conv_mod._signature(*((x, w.detach()) + args[2:]))[1] == inference[1]


@pytest.mark.parametrize("winograd", ["1", "0"])
def test_public_op_on_the_cpu_backend(winograd, monkeypatch):
    """Both paths through fastconv.conv2d_relu(backend cpu) for an eligible conv: the same answer."""
    monkeypatch.setenv("FASTCONV_CPU_WINOGRAD", winograd)
    x, weight, bias, residual = _inputs(2, 32, 10, 10, 32, [1, 1, 1, 1], seed=3)
    residual = residual.contiguous(memory_format=CL)
    with fastconv.use_backend("cpu"):
        y = fastconv.conv2d_relu(x, weight, bias, 1, 1, residual=residual)
    assert y.is_contiguous(memory_format=CL)
    assert_close_rel(y, _ref(x, weight, bias, residual, [1, 1, 1, 1], True), torch.float32, f"winograd={winograd}")


def test_transformed_weight_cached_and_remade_after_an_in_place_update():
    _weight_cache.clear()
    x, weight, bias, _ = _inputs(1, 16, 8, 8, 16, [1, 1, 1, 1], seed=5)
    with fastconv.use_backend("cpu"):
        fastconv.conv2d_relu(x, weight, bias, 1, 1)
        assert _weight_cache.cached_count() == 1
        weight.mul_(-1.5)
        y = fastconv.conv2d_relu(x, weight, bias, 1, 1)
    assert_close_rel(y, _ref(x, weight, bias, None, [1, 1, 1, 1], True), torch.float32, "after the update")
    _weight_cache.clear()


def test_inference_tensor_weights_take_the_im2col_kernel():
    """An inference tensor has no version counter, so its transform cannot be cached; transforming
    it on every call would cost more than the conv: the im2col kernel runs instead."""
    _weight_cache.clear()
    with torch.inference_mode():
        x, weight, bias, _ = _inputs(1, 32, 8, 8, 32, [1, 1, 1, 1], seed=6)
        assert conv_mod.winograd_weight(weight, 4) is None and conv_mod.winograd_weight(weight, 2) is None
        with fastconv.use_backend("cpu"):
            y = fastconv.conv2d_relu(x, weight, bias, 1, 1)
    assert _weight_cache.cached_count() == 0
    assert_close_rel(y, _ref(x, weight, bias, None, [1, 1, 1, 1], True), torch.float32, "inference tensors")


def test_convert_under_inference_mode_keeps_cacheable_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(2, 16, 12, 12)
    _weight_cache.clear()
    with torch.inference_mode(), fastconv.use_backend("cpu"):
        fast = fastconv.convert(model)
        assert not any(t.is_inference() for t in list(fast.parameters()) + list(fast.buffers()))
        y = fast(x)
        assert _weight_cache.cached_count() == 2  # both convs on the Winograd kernel
        torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)
    _weight_cache.clear()


@pytest.mark.parametrize("seed", range(40))
def test_random_configurations(seed):
    """Random sizes, paddings (0..2 per side), channel counts, residual/ReLU and out layouts through
    the public op on the cpu backend (which picks the Winograd kernel for every one of them)."""
    import random

    rng = random.Random(seed)
    n, c, k = rng.randint(1, 3), rng.randint(16, 40), rng.randint(16, 40)
    padding = [rng.randint(0, 2) for _ in range(4)]
    h = rng.randint(max(1, 3 - padding[0] - padding[1]), 13)
    w = rng.randint(max(1, 3 - padding[2] - padding[3]), 13)
    x, weight, bias, residual = _inputs(n, c, h, w, k, padding, seed=seed)
    assert conv_mod.use_winograd(x, weight, [1, 1], [1, 1], 1)
    residual = residual if rng.random() < 0.5 else None
    if residual is not None and rng.random() < 0.5:
        residual = residual.contiguous(memory_format=CL)
    relu = rng.random() < 0.7
    ref = _ref(x, weight, bias, residual, padding, relu)
    out = torch.full(tuple(ref.shape), float("nan"))
    out = out.contiguous(memory_format=CL) if rng.random() < 0.5 else out
    if padding[0] == padding[1] and padding[2] == padding[3]:
        with fastconv.use_backend("cpu"):
            y = fastconv.conv2d_relu(x, weight, bias, 1, (padding[0], padding[2]), residual=residual, relu=relu,
                                     out=out)
    else:  # asymmetric: the private op (the public one takes symmetric or 'same' padding)
        torch.ops.fastconv._conv2d_winograd_cpu(x, conv_mod.make_winograd_weight(weight, 2 + 2 * (seed % 2)), bias,
                                                residual, padding, relu, out)
        y = out
    assert_close_rel(y, ref, torch.float32, f"seed {seed}: {n}x{c}x{h}x{w} -> {k}, padding {padding}")
