"""The "torch" tactic (PyTorch's kernel + fastconv's fusion, a candidate of ``auto``) against the
same oracles as fastconv's own kernels, on every op, layout, dtype and out-slice case those cover."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import fastconv
from tests.ops import test_conv1x1 as c1
from tests.ops import test_conv2d_relu_cpu as c3
from tests.ops import test_max_pool2d as mp
from fastconv.ops import _torch_tactic
from tests import utils as tests_utils
from tests.utils import to_layout


@pytest.mark.parametrize("i", range(c3.N_CASES))
def test_conv2d_relu_random_configs(i, monkeypatch):
    c3.run_case("torch", c3.make_case(i), monkeypatch)


@pytest.mark.parametrize("seed", range(120))
def test_conv1x1_random_configurations(seed):
    c1.check_case(c1.random_case(seed), "torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout,out_layout", [("nchw", "nchw"), ("nhwc", "nhwc"), ("prefix_nhwc", "nchw"),
                                               ("prefix_nchw", "nhwc")])
@pytest.mark.parametrize("prologue", ["both_relu", "none"])
def test_conv1x1_multi(dtype, layout, out_layout, prologue):
    c1.check_multi("torch", dtype, layout, out_layout, prologue=prologue)


def test_conv1x1_multi_concatenated_strided():
    c1.check_multi("torch", torch.float32, "nchw", "nhwc", stride=2, concatenated=True, prologue="scale")


def test_max_pool2d_random_configurations_bit_exact():
    rng = random.Random(1234)
    with fastconv.use_backend("torch"):
        for i in range(150):
            mp.run_case(mp.random_case(rng), rng, use_out=i % 3 == 0)


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_max_pool2d_out_into_channel_slice(nhwc, dtype):
    x = torch.randn(2, 6, 11, 11).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
    buf = torch.full((2, 10, 6, 6), mp.SENTINEL, dtype=dtype)
    buf = buf.contiguous(memory_format=torch.channels_last) if nhwc else buf
    with fastconv.use_backend("torch"):
        fastconv.max_pool2d(x, 3, 2, 1, out=buf[:, 3:9])
    mp.assert_pool_equal(buf[:, 3:9], F.max_pool2d(x, 3, 2, 1))
    assert (torch.cat([buf[:, :3], buf[:, 9:]], 1) == mp.SENTINEL).all()


@pytest.mark.parametrize("seed", range(8))
def test_dense_concat_copy(seed):
    rng = torch.Generator().manual_seed(seed)
    pyrng = random.Random(seed)
    dtype = [torch.float32, torch.float16, torch.bfloat16, torch.float64][seed % 4]
    channels = [pyrng.randint(1, 7) for _ in range(pyrng.randint(1, 4))]
    n, h, w = pyrng.randint(1, 3), pyrng.randint(1, 6), pyrng.randint(1, 6)
    feats = [to_layout(torch.randn(n, c, h, w, generator=rng).to(dtype), pyrng.choice(["nchw", "nhwc", "strided"]))
             for c in channels]
    total = sum(channels)
    buf = torch.full((n, total + 3, h, w), float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last)
    with fastconv.use_backend("torch"):
        assert torch.equal(fastconv.dense_concat(feats), torch.cat(feats, 1))
        fastconv.dense_concat(feats, out=buf[:, 2:2 + total])
    assert torch.equal(buf[:, 2:2 + total], torch.cat(feats, 1))
    assert buf[:, :2].isnan().all() and buf[:, 2 + total:].isnan().all()


def _bf16_kernel_on(monkeypatch):
    """Run bfloat16 convs on oneDNN's bfloat16 kernel (skip where torch/the CPU has none)."""
    if not (_torch_tactic.ONEDNN_POINTWISE and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("oneDNN's bfloat16 conv needs torch >= 2.7 with oneDNN on an AVX-512 (or newer) CPU")
    monkeypatch.setattr(_torch_tactic, "NATIVE_BF16", True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_propagates_nan(dtype, monkeypatch):
    if dtype == torch.bfloat16:
        _bf16_kernel_on(monkeypatch)
    x = torch.randn(1, 2, 5, 5).to(dtype)
    x[0, 0, 2, 2] = float("nan")
    with fastconv.use_backend("torch"):
        y = fastconv.conv2d_relu(x, torch.randn(3, 2, 3, 3).to(dtype), padding=1)
    assert torch.isnan(y[0, :, 1:4, 1:4]).all()


# Calls some torch release's oneDNN refused or crashed on (benchmarks/RESULTS.md, "torch versions"):
# (x shape, channels_last x, weight shape, padding, stride, residual's strides: None = x's format)
ONEDNN_EDGE_CASES = {
    # torch 2.11, "could not create a memory": a residual post-op with one output channel
    "one_output_channel": ((2, 5, 7, 6), True, (1, 5, 3, 3), 1, 1, "nchw"),
    # 2.11: a [1, C, 1, 1] input/residual with channels_last strides (ResNet-18 layer4 at 32x32);
    # 2.6 to 2.11: a residual and a 1x1 output with a prepacked weight, or (2.11) a channels_last input
    "size1_dims_with_odd_strides": ((1, 16, 1, 1), "odd", (16, 16, 3, 3), 1, 1, "odd"),
    "one_pixel_output_of_a_3x3_input": ((2, 32, 3, 3), True, (32, 32, 3, 3), 0, 1, None),
    # 2.6, SIGSEGV: a channels_last input, a 1-wide kernel, width padding
    "one_wide_kernel_with_width_padding": ((1, 2, 9, 1), True, (3, 2, 3, 1), 2, 3, "nchw"),
}


def _strided(t: torch.Tensor, kind) -> torch.Tensor:
    if kind == "odd":  # channels_last strides on [1, C, 1, 1]: also NCHW-contiguous
        return t.as_strided(t.shape, (t.shape[1], 1, t.shape[1], t.shape[1]))
    return t.contiguous(memory_format=torch.channels_last if kind is True else torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prepack", ["1", "0"])
@pytest.mark.parametrize("case", list(ONEDNN_EDGE_CASES))
def test_onednn_edge_cases(case, prepack, dtype, monkeypatch):
    """The tactic steers around them (the residual added after the conv, restrided inputs, F.conv2d
    on older torch); on every torch the results match the float64 conv; bfloat16 on its kernel."""
    if dtype == torch.bfloat16:
        _bf16_kernel_on(monkeypatch)
    monkeypatch.setenv("FASTCONV_ONEDNN_PREPACK", prepack)
    x_shape, x_kind, w_shape, padding, stride, r_kind = ONEDNN_EDGE_CASES[case]
    g = torch.Generator().manual_seed(3)
    x = _strided(torch.randn(x_shape, generator=g).to(dtype), x_kind)
    w, b = torch.randn(w_shape, generator=g).to(dtype), torch.randn(w_shape[0], generator=g).to(dtype)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride, padding)
    r = _strided(torch.randn(ref.shape, generator=g).to(dtype), x_kind if r_kind is None else r_kind)
    with fastconv.use_backend("torch"):
        y = fastconv.conv2d_relu(x, w, b, stride, padding, residual=r)
    assert y.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.double(), torch.relu(ref + r.double()), rtol=tol, atol=tol)


def _one_channel_input(kind, shape, gen, dtype):
    """One-input-channel x of ``shape`` laid out as ``kind``: "nchw"; "cl_strides", dense with
    channels_last strides [HW, 1, W, 1] (a channels_last copy of a channel slice); "slice_nhwc",
    a channel slice of a channels_last buffer."""
    if kind == "nchw":
        return torch.randn(shape, generator=gen).to(dtype)
    big = torch.randn(shape[0], 3, *shape[2:], generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    x = big[:, 1:2]
    if kind == "cl_strides":
        x = x.contiguous(memory_format=torch.channels_last)
        assert x.stride() == (shape[2] * shape[3], 1, shape[3], 1)
    return x


# Found by fuzzing the `torch` tactic: (x layout, x shape, weight shape, bias, stride, padding,
# dilation, groups, dtype). Without the tactic's guards: wrong values, silently, or a segfault.
ONEDNN_FUZZ_CASES = {
    # wrong values (torch 2.7 to 2.15): one input channel, a 1-wide output, a width stride; oneDNN's
    # op with a prepacked weight (2.14) or any weight (2.7 to 2.11)...
    "one_input_channel": ("nchw", (2, 1, 3, 2), (1, 1, 2, 4), False, (1, 2), (0, 1), (1, 1), 1, torch.float32),
    # ... and eager F.conv2d too when the input has channels_last strides, or is a view it copies so
    "one_input_channel_cl_strides": ("cl_strides", (2, 1, 9, 5), (2, 1, 3, 4), False, (1, 3), (0, 0), (1, 1), 1,
                                     torch.float32),
    "one_input_channel_slice": ("slice_nhwc", (1, 1, 9, 6), (3, 1, 3, 4), False, (1, 3), (1, 0), (2, 1), 1,
                                torch.float32),
    "one_input_channel_bf16": ("cl_strides", (1, 1, 8, 4), (1, 1, 4, 4), True, (1, 3), (0, 0), (1, 1), 1,
                               torch.bfloat16),
    # SIGSEGV in eager F.conv2d on torch 2.6 (the tactic's path there): narrow padded channels_last inputs
    "narrow_padded_input_1_tap": ("nhwc", (2, 3, 8, 1), (2, 3, 3, 1), True, (2, 2), (1, 1), (1, 1), 1, torch.float32),
    "narrow_padded_input_2_taps": ("nhwc", (2, 3, 8, 1), (2, 3, 4, 2), True, (3, 3), (1, 2), (1, 1), 1, torch.bfloat16),
    # SIGSEGV (eager F.conv2d as well): a dilation along a 1-tap kernel dimension
    "dilated_one_tap_kernel": ("nhwc", (2, 3, 2, 1), (9, 1, 1, 1), True, (2, 3), (0, 2), (1, 2), 3, torch.float32),
    # SIGSEGV in oneDNN's float32 op (prepacked weight, or a channels_last input), as in bfloat16:
    # some output windows read only padding, with a bias (eager F.conv2d too on channels_last)
    "dead_windows_fp32": ("nchw", (2, 3, 5, 1), (1, 3, 1, 3), True, (5, 6), (5, 5), (1, 2), 1, torch.float32),
    "dead_windows_fp32_nhwc": ("nhwc", (2, 16, 6, 1), (2, 16, 1, 2), True, (3, 4), (1, 6), (1, 3), 1, torch.float32),
}


@pytest.mark.parametrize("prepack", ["1", "0"])
@pytest.mark.parametrize("case", list(ONEDNN_FUZZ_CASES))
def test_onednn_fuzz_cases(case, prepack, monkeypatch):
    monkeypatch.setenv("FASTCONV_ONEDNN_PREPACK", prepack)
    kind, x_shape, w_shape, bias, stride, padding, dilation, groups, dtype = ONEDNN_FUZZ_CASES[case]
    g = torch.Generator().manual_seed(5)
    if x_shape[1] == 1:
        x = _one_channel_input(kind, x_shape, g, dtype)
    else:
        x = _strided(torch.randn(x_shape, generator=g), kind == "nhwc").to(dtype)
    w = torch.randn(w_shape, generator=g).to(dtype)
    b = torch.randn(w_shape[0], generator=g).to(dtype) if bias else None
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation, groups)
    with fastconv.use_backend("torch"):
        y = fastconv.conv2d_relu(x, w, b, stride, padding, dilation, groups, relu=False)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)


