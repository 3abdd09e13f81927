"""Triton kernel for fastconv.conv1x1: a GEMM over M = N·OH·OW output pixels, N = C_out, K = C_in.

Rows are addressed through x's explicit strides (times the spatial stride), so NCHW, channels_last,
channel-slice views and ResNet's stride-2 projection all read x in place. The prologue
relu?(x*in_scale+in_shift) runs on the loaded A tile in fp32 before the cast for tl.dot; the
epilogue adds bias and residual, applies ReLU and stores each column block into the output that
owns those channels (up to 3 outs per launch: GoogLeNet's grouped 1x1s), through that out's strides.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import triton
import triton.language as tl

from ..._backend import triton_interpreted as _interpreted
from . import cudnn_conv_tf32, pick_interpreter_config

# Tile shapes (tl.dot blocks >= 16; BLOCK_M >= 64 with 4-warp groups so that sm_90 gets wgmma;
# the large tiles keep BLOCK_K = 32 so fp32 (tf32) stages fit sm_80's 163 KiB of shared memory). On a GPU all of them are autotuned per shape; under
# TRITON_INTERPRET=1 the autotuner is bypassed and FASTCONV_TRITON_CONFIG picks one (default 0,
# the smallest, which keeps interpreted tests fast).
CONFIGS: List[Dict[str, int]] = [
    dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, GROUP_M=8, num_warps=4, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=32, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=32, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
]
MAX_OUTS = 3
_META = ("num_warps", "num_stages")


@triton.jit
def _conv1x1_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, scale_ptr, shift_ptr, o0_ptr, o1_ptr, o2_ptr,
    M, N, K, OHW, OW,
    sx_n, sx_c, sx_h, sx_w,  # x strides; sx_h, sx_w already multiplied by the spatial stride
    sw_n, sw_k,
    sr_n, sr_c, sr_h, sr_w,
    so0_n, so0_c, so0_h, so0_w,
    so1_n, so1_c, so1_h, so1_w,
    so2_n, so2_c, so2_h, so2_w,
    SPLIT1, SPLIT2,  # out0 owns columns [0, SPLIT1), out1 [SPLIT1, SPLIT2), out2 [SPLIT2, N)
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    IN_RELU: tl.constexpr, RELU: tl.constexpr, NUM_OUTS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped program order: GROUP_M row blocks share each weight column block while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = rm < M
    n_mask = rn < N
    # int32 addressing: int64 offset tiles of BLOCK_M x BLOCK_N elements need twice the registers
    # and spilled; the launcher rejects tensors whose offsets do not fit in int32
    img = rm // OHW
    pix = rm % OHW
    oh = pix // OW
    ow = pix % OW
    x_row = img * sx_n + oh * sx_h + ow * sx_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = rk < K
        a_mask = m_mask[:, None] & k_mask[None, :]
        a = tl.load(x_ptr + x_row[:, None] + rk[None, :] * sx_c, mask=a_mask, other=0.0)
        if (HAS_SCALE or HAS_SHIFT) or IN_RELU:  # grouped: triton 3.3 rejects a chain of three
            af = a.to(tl.float32)
            if HAS_SCALE:
                af = af * tl.load(scale_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)[None, :]
            if HAS_SHIFT:
                af = af + tl.load(shift_ptr + rk, mask=k_mask, other=0.0).to(tl.float32)[None, :]
            if IN_RELU:
                af = tl.maximum(af, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
            # columns k >= K may now hold relu(shift) != 0: harmless, their weight rows load as 0
            a = af.to(w_ptr.dtype.element_ty)
        b = tl.load(w_ptr + rn[None, :] * sw_n + rk[:, None] * sw_k,
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if DOT_IN_FP32:
            # Interpreter only: its bf16 tl.dot is wrong (numpy has no bf16), so multiply the
            # bf16 values exactly in fp32 instead. Never set for GPU launches.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        r_off = (img * sr_n + oh * sr_h + ow * sr_w)[:, None] + rn[None, :] * sr_c
        acc += tl.load(res_ptr + r_off, mask=m_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
    if RELU:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    y = acc.to(o0_ptr.dtype.element_ty)

    # one store per out: each column block goes to the tensor owning those channels
    hi0 = SPLIT1 if NUM_OUTS > 1 else N
    c0 = rn
    mask0 = m_mask[:, None] & (rn < hi0)[None, :]
    tl.store(o0_ptr + (img * so0_n + oh * so0_h + ow * so0_w)[:, None] + c0[None, :] * so0_c, y, mask=mask0)
    if NUM_OUTS > 1:
        hi1 = SPLIT2 if NUM_OUTS > 2 else N
        c1 = rn - SPLIT1
        mask1 = m_mask[:, None] & ((rn >= SPLIT1) & (rn < hi1))[None, :]
        tl.store(o1_ptr + (img * so1_n + oh * so1_h + ow * so1_w)[:, None] + c1[None, :] * so1_c, y, mask=mask1)
    if NUM_OUTS > 2:
        c2 = rn - SPLIT2
        mask2 = m_mask[:, None] & ((rn >= SPLIT2) & n_mask)[None, :]
        tl.store(o2_ptr + (img * so2_n + oh * so2_h + ow * so2_w)[:, None] + c2[None, :] * so2_c, y, mask=mask2)


_KEY = ["M", "N", "K", "NUM_OUTS", "HAS_RES", "HAS_SCALE", "HAS_SHIFT", "IN_RELU", "INPUT_PRECISION"]
_autotuned = None


def _tuned_kernel():
    global _autotuned
    if _autotuned is None:
        configs = [
            triton.Config({k: v for k, v in c.items() if k not in _META}, num_warps=c["num_warps"], num_stages=c["num_stages"])
            for c in CONFIGS
        ]
        _autotuned = triton.autotune(configs=configs, key=_KEY)(_conv1x1_kernel)
    return _autotuned


def _input_precision(x: torch.Tensor) -> str:
    if x.dtype == torch.float32 and x.is_cuda and cudnn_conv_tf32():
        return "tf32"  # as cuDNN does for float32 convolutions when allowed
    return "ieee"


_INT32_MAX = 2**31 - 1


def _span(t: torch.Tensor) -> int:
    """One past the largest element offset of ``t``: what int32 addressing must reach."""
    return sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1


def _check_int32(named) -> None:
    too_big = [name for name, t in named if t is not None and _span(t) > _INT32_MAX]
    if too_big:
        raise RuntimeError(
            f"fastconv.conv1x1: backend 'triton' addresses tensors in int32; {', '.join(too_big)} spans more "
            f"than 2**31-1 elements. Use a smaller batch or another backend.")


def _launch(x, w, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):  # (float64: tl.dot computed garbage)
        raise TypeError(f"fastconv.conv1x1: backend 'triton' supports float32, float16 and bfloat16, got {x.dtype}")
    _check_int32([("x", x), ("weight", w), ("residual", residual)] + [(f"outs[{i}]", o) for i, o in enumerate(outs)])
    n, _, _, _ = x.shape
    _, _, oh, ow = outs[0].shape
    m, n_cols, k = n * oh * ow, w.shape[0], w.shape[1]
    splits = [0]
    for o in outs:
        splits.append(splits[-1] + o.shape[1])
    out_ptrs = list(outs) + [outs[0]] * (MAX_OUTS - len(outs))  # unused slots: never stored to
    out_strides = []
    for o in out_ptrs:
        out_strides += list(o.stride())
    res = residual if residual is not None else outs[0]
    dummy = w  # placeholder pointer for absent optional operands (never loaded: constexpr flags)
    args = [
        x, w, bias if bias is not None else dummy, res,
        in_scale if in_scale is not None else dummy, in_shift if in_shift is not None else dummy,
        *out_ptrs,
        m, n_cols, k, oh * ow, ow,
        x.stride(0), x.stride(1), x.stride(2) * stride[0], x.stride(3) * stride[1],
        w.stride(0), w.stride(1),
        *res.stride(),
        *out_strides,
        splits[1] if len(outs) > 1 else n_cols, splits[2] if len(outs) > 2 else n_cols,
    ]
    flags = dict(
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, HAS_SCALE=in_scale is not None,
        HAS_SHIFT=in_shift is not None, IN_RELU=bool(in_relu), RELU=bool(relu), NUM_OUTS=len(outs),
        INPUT_PRECISION=_input_precision(x), DOT_IN_FP32=_interpreted() and x.dtype == torch.bfloat16,
    )
    if _interpreted():
        cfg = pick_interpreter_config(CONFIGS)
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n_cols, cfg["BLOCK_N"]),)
        _conv1x1_kernel[grid](*args, **flags, **cfg)
    else:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n_cols, meta["BLOCK_N"]),)  # noqa: E731
        _tuned_kernel()[grid](*args, **flags)


def conv1x1(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs) -> None:
    """The `triton` backend kernel: weight is 2-D [sum of outs' channels, C_in]; writes into outs."""
    # the kernel reads the per-channel vectors densely (a bias[::2] view is copied here)
    bias, in_scale, in_shift = (None if v is None else v.contiguous() for v in (bias, in_scale, in_shift))
    # more outs than one launch can store to: split the GEMM by weight rows, MAX_OUTS outs at a time
    c0 = 0
    for j in range(0, len(outs), MAX_OUTS):
        chunk = outs[j:j + MAX_OUTS]
        c1 = c0 + sum(o.shape[1] for o in chunk)
        _launch(x, weight[c0:c1], None if bias is None else bias[c0:c1], residual, in_scale, in_shift,
                in_relu, stride, relu, chunk)
        c0 = c1


_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# The NHWC specialization Triton makes at run time for channels_last tensors with channel counts
# divisible by 16: unit channel strides become constants (contiguous, vectorized loads and
# stores), the other integers are known multiples of 16. The compile check builds that variant.
_UNIT_STRIDES = ("sx_c", "sw_k", "sr_c", "so0_c", "so1_c", "so2_c")
_DIV16_INTS = ("N", "K", "sx_n", "sx_h", "sx_w", "sw_n", "sr_n", "sr_h", "sr_w", "so0_n", "so0_h", "so0_w",
               "so1_n", "so1_h", "so1_w", "so2_n", "so2_h", "so2_w", "SPLIT1", "SPLIT2")


def compile_specs() -> List[dict]:
    """What the GPU compile check (fastconv/ops/triton/compile_check.py) hands to triton.compile:
    one spec per config and dtype, with every feature on (bias, residual, prologue, 3 outs) and
    the NHWC specialization above."""
    names = _conv1x1_kernel.arg_names
    specs = []
    for dtype, ty in _TYPES.items():
        for i, cfg in enumerate(CONFIGS):
            constexprs = dict(
                HAS_BIAS=True, HAS_RES=True, HAS_SCALE=True, HAS_SHIFT=True, IN_RELU=True, RELU=True,
                NUM_OUTS=3, INPUT_PRECISION="tf32" if dtype == torch.float32 else "ieee", DOT_IN_FP32=False,
                **{k: v for k, v in cfg.items() if k not in _META}, **{name: 1 for name in _UNIT_STRIDES},
            )
            signature = {}
            for name in names:
                if name in constexprs:
                    signature[name] = "constexpr"
                elif name.endswith("_ptr"):
                    signature[name] = "*" + ty
                else:
                    signature[name] = "i32"
            aligned = [name for name in names if name.endswith("_ptr") or name in _DIV16_INTS]
            attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in aligned}
            options = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
            specs.append(dict(
                kernel="conv1x1", config=f"cfg{i}", dtype=ty, fn=_conv1x1_kernel,
                signature=signature, constexprs=constexprs, attrs=attrs, options=options,
                wgmma_eligible=cfg["num_warps"] % 4 == 0 and cfg["BLOCK_M"] % 64 == 0,
            ))
    return specs
