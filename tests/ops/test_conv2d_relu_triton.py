"""The Triton conv2d_relu kernel against an fp64 oracle.

Without a GPU the kernel runs under TRITON_INTERPRET=1 (set by conftest.py) on a fixed small
set of cases (DESIGN §6.1): fp32 and fp16 on every case, bf16 on a few (the interpreter's
bf16 tl.dot is wrong, so interpreted bf16 multiplies bf16 values in fp32: those cases check
indexing, bf16 loads and the bf16 store, not bf16 tensor-core math; the GPU tests do). Every
autotune config runs once. ``gpu`` tests run the same cases on CUDA against cuDNN.

The oracle is F.conv2d in float64 (which takes padding="same" itself), independent of
fastconv's argument normalization.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple, Union

import pytest
import torch
import torch.nn.functional as F

import fastconv
from tests.utils import REL_TOL, REL_TOL_TF32, assert_close_rel, rel_err, to_layout

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
triton_conv = pytest.importorskip("fastconv.ops.triton.conv2d_relu")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n: int
    c: int
    hw: Tuple[int, int]
    co: int
    k: Tuple[int, int]
    stride: Union[int, Tuple[int, int]] = 1
    padding: Union[int, Tuple[int, int], str] = 0
    dilation: Union[int, Tuple[int, int]] = 1
    groups: int = 1
    bias: bool = True
    residual: bool = False
    relu: bool = True
    layout: str = "nchw"          # of x (and residual): "nchw", "nhwc" or "strided"
    weight_layout: str = "nchw"   # "nhwc": channels_last weights (OHWI), as converted models store them
    residual_layout: Optional[str] = None  # default: x's layout


CASES = [
    Case("1x1", 2, 16, (5, 6), 24, (1, 1)),
    Case("3x3_resnet", 2, 8, (9, 9), 20, (3, 3), padding=1, residual=True),
    Case("5x5", 1, 4, (8, 7), 16, (5, 5), padding=2),
    Case("7x7s2_stem", 1, 3, (13, 13), 16, (7, 7), stride=2, padding=3),
    Case("11x11s4_alexnet", 1, 3, (23, 23), 16, (11, 11), stride=4, padding=2),
    Case("3x1", 2, 8, (7, 6), 16, (3, 1), padding=(1, 0)),
    Case("groups2", 2, 8, (6, 6), 12, (3, 3), padding=1, groups=2),
    Case("depthwise", 1, 8, (6, 7), 8, (3, 3), padding=1, groups=8),
    Case("dilation2", 1, 8, (9, 9), 16, (3, 3), padding=2, dilation=2),
    Case("asym_stride_pad", 2, 6, (9, 8), 16, (3, 3), stride=(2, 1), padding=(1, 2)),
    Case("same_even_kernel", 1, 5, (7, 8), 16, (4, 3), padding="same", dilation=(1, 2)),
    Case("channels_last", 2, 16, (7, 7), 32, (3, 3), padding=1, residual=True, layout="nhwc"),
    Case("channels_last_weights", 1, 16, (6, 6), 24, (3, 3), padding=1, layout="nhwc", weight_layout="nhwc"),
    Case("strided_view", 2, 8, (7, 6), 16, (3, 3), padding=1, layout="strided", residual=True),
    Case("residual_other_layout", 1, 8, (6, 6), 16, (3, 3), padding=1, residual=True, residual_layout="nhwc"),
    Case("no_relu_no_bias", 2, 8, (6, 6), 16, (3, 3), padding=1, bias=False, relu=False),
    Case("ragged_k_blocks", 1, 40, (5, 5), 24, (3, 3), padding=1, residual=True, relu=False),
    Case("ragged_m_n", 3, 8, (10, 11), 70, (3, 3), padding=1),
    Case("stride2_downsample", 2, 16, (9, 9), 32, (3, 3), stride=2, padding=1, layout="nhwc"),
]
BF16_CASES = {"3x3_resnet", "7x7s2_stem", "groups2", "channels_last", "strided_view"}


def _inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0):
    """Seeded random tensors (never zeros), cast to ``dtype`` and laid out as the case says."""
    gen = torch.Generator().manual_seed(seed)
    h, w = case.hw
    x = torch.randn(case.n, case.c, h, w, generator=gen)
    weight = torch.randn(case.co, case.c // case.groups, *case.k, generator=gen) / (case.c // case.groups * case.k[0] * case.k[1]) ** 0.5
    bias = torch.randn(case.co, generator=gen) if case.bias else None
    y0 = F.conv2d(x.double(), weight.double(), None, case.stride, case.padding, case.dilation, case.groups)
    residual = torch.randn(y0.shape, generator=gen) if case.residual else None

    def cast(t, layout):
        return None if t is None else to_layout(t.to(device=device, dtype=dtype), layout)

    return (cast(x, case.layout), cast(weight, case.weight_layout), cast(bias, "nchw"),
            cast(residual, case.residual_layout or case.layout))


def _oracle(case: Case, x, weight, bias, residual) -> torch.Tensor:
    """fp64 on the CPU, from the same (rounded) inputs the kernel sees."""
    d = lambda t: None if t is None else t.detach().double().cpu()  # noqa: E731
    y = F.conv2d(d(x), d(weight), d(bias), case.stride, case.padding, case.dilation, case.groups)
    if residual is not None:
        y = y + d(residual)
    return torch.relu(y) if case.relu else y


def _run(case: Case, x, weight, bias, residual, out=None):
    return fastconv.conv2d_relu(x, weight, bias, case.stride, case.padding, case.dilation, case.groups,
                                relu=case.relu, residual=residual, out=out)


def _check_case(case: Case, dtype: torch.dtype, device: str, tol: Optional[float] = None):
    x, weight, bias, residual = _inputs(case, dtype, device)
    with fastconv.use_backend("triton"):
        y = _run(case, x, weight, bias, residual)
    ref = _oracle(case, x, weight, bias, residual)
    assert y.dtype == dtype and y.device.type == device
    assert_close_rel(y, ref, dtype, case.name, tol=tol)
    if case.layout == "nhwc":  # the output keeps the input's memory format
        assert y.is_contiguous(memory_format=torch.channels_last)
    return x, weight, bias, residual, y


# ---------------------------------------------------------------------------------------------
# interpreted (CPU tensors)

cpu_only = pytest.mark.skipif(not INTERPRETED, reason="interpreted Triton runs only without a CUDA device")


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_interpreted(case, dtype):
    _check_case(case, dtype, "cpu")


@cpu_only
@pytest.mark.parametrize("case", [c for c in CASES if c.name in BF16_CASES], ids=sorted(BF16_CASES, key=[c.name for c in CASES].index))
def test_interpreted_bf16(case):
    _check_case(case, torch.bfloat16, "cpu")


OUT_CASE = Case("out_slice", 2, 8, (6, 7), 12, (3, 3), padding=1, residual=True)


@pytest.mark.parametrize("buffer_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_out_channel_slice(buffer_layout, dtype):
    """out= a channel slice of a NaN-poisoned buffer: the slice fully written, the rest untouched."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not INTERPRETED:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    case = OUT_CASE
    x, weight, bias, residual = _inputs(case, dtype, device)
    h, w = case.hw
    buf = to_layout(torch.full((case.n, 5 + case.co + 3, h, w), float("nan"), dtype=dtype, device=device), buffer_layout)
    view = buf[:, 5:5 + case.co]
    with fastconv.use_backend("triton"):
        ret = _run(case, x, weight, bias, residual, out=view)
    assert ret is view
    tol = REL_TOL_TF32 if (device == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32) else None
    assert_close_rel(view, _oracle(case, x, weight, bias, residual), dtype, f"out slice ({buffer_layout})", tol=tol)
    assert torch.isnan(buf[:, :5]).all() and torch.isnan(buf[:, 5 + case.co:]).all(), "wrote outside the out= slice"