def test_older_torch_takes_f_conv2d(monkeypatch):
    """On torch 2.6 the tactic does not call mkldnn::_convolution_pointwise (it crashes there):
    forced here, the F.conv2d path computes the same as the fp64 reference on random configs."""
    from fastconv.ops import _torch_tactic

    monkeypatch.setattr(_torch_tactic, "ONEDNN_POINTWISE", False)
    calls = []
    monkeypatch.setattr(_torch_tactic, "_POINTWISE", lambda *a: calls.append(a))
    monkeypatch.setattr(_torch_tactic, "_POINTWISE_BINARY", lambda *a: calls.append(a))
    for i in range(0, c3.N_CASES, 7):
        c3.run_case("torch", c3.make_case(i), monkeypatch)
    for case in ONEDNN_EDGE_CASES:
        test_onednn_edge_cases(case, "1", torch.float32, monkeypatch)
    for case in ONEDNN_FUZZ_CASES:
        test_onednn_fuzz_cases(case, "1", monkeypatch)
    assert not calls


# ---------------------------------------------------------------------------------------------
# bfloat16 on oneDNN's own bfloat16 kernel (NATIVE_BF16: a CPU with AVX512-BF16 or AMX)

def _spy_onednn_dtypes(monkeypatch):
    """Record the input dtype of every oneDNN conv call (both forms), still calling the real op."""
    seen = []
    for name in ("_POINTWISE", "_POINTWISE_BINARY"):
        def spy(x, *args, op=getattr(_torch_tactic, name)):
            seen.append(x.dtype)
            return op(x, *args)

        monkeypatch.setattr(_torch_tactic, name, spy)
    return seen


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("i", range(0, c3.N_CASES, 2))
def test_bf16_conv2d_relu_random_configs(i, native, monkeypatch):
    """Every other random conv2d_relu config in bfloat16 (slices, strides, groups, residuals,
    out= slices of poisoned buffers), on oneDNN's bfloat16 kernel and computed in float32, against
    the float64 reference of the rounded inputs; the spy shows which path ran."""
    _bf16_kernel_on(monkeypatch)
    monkeypatch.setattr(_torch_tactic, "NATIVE_BF16", native)
    seen = _spy_onednn_dtypes(monkeypatch)
    case = dict(c3.make_case(i), dtype=torch.bfloat16)
    c3.run_case("torch", case, monkeypatch)
    # a residual added after the conv (one output channel, a 1x1 output) needs it in float32
    out_hw = c3.out_hw(case["h"], case["w"], case["kernel"], case["stride"], case["dilation"], case["p4"])
    residual_after = case["residual"] and (case["co"] == 1 or tuple(out_hw) == (1, 1))
    if seen:
        assert set(seen) == {torch.bfloat16 if native and not residual_after else torch.float32}, seen
    if native and case["n"] > 0 and case["c"] > 1 and not residual_after:
        assert seen, "oneDNN's bfloat16 conv was not called"


