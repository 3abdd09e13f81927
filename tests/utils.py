"""Helpers shared by the op tests: fp64 references, relative errors, poisoned outputs."""
from __future__ import annotations

import torch

# Relative error bounds ||y - ref|| / ||ref|| against an fp64 reference, per dtype.
REL_TOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.6e-2,
}
# On a GPU float32 convs may run in tf32 (as cuDNN does when allow_tf32 is set).
REL_TOL_TF32 = 2e-3


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y64, ref64 = y.detach().double().cpu(), ref.detach().double().cpu()
    denom = ref64.norm().item()
    diff = (y64 - ref64).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


def assert_close_rel(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "", tol: float | None = None):
    assert y.shape == ref.shape, f"{what}: shape {tuple(y.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(y).all(), f"{what}: output has non-finite values (unwritten elements?)"
    err = rel_err(y, ref)
    bound = REL_TOL[dtype] if tol is None else tol
    assert err <= bound, f"{what}: relative error {err:.3e} > {bound:.1e}"


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    """A tensor shaped and strided like ``t`` filled with NaN, so an unwritten element fails."""
    return torch.full_like(t, float("nan"))


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` in layout "nchw", "nhwc" (channels_last) or "strided" (a non-contiguous view)."""
    if layout == "nchw":
        return t.contiguous()
    if layout == "nhwc":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        big = torch.empty(t.shape[:-1] + (t.shape[-1] * 2,), dtype=t.dtype, device=t.device)
        big.normal_()
        view = big[..., ::2]
        view.copy_(t)
        return view
    raise ValueError(layout)
