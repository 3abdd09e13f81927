"""Triton max_pool2d: one program per block of output pixels x channels, explicit strides.

Each program owns BLOCK_P output pixels (n, oh, ow flattened) times BLOCK_C channels, channels
innermost, so for channels_last inputs (and channel slices of NHWC buffers) every load is a run
of contiguous channels; NCHW and other strided views run through the same code. Semantics are
PyTorch's (see fastconv/ops/max_pool2d.py): padded taps load -inf and never win, the window is
scanned row by row, and a value replaces the running max when it is larger or NaN. Half and
bfloat16 are compared in float32, which is exact (the max is one of the inputs) and works under
the interpreter, which has no bfloat16 constants.

On a GPU the block shape is autotuned over CONFIGS; under TRITON_INTERPRET=1 autotuning is
bypassed and CONFIGS[$FASTCONV_TRITON_CONFIG] (default 0) runs, so tests pick each config.
"""
from __future__ import annotations

import functools
from typing import Dict, List

import torch
import triton
import triton.language as tl

from ..._backend import triton_interpreted as _interpreted
from . import pick_interpreter_config

# (BLOCK_P output pixels, BLOCK_C channels, num_warps): wide-channel tiles for deep NHWC
# layers, pixel-heavy tiles for few channels (or NCHW, where pixels are the contiguous axis).
# 2048-element tiles take 8 warps: with 4, the int64 addresses of 16 elements per thread need
# more than 255 registers and ptxas spills (tests/test_gpu_compile.py checks this).
CONFIGS = [
    {"BLOCK_P": 32, "BLOCK_C": 64, "num_warps": 8},
    {"BLOCK_P": 64, "BLOCK_C": 32, "num_warps": 8},
    {"BLOCK_P": 128, "BLOCK_C": 8, "num_warps": 4},
    {"BLOCK_P": 256, "BLOCK_C": 2, "num_warps": 8},
]
NUM_STAGES = 1  # no software-pipelined loop to stage: each tap is one load and one compare

_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@triton.jit
def _max_pool2d_kernel(
    x_ptr, out_ptr,
    N, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw,
    son, soc, soh, sow,
    KH, KW, SH, SW, PH, PW, DH, DW,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    # int64 pixel and channel indices: offsets of > 2^31-element tensors must not wrap
    p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    # (the sizes arrive as int32 and their product N * OH * OW would wrap at 2^31 pixels:
    # divide the int64 index instead of multiplying the sizes)
    c_ok = c < C
    ow = p % OW
    oh = (p // OW) % OH
    n = p // OW // OH
    p_ok = n < N
    x_base = x_ptr + (n * sxn)[:, None] + (c * sxc)[None, :]
    acc = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
    for a in range(KH):
        ih = oh * SH - PH + a * DH
        row_ok = p_ok & (ih >= 0) & (ih < H)
        for b in range(KW):
            iw = ow * SW - PW + b * DW
            ok = row_ok & (iw >= 0) & (iw < W)
            v = tl.load(x_base + (ih * sxh + iw * sxw)[:, None], mask=ok[:, None] & c_ok[None, :],
                        other=float("-inf")).to(tl.float32)
            acc = tl.where((v > acc) | (v != v), v, acc)
    out_offs = (n * son + oh * soh + ow * sow)[:, None] + (c * soc)[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


def _config(cfg: Dict) -> triton.Config:
    return triton.Config({"BLOCK_P": cfg["BLOCK_P"], "BLOCK_C": cfg["BLOCK_C"]},
                         num_warps=cfg["num_warps"], num_stages=NUM_STAGES)


# Out is written from x alone (no accumulation into it), so re-running a config while tuning is harmless.
# Built on first GPU use (triton 3.2's autotuner needs the GPU driver when it is made).
@functools.lru_cache(maxsize=None)
def _tuned_kernel():
    return triton.autotune(configs=[_config(cfg) for cfg in CONFIGS],
                           key=["C", "OH", "OW", "KH", "KW", "SH", "SW", "sxc", "soc"])(_max_pool2d_kernel)


def max_pool2d(x: torch.Tensor, kernel_size: List[int], stride: List[int], padding: List[int],
               dilation: List[int], out: torch.Tensor) -> None:
    """Write F.max_pool2d(x, ...) into out (4-D, any strides; its shape carries ceil_mode)."""
    if x.dtype not in _TRITON_DTYPES:
        raise TypeError(f"fastconv.max_pool2d: backend 'triton' supports float32, float16 and bfloat16, got {x.dtype}")
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    args = (x, out, n, c, h, w, oh, ow, *x.stride(), *out.stride(),
            kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
    pixels = n * oh * ow
    if _interpreted():
        cfg = pick_interpreter_config(CONFIGS)
        grid = (triton.cdiv(pixels, cfg["BLOCK_P"]), triton.cdiv(c, cfg["BLOCK_C"]))
        _max_pool2d_kernel[grid](*args, BLOCK_P=cfg["BLOCK_P"], BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"])
        return
    grid = lambda meta: (triton.cdiv(pixels, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]))  # noqa: E731
    _tuned_kernel()[grid](*args)


def compile_specs() -> List[Dict]:
    """What triton.compile(ASTSource(fn, signature, constexprs), target=...) needs, for every
    config x dtype, in compile_check's format (no tl.dot here, so no tensor-core expectation).
    Strides and sizes are typed i64 so the compiled code is the one large tensors get."""
    specs = []
    for i, cfg in enumerate(CONFIGS):
        for dtype in _TRITON_DTYPES.values():
            signature = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}"}
            for name in _max_pool2d_kernel.arg_names[2:]:
                signature[name] = "constexpr" if name in ("BLOCK_P", "BLOCK_C") else "i64"
            specs.append({
                "kernel": "max_pool2d",
                "config": f"P{cfg['BLOCK_P']}xC{cfg['BLOCK_C']}w{cfg['num_warps']}",
                "dtype": dtype,
                "fn": _max_pool2d_kernel,
                "signature": signature,
                "constexprs": {"BLOCK_P": cfg["BLOCK_P"], "BLOCK_C": cfg["BLOCK_C"]},
                "options": {"num_warps": cfg["num_warps"], "num_stages": NUM_STAGES},
                "tensor_cores": False,
            })
    return specs