@pytest.mark.parametrize("seed", range(0, 120, 2))
def test_bf16_conv1x1_random_configurations(seed, monkeypatch):
    """The 1x1 path (prologue computed in float32, rounded once to the conv's bfloat16 operand)."""
    _bf16_kernel_on(monkeypatch)
    c1.check_case(c1.random_case(seed, torch.bfloat16), "torch")


@pytest.mark.parametrize("layout,out_layout", [("nchw", "nchw"), ("nhwc", "nhwc"), ("prefix_nhwc", "nchw")])
@pytest.mark.parametrize("prologue", ["both_relu", "none"])
def test_bf16_conv1x1_multi(layout, out_layout, prologue, monkeypatch):
    _bf16_kernel_on(monkeypatch)
    seen = _spy_onednn_dtypes(monkeypatch)
    c1.check_multi("torch", torch.bfloat16, layout, out_layout, prologue=prologue)
    assert seen and set(seen) == {torch.bfloat16}, seen


# oneDNN's conv goes wrong on these (torch 2.7 to 2.15; eager F.conv2d as well): (dtype, x shape,
# channels_last x, weight shape, stride, padding, dilation, groups). The tactic rewrites the bfloat16
# ones (_steer_onednn) and sends the float32 ones to F.conv2d's NCHW path; each fails without that.
ONEDNN_STEERED_CASES = {
    # bfloat16, wrong values (any layout, prepacked or not): a one-wide output with a width stride >= 2
    "bf16_one_wide_output_width_stride": (torch.bfloat16, (1, 8, 10, 3), True, (4, 2, 3, 3), (1, 3), (1, 1), (1, 1), 4),
    "bf16_one_wide_output_dilated": (torch.bfloat16, (3, 3, 10, 6), True, (48, 3, 4, 4), (2, 2), (1, 1), (1, 2), 1),
    # bfloat16, wrong values: more padding than a "same" conv has
    "bf16_over_padded": (torch.bfloat16, (3, 96, 11, 10), False, (24, 96, 1, 2), (2, 1), (0, 2), (1, 2), 1),
    "bf16_over_padded_strided": (torch.bfloat16, (1, 24, 16, 7), True, (64, 24, 1, 2), (3, 2), (0, 2), (2, 2), 1),
    # bfloat16, SIGSEGV: outputs that read only padding (rows -1 and 1 of a one-row input)
    "bf16_output_reads_only_padding": (torch.bfloat16, (2, 3, 1, 7), False, (16, 3, 2, 2), (2, 1), (1, 2), (2, 2), 1),
    # float32, wrong values: a one-wide output with a width stride >= 2, many input channels (about 1
    # in 1000 such convs), with a channels_last input (prepacked or not) or a prepacked weight
    "fp32_one_wide_output_channels_last": (torch.float32, (2, 160, 19, 2), True, (10, 160, 1, 2), (3, 2), (0, 0),
                                           (1, 1), 1),
    "fp32_one_wide_output_nchw": (torch.float32, (2, 128, 19, 2), False, (5, 128, 1, 2), (2, 2), (0, 0), (1, 1), 1),
    # float32, wrong values: one output channel, the kernel covering the input (1 in 4 such convs)
    "fp32_one_output_channel_whole_input_kernel": (torch.float32, (2, 4, 9, 9), False, (1, 4, 9, 9), (1, 1),
                                                   (0, 0), (1, 1), 1),
    "fp32_one_output_channel_whole_input_kernel_cl": (torch.float32, (2, 3, 11, 11), True, (1, 3, 11, 11), (1, 1),
                                                      (0, 0), (1, 1), 1),
}


