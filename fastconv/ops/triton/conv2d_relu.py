"""Triton implicit-GEMM ``relu(conv2d(x, w) + bias + residual)`` (DESIGN §3, §4).

GEMM view: M = N·OH·OW output pixels (rows), N_gemm = C_out/groups output channels (columns),
K = C_in/groups·KH·KW, one grid axis per group. The K loop walks (kh, kw) outer and blocks of
input channels inner, so an NHWC input is read in contiguous channel runs and the per-element
addresses need no division: the only div/mod per element happens once, before the loop, to
split the row index into (n, oh, ow). With few input channels per group (the 3-channel stems)
that loop pads each tap's channels to BLOCK_K; the FLAT_K configs walk the flattened
(kh, kw, c) reduction instead, gathering the x tile, and the autotuner times both kinds on such
convs (``_prune``). Every tensor is addressed through its element strides,
so NCHW, channels_last and channel-slice views of larger buffers work without copies.

Indexing: the per-sample base offset (n · stride_n) is computed in int64, everything inside
one sample in int32; the launcher rejects, with a RuntimeError before launch, tensors whose
in-sample offsets (or weight offsets, or N·OH·OW) do not fit in int32.

Fast path on a GPU: NHWC activations/residual/out and channel counts that are multiples of 8,
so the JIT's specialization (unit channel strides, 16-divisible strides) vectorizes and
pipelines the loads; that is what compile_specs() compiles and the compile test checks. NCHW
stays correct but its per-element scattered addresses cost registers (ptxas spills for the
large tiles with an NCHW output: see benchmarks/RESULTS_triton_compile.md).

float64 is rejected (TypeError): tl.dot has no fp64 path on NVIDIA GPUs; the `cpu` and
`reference` backends compute float64.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Dict, List

import torch
import triton
import triton.language as tl

from ..._backend import triton_interpreted as _interpreted
from . import cudnn_conv_tf32, pick_interpreter_config

OP = "conv2d_relu"

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Shared memory per stage is
# (BLOCK_M + BLOCK_N) · BLOCK_K · elem_size; every config keeps fp32 operands within sm_80's
# 163 KiB (the compile test checks), so all configs stay valid for every dtype on both cards.
# CONFIGS[0] is also the interpreter's default: medium tiles keep interpreted tests fast.
# FLAT_K selects the K loop (see the kernel): False walks (kh, kw) taps × channel blocks, True
# walks the flattened (kh, kw, c) reduction, for few input channels per group.
_CHANNEL_BLOCKS: List[triton.Config] = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    # 128x128 tiles need 8 warps: with 4, the fp32 accumulator (128 regs/thread) plus the
    # epilogue's residual tile spill (ptxas, sm_80 and sm_90, every dtype).
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    # BLOCK_K=64 with 4 warps spills for tf32 on sm_80 (operands held in registers for mma.sync)
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    # narrow output channels (C_out/groups ≤ 32: grouped convs, small layers)
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    # tiny channel counts (3-channel stems, depthwise-like groups): little K padding waste
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_K": 16}, num_warps=2, num_stages=2),
]
# Flattened-K tiles for the few-channel convs (the 3-channel stems: 64 output channels, one
# BLOCK_N=64 column of tiles, so each x tile is gathered once). K = KH·KW·C_in/groups is padded
# to BLOCK_K once instead of C_in/groups to BLOCK_K per tap: a 7×7 stem runs 5 dots of K=32
# (160 of 147 useful, 8% padding) instead of 49 dots of K=16 (3 of 16 useful, 81% padding); an
# 11×11 stem 6 dots of K=64 (6% padding). The gathered x tile is not 16-byte contiguous, so
# Triton cannot pipeline it with cp.async (num_stages has no effect) and its per-element
# addresses and masks take registers: 4-warp 128-row tiles spill (ptxas), these do not.
_FLAT: List[triton.Config] = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=2),
    # narrow output channels per group (grouped convs with few channels)
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=2),
]
# Below this many input channels per group the autotuner also times the FLAT_K configs: there the
# channel-block loop pads K by more than half (BLOCK_K >= 16). Above it they would only add tuning
# time (12 configs to time instead of 8 on the first call of each shape).
FLAT_K_BELOW = 8
CONFIGS: List[triton.Config] = (
    [triton.Config({**c.kwargs, "FLAT_K": False}, num_warps=c.num_warps, num_stages=c.num_stages) for c in _CHANNEL_BLOCKS]
    + [triton.Config({**c.kwargs, "FLAT_K": True}, num_warps=c.num_warps, num_stages=c.num_stages) for c in _FLAT]
)

_INT32_MAX = 2**31 - 1
_DOT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def conv2d_relu_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr,
    M, H, W, OH, OW, CIN_G, COUT_G, KH, KW,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    sb,
    srn, src, srh, srw,
    syn, syc, syh, syw,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FLAT_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # output pixels
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # output channels within the group
    ks = tl.arange(0, BLOCK_K)
    row_ok = rows < M
    col_ok = cols < COUT_G

    # The only per-element div/mod: row -> (n, oh, ow), once per program.
    ow = rows % OW
    t = rows // OW
    oh = t % OH
    n = (t // OH).to(tl.int64)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w

    x_rows = x_ptr + n * sxn + group * CIN_G * sxc          # [BLOCK_M] sample bases (int64)
    w_cols = w_ptr + (group * COUT_G + cols) * swo          # [BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_K:
        # One loop over the flattened reduction k = (kh·KW + kw)·CIN_G + c, channels fastest (the
        # order of an OHWI weight row; with an NHWC x each kh row of taps is one contiguous run per
        # pixel when stride and dilation are 1). The k -> (kh, kw, c) split is per k, not per
        # element; the x tile is a 2-D gather with its own bounds mask.
        k_total = KH * KW * CIN_G
        x_pix = x_rows + ih0 * sxh + iw0 * sxw              # [BLOCK_M] each pixel's window corner
        for k0 in range(0, k_total, BLOCK_K):
            kk = k0 + ks
            k_ok = kk < k_total
            c = kk % CIN_G
            tap = kk // CIN_G
            kh = tap // KW
            dh = kh * dil_h
            dw = (tap - kh * KW) * dil_w
            ih = ih0[:, None] + dh[None, :]
            iw = iw0[:, None] + dw[None, :]
            # 0 <= ih < H and 0 <= iw < W, one unsigned compare each
            ok = (row_ok[:, None] & k_ok[None, :]) & (ih.to(tl.uint32) < H) & (iw.to(tl.uint32) < W)
            a = tl.load(x_pix[:, None] + (dh * sxh + dw * sxw + c * sxc)[None, :], mask=ok, other=0.0)
            b = tl.load(w_cols[None, :] + (c * swc + kh * swh + (tap - kh * KW) * sww)[:, None],
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if DOT_IN_FP32:  # interpreter only (see below)
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        # One flat loop over (kh, kw, channel block) rather than three nested ones, so the
        # software pipeliner (num_stages) overlaps loads across (kh, kw) boundaries too: with
        # few channels the inner channel loop alone would be 1–2 iterations long. The scalar
        # div/mod below is per iteration and per program, not per element.
        num_cb = tl.cdiv(CIN_G, BLOCK_K)
        for it in range(0, KH * KW * num_cb):
            tap = it // num_cb
            c0 = (it - tap * num_cb) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0 + kh * dil_h
            iw = iw0 + kw * dil_w
            # zero padding and ragged M edge: masked loads read 0
            pix_ok = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            cs = c0 + ks
            c_ok = cs < CIN_G
            a = tl.load(x_rows[:, None] + (ih * sxh + iw * sxw)[:, None] + cs[None, :] * sxc,
                        mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_cols[None, :] + cs[:, None] * swc + (kh * swh + kw * sww),
                        mask=c_ok[:, None] & col_ok[None, :], other=0.0)
            if DOT_IN_FP32:
                # Interpreter only: its bf16 tl.dot is wrong (numpy has no bf16), so multiply the
                # bf16 values exactly in fp32 instead. Never set for GPU launches.
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    # epilogue: bias, residual, ReLU in fp32, then one store in the output dtype
    channels = group * COUT_G + cols
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + channels * sb, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        r_offs = (n * srn + oh * srh + ow * srw)[:, None] + (channels * src)[None, :]
        acc += tl.load(r_ptr + r_offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    y_offs = (n * syn + oh * syh + ow * syw)[:, None] + (channels * syc)[None, :]
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


_AUTOTUNE_KEY = ["M", "CIN_G", "COUT_G", "KH", "KW", "stride_h", "stride_w", "sxc"]


# Autotuning benchmarks the kernel repeatedly on the real arguments; that is safe because
# `out` never overlaps an input (checked by the public op), so every run writes the same values.
# Built on first GPU use, not at import: triton 3.2's autotuner asks for the active GPU driver
# when it is made, which fails on a machine without one (the interpreter, the compile checks).
def _prune(configs, named_args, **_):
    """The configs worth timing for one key: the FLAT_K ones only for few channels per group."""
    few = named_args["CIN_G"] < FLAT_K_BELOW
    return [c for c in configs if few or not c.kwargs["FLAT_K"]]


@functools.lru_cache(maxsize=None)
def _autotuned():
    return triton.autotune(configs=CONFIGS, key=_AUTOTUNE_KEY,
                           prune_configs_by={"early_config_prune": _prune})(conv2d_relu_kernel)


def interpreter_config() -> triton.Config:
    """The single config interpreted runs use (DESIGN §6.1): CONFIGS[$FASTCONV_TRITON_CONFIG]."""
    return pick_interpreter_config(CONFIGS)


def _sample_span(t: torch.Tensor) -> int:
    """Largest element offset inside one sample (dims 1..3) of an NCHW-indexed tensor."""
    return sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]) if size > 0)


def _input_precision(x: torch.Tensor) -> str:
    # As PyTorch does for convs: tf32 for fp32 when cuDNN may use it. fp16/bf16 ignore it.
    if x.dtype == torch.float32 and x.is_cuda and not _interpreted() and cudnn_conv_tf32():
        return "tf32"
    return "ieee"


def conv2d_relu(x, weight, bias, residual, stride, padding, dilation, groups, relu, out, config=None) -> None:
    """Backend kernel: write relu?(conv2d(x, weight) + bias + residual) into ``out`` in place.

    Arguments are already validated and normalized by the public op (padding is
    [top, bottom, left, right]; the output shape is ``out``'s). ``config``: one of CONFIGS to
    launch instead of autotuning (tests run each config so); interpreted runs without one take
    ``interpreter_config()``.
    """
    if x.dtype not in _DOT_DTYPES:
        raise TypeError(
            f"fastconv.{OP}: backend 'triton' supports float16, bfloat16 and float32, got {x.dtype} "
            f"(tl.dot has no float64 path); use backend 'cpu' or 'reference' for float64"
        )
    n_batch, c_in, h, w = x.shape
    c_out, cin_g, kh, kw = weight.shape
    oh, ow = out.shape[2], out.shape[3]
    cout_g = c_out // groups
    m = n_batch * oh * ow
    if m == 0:
        return
    spans = {"x": _sample_span(x), "out": _sample_span(out), "weight": _sample_span(weight) + (c_out - 1) * weight.stride(0)}
    if residual is not None:
        spans["residual"] = _sample_span(residual)
    too_big = [name for name, span in spans.items() if span > _INT32_MAX]
    if m > _INT32_MAX - 256 or too_big:  # 256: the largest BLOCK_M, so row indices of the last tile fit too
        raise RuntimeError(
            f"fastconv.{OP}: backend 'triton' indexes in int32 ({', '.join(too_big) + ' per sample' if too_big else 'N*OH*OW output pixels in the batch'}"
            f" exceed 2**31-1 elements). Use {'another backend' if too_big else 'a smaller batch or another backend'}."
        )
    if groups > 65535:
        raise RuntimeError(f"fastconv.{OP}: backend 'triton' supports at most 65535 groups (a CUDA grid limit), got {groups}")

    if not _interpreted() and weight.stride(1) != 1 and cin_g > 1:
        # The B tile is read along input channels: with OIHW weights those reads are strided
        # (by KH·KW) and can't be vectorized or pipelined with cp.async, so repack to
        # channels_last (OHWI). Converted channels_last models already store weights that way.
        weight = weight.contiguous(memory_format=torch.channels_last)
    b_arg = bias if bias is not None else out          # never read when HAS_BIAS is False
    r_arg = residual if residual is not None else out  # never read when HAS_RESIDUAL is False
    rs = residual.stride() if residual is not None else (0, 0, 0, 0)
    args = (
        x, weight, b_arg, r_arg, out,
        m, h, w, oh, ow, cin_g, cout_g, kh, kw,
        *x.stride(), *weight.stride(),
        bias.stride(0) if bias is not None else 0,
        *rs, *out.stride(),
        stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1],
    )
    flags = dict(HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, RELU=bool(relu),
                 INPUT_PRECISION=_input_precision(x),
                 DOT_IN_FP32=_interpreted() and x.dtype == torch.bfloat16)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout_g, meta["BLOCK_N"]), groups)

    if _interpreted() or config is not None:
        cfg = config or interpreter_config()
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            conv2d_relu_kernel[grid](*args, **flags, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    with torch.cuda.device(x.device):
        _autotuned()[grid](*args, **flags)


# ---------------------------------------------------------------------------------------------
# compile specs for fastconv.ops.triton.compile_check (DESIGN §6.3)

_TRITON_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def config_name(cfg: triton.Config) -> str:
    k = cfg.kwargs
    flat = "_flatk" if k["FLAT_K"] else ""
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}_w{cfg.num_warps}_s{cfg.num_stages}{flat}"


# The fast path the JIT specializes at run time for channels_last activations and weights with
# channel counts that are multiples of 16: unit channel strides become constexpr 1 and
# the other strides and channel counts are known multiples of 16 (tt.divisibility), which lets
# Triton vectorize the loads to 16 bytes and pipeline them with cp.async / TMA-free wgmma.
_UNIT_STRIDES = ("sxc", "swc", "sb", "src", "syc")
_DIV16_INTS = ("CIN_G", "COUT_G", "sxn", "sxh", "sxw", "swo", "swh", "sww", "srn", "srh", "srw", "syn", "syh", "syw")
# The FLAT_K configs' case, a 3-channel stem: CIN_G, the x pixel stride and the weight strides
# are not multiples of 16 (NHWC x [N, 224, 224, 3]: sxw = 3; OHWI weight [64, 7, 7, 3]: swo = 147).
_DIV16_INTS_FLAT = tuple(n for n in _DIV16_INTS if n not in ("CIN_G", "sxh", "sxw", "swo", "swh", "sww"))


def compile_specs() -> List[Dict]:
    """Every config × dtype of the kernel, with the flags a ResNet block uses (bias, residual,
    ReLU), fp32 as it runs by default on a GPU (tf32), and the NHWC argument specialization
    above (a stem's for the FLAT_K configs). Pointers are 16-byte aligned, as torch allocations are."""
    fn = conv2d_relu_kernel
    specs = []
    for cfg in CONFIGS:
        for dtype, ptr in _TRITON_DTYPES.items():
            constexprs = dict(HAS_BIAS=True, HAS_RESIDUAL=True, RELU=True,
                              INPUT_PRECISION="tf32" if dtype == "fp32" else "ieee", DOT_IN_FP32=False,
                              **cfg.kwargs, **{name: 1 for name in _UNIT_STRIDES})
            signature = {}
            for name in fn.arg_names:
                if name in constexprs:
                    signature[name] = "constexpr"
                elif name.endswith("_ptr"):
                    signature[name] = ptr
                else:
                    signature[name] = "i32"
            div16 = _DIV16_INTS_FLAT if cfg.kwargs["FLAT_K"] else _DIV16_INTS
            aligned = [name for name in fn.arg_names if name.endswith("_ptr") or name in div16]
            attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
            specs.append(dict(
                kernel="conv2d_relu", config=config_name(cfg), dtype=dtype, fn=fn,
                signature=signature, constexprs=constexprs, attrs=attrs,
                options=dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                # warpgroup MMA needs 4-warp groups and 64-row tiles; smaller configs use mma.sync
                wgmma_eligible=cfg.num_warps % 4 == 0 and cfg.kwargs["BLOCK_M"] % 64 == 0,
            ))
    return specs