@cpu_only
def test_zero_batch():
    case = Case("zero_batch", 0, 8, (6, 6), 16, (3, 3), padding=1, residual=True)
    x, weight, bias, residual = _inputs(case, torch.float32, "cpu")
    with fastconv.use_backend("triton"):
        y = _run(case, x, weight, bias, residual)
        assert y.shape == (0, 16, 6, 6)
        out = torch.empty(0, 16, 6, 6)
        # the launcher itself must accept an empty problem too (the public op skips it)
        triton_conv.conv2d_relu(x, weight, bias, residual, [1, 1], [1, 1, 1, 1], [1, 1], 1, True, out)


def test_float64_rejected():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    weight = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    out = torch.empty(1, 8, 3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="backend 'triton'.*float64"):
        triton_conv.conv2d_relu(x, weight, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True, out)


@pytest.mark.parametrize("op", ["conv2d_relu", "conv1x1", "max_pool2d"])
def test_float64_rejected_by_every_triton_op(op):
    """conv1x1 had no dtype check: tl.dot on float64 operands returned garbage (6.9e-310)."""
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    call = {"conv2d_relu": lambda: fastconv.conv2d_relu(x, torch.randn(8, 4, 3, 3, dtype=torch.float64)),
            "conv1x1": lambda: fastconv.conv1x1(x, torch.randn(8, 4, dtype=torch.float64)),
            "max_pool2d": lambda: fastconv.max_pool2d(x, 2)}[op]
    with fastconv.use_backend("triton"), pytest.raises(TypeError, match="backend 'triton' supports .*float64"):
        call()