@pytest.mark.parametrize("prepack", ["1", "0"])
@pytest.mark.parametrize("case", list(ONEDNN_STEERED_CASES))
def test_onednn_steered_cases(case, prepack, monkeypatch):
    dtype, x_shape, cl, w_shape, stride, padding, dilation, groups = ONEDNN_STEERED_CASES[case]
    if not _torch_tactic.ONEDNN_POINTWISE:
        pytest.skip("torch < 2.7: the tactic does not call oneDNN's op")
    if dtype == torch.bfloat16:
        _bf16_kernel_on(monkeypatch)
    monkeypatch.setenv("FASTCONV_ONEDNN_PREPACK", prepack)
    seen = _spy_onednn_dtypes(monkeypatch)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(x_shape, generator=g).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last) if cl else x
    w = torch.randn(w_shape, generator=g).to(dtype)
    ref = F.conv2d(x.double(), w.double(), None, stride, padding, dilation, groups)
    with fastconv.use_backend("torch"):
        y = fastconv.conv2d_relu(x, w, None, stride, padding, dilation, groups, relu=False)
    assert seen == ([dtype] if dtype == torch.bfloat16 else [])
    tests_utils.assert_close_rel(y, ref, dtype, case)


@pytest.mark.parametrize("cout", [1, 4])
def test_bf16_residual_after_the_conv_rounds_once(cout, monkeypatch):
    """Where the residual cannot be a oneDNN post-op (one output channel, a 1x1 output) the sum is
    still rounded once: the residual cancels most of the conv, so rounding the conv to bfloat16
    first would leave an error of the conv's size (found by a probe: 2.4e-2 relative)."""
    _bf16_kernel_on(monkeypatch)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 3, 3, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, 16, 3, 3, generator=g).bfloat16()
    conv = F.conv2d(x.double(), w.double())
    r = (-conv + torch.randn(conv.shape, generator=g, dtype=torch.float64) * 0.01).bfloat16()
    with fastconv.use_backend("torch"):
        y = fastconv.conv2d_relu(x, w, None, relu=False, residual=r)
    exact = conv + r.double()
    assert (y.double() - exact).abs().max() <= exact.abs().max() * 2 ** -8


