"""dense_concat's copying path in Triton: one strided copy per feature into its channel slice.

The flat index runs over the destination slice in the destination's memory order (dimensions
sorted by its strides), so stores are coalesced for NCHW and channels_last outputs alike.
"""
from __future__ import annotations

from typing import List

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def dense_concat_copy_kernel(
    src, dst, numel,
    size1, size2, size3,
    s_s0, s_s1, s_s2, s_s3,
    d_s0, d_s1, d_s2, d_s3,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < numel
    # (the sizes arrive as int32 and their products would wrap past 2^31 elements: divide the
    # int64 index instead of multiplying the sizes)
    i3 = idx % size3
    i2 = (idx // size3) % size2
    i1 = (idx // size3 // size2) % size1
    i0 = idx // size3 // size2 // size1
    value = tl.load(src + i0 * s_s0 + i1 * s_s1 + i2 * s_s2 + i3 * s_s3, mask=mask)
    tl.store(dst + i0 * d_s0 + i1 * d_s1 + i2 * d_s2 + i3 * d_s3, value, mask=mask)


def dense_concat(features: List[torch.Tensor], out: torch.Tensor) -> None:
    c = 0
    for f in features:
        dst = out.narrow(1, c, f.shape[1])
        c += f.shape[1]
        if dst.numel() == 0:
            continue
        order = sorted(range(4), key=lambda d: -dst.stride(d))
        sizes = [dst.shape[d] for d in order]
        grid = (triton.cdiv(dst.numel(), BLOCK),)
        dense_concat_copy_kernel[grid](
            f, dst, dst.numel(), sizes[1], sizes[2], sizes[3],
            *[f.stride(d) for d in order], *[dst.stride(d) for d in order],
            BLOCK=BLOCK,
        )


def compile_specs():
    """What the GPU compile check (compile_check.py) needs to build this kernel for each dtype."""
    specs = []
    for dtype in ("fp32", "fp16", "bf16"):
        signature = {"src": f"*{dtype}", "dst": f"*{dtype}", "numel": "i64"}
        signature.update({name: "i64" for name in ("size1", "size2", "size3")})
        signature.update({f"{t}_s{i}": "i64" for t in ("s", "d") for i in range(4)})
        signature["BLOCK"] = "constexpr"
        specs.append({
            "kernel": "dense_concat", "config": f"B{BLOCK}w4", "dtype": dtype, "fn": dense_concat_copy_kernel,
            "signature": signature, "constexprs": {"BLOCK": BLOCK}, "options": {"num_warps": 4, "num_stages": 1},
            "tensor_cores": False,
        })
    return specs