def test_int32_offsets_rejected_before_launch():
    """A sample spanning more than 2**31 elements is refused with a RuntimeError (meta tensors:
    the check must fire before anything is allocated or launched)."""
    x = torch.empty(1, 3, 40000, 20000, device="meta")
    weight = torch.empty(8, 3, 3, 3, device="meta")
    out = torch.empty(1, 8, 39998, 19998, device="meta")
    with pytest.raises(RuntimeError, match="int32 .x, out per sample exceed .* Use another backend"):
        triton_conv.conv2d_relu(x, weight, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True, out)


CONFIG_CASE = Case("every_config", 2, 20, (9, 9), 40, (3, 3), padding=1, residual=True, layout="nhwc")


@cpu_only
@pytest.mark.parametrize("index", range(len(triton_conv.CONFIGS)),
                         ids=[triton_conv.config_name(c) for c in triton_conv.CONFIGS])
def test_every_config(index, monkeypatch):
    """Each autotune config once, on a shape with ragged M, N and K tiles for most configs."""
    monkeypatch.setenv("FASTCONV_TRITON_CONFIG", str(index))
    assert triton_conv.interpreter_config() is triton_conv.CONFIGS[index]
    _check_case(CONFIG_CASE, torch.float32, "cpu")


@cpu_only
@pytest.mark.parametrize("raw", ["past-the-end", "-1", "two"])
@pytest.mark.parametrize("op", ["conv2d_relu", "conv1x1", "max_pool2d"])
def test_bad_config_index(monkeypatch, raw, op):
    """Every Triton op reads FASTCONV_TRITON_CONFIG the same way (conv1x1 and max_pool2d raised a
    bare IndexError, and -1 quietly ran the last config)."""
    import importlib

    configs = importlib.import_module(f"fastconv.ops.triton.{op}").CONFIGS
    monkeypatch.setenv("FASTCONV_TRITON_CONFIG", str(len(configs)) if raw == "past-the-end" else raw)
    x = torch.randn(1, 16, 6, 6)
    call = {"conv2d_relu": lambda: fastconv.conv2d_relu(x, torch.randn(16, 16, 3, 3)),
            "conv1x1": lambda: fastconv.conv1x1(x, torch.randn(16, 16)),
            "max_pool2d": lambda: fastconv.max_pool2d(x, 3, 2)}[op]
    with fastconv.use_backend("triton"), \
            pytest.raises(ValueError, match=r"FASTCONV_TRITON_CONFIG=.*expected an index into the \d+ configs"):
        call()