@pytest.mark.parametrize("seed", range(40))
def test_steer_onednn_computes_the_same_conv(seed):
    """_steer_onednn's rewrite (explicit padding, a one-wide output cut to its window at stride 1)
    is the same conv: checked in float64 with F.conv2d, and _has_dead_window against the definition."""
    rng = random.Random(seed)
    for _ in range(50):
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        stride, dilation = [rng.randint(1, 3), rng.randint(1, 3)], [rng.randint(1, 2), rng.randint(1, 2)]
        pad4 = [rng.randint(0, 3) for _ in range(4)]
        h = rng.randint(max(1, dilation[0] * (kh - 1) + 1 - pad4[0] - pad4[1]), 9)
        w = rng.randint(max(1, dilation[1] * (kw - 1) + 1 - pad4[2] - pad4[3]), 9)
        x = torch.randn(1, 2, h, w, dtype=torch.float64)
        wt = torch.randn(3, 2, kh, kw, dtype=torch.float64)
        ref = F.conv2d(F.pad(x, [pad4[2], pad4[3], pad4[0], pad4[1]]), wt, None, stride, 0, dilation)
        x2, p2, s2 = _torch_tactic._steer_onednn(x, wt, pad4, stride, dilation)
        y = F.conv2d(F.pad(x2, [p2[2], p2[3], p2[0], p2[1]]), wt, None, s2, 0, dilation)
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
        oh, ow = ref.shape[2:]
        for size, taps, st, lo, hi, dil, outs in ((h, kh, stride[0], pad4[0], pad4[1], dilation[0], oh),
                                                  (w, kw, stride[1], pad4[2], pad4[3], dilation[1], ow)):
            live = [any(0 <= o * st - lo + t * dil < size for t in range(taps)) for o in range(outs)]
            assert _torch_tactic._has_dead_window(size, taps, st, lo, hi, dil) == (not all(live))


def test_native_bf16_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not _torch_tactic._cpu_executes_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert _torch_tactic._cpu_executes_bf16()


def test_fastconv_onednn_bf16_0_computes_in_float32(monkeypatch):
    _bf16_kernel_on(monkeypatch)
    seen = _spy_onednn_dtypes(monkeypatch)
    x = torch.randn(2, 8, 6, 6).bfloat16()
    w = torch.randn(4, 8, 3, 3).bfloat16()
    ref = torch.relu(F.conv2d(x.double(), w.double(), padding=1))
    with fastconv.use_backend("torch"):
        tests_utils.assert_close_rel(fastconv.conv2d_relu(x, w, padding=1), ref, torch.bfloat16, "bf16 kernel")
        monkeypatch.setenv("FASTCONV_ONEDNN_BF16", "0")
        tests_utils.assert_close_rel(fastconv.conv2d_relu(x, w, padding=1), ref, torch.bfloat16, "in float32")
    assert seen == [torch.bfloat16, torch.float32]