def test_configs_fit_every_dtype():
    """Every config keeps fp32 operand stages within sm_80's shared memory and uses tl.dot-legal blocks."""
    for cfg in triton_conv.CONFIGS:
        k = cfg.kwargs
        assert min(k["BLOCK_M"], k["BLOCK_N"], k["BLOCK_K"]) >= 16
        assert (k["BLOCK_M"] + k["BLOCK_N"]) * k["BLOCK_K"] * 4 * cfg.num_stages <= 166912, triton_conv.config_name(cfg)


# ---------------------------------------------------------------------------------------------
# on a GPU: the same cases, every dtype, against cuDNN and the fp64 oracle

GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gpu_against_cudnn(case, dtype):
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    tol = REL_TOL_TF32 if tf32 else REL_TOL[dtype]
    x, weight, bias, residual, y = _check_case(case, dtype, "cuda", tol=tol)
    cudnn = F.conv2d(x, weight, bias, case.stride, case.padding, case.dilation, case.groups)
    if residual is not None:
        cudnn = cudnn + residual
    cudnn = torch.relu(cudnn) if case.relu else cudnn
    ref = _oracle(case, x, weight, bias, residual)
    # no worse than cuDNN in the same dtype, beyond the dtype's tolerance
    assert rel_err(y, ref) <= max(tol, 2 * rel_err(cudnn, ref)), case.name


FLAT_CONFIGS = [i for i, c in enumerate(triton_conv.CONFIGS) if c.kwargs["FLAT_K"]]


@cpu_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_interpreted_flat_k(case, dtype, monkeypatch):
    """The flattened-K loop (the few-channel configs) on every case: its (kh, kw, c) split, the
    2-D padding mask, groups, dilation, strides and every layout."""
    monkeypatch.setenv("FASTCONV_TRITON_CONFIG", str(FLAT_CONFIGS[0]))
    _check_case(case, dtype, "cpu")


def test_flat_k_configs_timed_only_for_few_channels():
    """The autotuner's pruning: FLAT_K configs join the timed set below FLAT_K_BELOW input
    channels per group (where the channel-block loop pads K the most) and never replace the rest."""
    flat = {id(c) for c in triton_conv.CONFIGS if c.kwargs["FLAT_K"]}
    assert flat and len(flat) < len(triton_conv.CONFIGS)
    for cin_g, want_flat in [(1, True), (3, True), (triton_conv.FLAT_K_BELOW - 1, True),
                             (triton_conv.FLAT_K_BELOW, False), (64, False)]:
        kept = triton_conv._prune(triton_conv.CONFIGS, {"CIN_G": cin_g})
        assert any(id(c) in flat for c in kept) == want_flat, cin_g
        assert [c for c in kept if id(c) not in flat] == [c for c in triton_conv.CONFIGS if id(c) not in flat]



FLAT_PINNED_CASES = ["7x7s2_stem", "11x11s4_alexnet", "asym_stride_pad", "depthwise", "residual_other_layout"]


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("index", FLAT_CONFIGS, ids=[triton_conv.config_name(triton_conv.CONFIGS[i]) for i in FLAT_CONFIGS])
def test_flat_k_config_pinned(index, dtype):
    """Each FLAT_K config launched directly through the launcher's ``config=`` (on a GPU the
    autotuner would pick one only where it is fastest) on the few-channel cases, into a
    NaN-poisoned out, against the fp64 oracle. Interpreted without a GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not INTERPRETED:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    cfg = triton_conv.CONFIGS[index]
    tf32 = device == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    for name in FLAT_PINNED_CASES:
        case = next(c for c in CASES if c.name == name)
        x, weight, bias, residual = _inputs(case, dtype, device)
        ref = _oracle(case, x, weight, bias, residual)
        ph, pw = _pair(case.padding)
        out = torch.full(ref.shape, float("nan"), dtype=dtype, device=device)
        triton_conv.conv2d_relu(x, weight, bias, residual, _pair(case.stride), [ph, ph, pw, pw],
                                _pair(case.dilation), case.groups, case.relu, out, config=cfg)
        assert_close_rel(out, ref, dtype, f"{name} {triton_conv.config_name(cfg)}", tol=REL_TOL_TF32 if tf32 else None)
