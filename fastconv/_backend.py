"""Backend selection: which kernel family runs a public fastconv op.

The choice is thread-local (``use_backend`` is a context manager) so two threads can run
different backends side by side. The public ops read it at call time, inside the op body,
so torch.compile traces only the public op and the choice is made when the graph runs.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Dict, Iterator, List

import torch

from . import _ext

BACKENDS = ("auto", "triton", "cuda", "cpu", "torch", "reference")
# "torch": PyTorch's own kernel (oneDNN on the CPU with its fused post-ops, cuDNN on CUDA) with
# fastconv's fusion around it (folded BN, bias/residual/ReLU epilogue, prologue, out-slices).
# "auto" picks per call signature among the candidates of fastconv._autotune (timed, cached).

_state = threading.local()


def current_backend() -> str:
    """The backend name set by the innermost ``use_backend`` on this thread ("auto" by default)."""
    return getattr(_state, "name", "auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run fastconv ops in this block on backend ``name`` (thread-local, nestable)."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"use_backend: unknown backend {name!r}; expected one of {BACKENDS}")
    if torch.compiler.is_compiling():
        # the compiled graph calls the public ops when it runs, long after this block was traced:
        # the selection would silently not apply
        raise RuntimeError("fastconv.use_backend inside a torch.compile'd (or exported) function has no effect on "
                           "the compiled graph: select the backend around the compiled call instead")
    previous = current_backend()
    _state.name = name
    try:
        yield name
    finally:
        _state.name = previous


# Whether Triton runs interpreted is settled when fastconv is imported (it imports triton then,
# through torch.utils.flop_counter, and Triton reads TRITON_INTERPRET as its kernels are
# defined): the environment at that time decides, for the status and for every launch.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_interpreted() -> bool:
    return _TRITON_INTERPRET


def _triton_status() -> str | None:
    """None when Triton can run here, else the reason it can't."""
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return f"triton is not importable: {exc}"
    if torch.cuda.is_available() or triton_interpreted():
        return None
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return ("no CUDA device, and TRITON_INTERPRET=1 was set after fastconv was imported: set it before "
                "importing fastconv (and triton) to interpret Triton on CPU tensors")
    return "no CUDA device (set TRITON_INTERPRET=1 before importing fastconv to interpret Triton on CPU tensors)"


def backend_status() -> Dict[str, str]:
    """For every backend: "available", or why it cannot run here."""
    ext_reason = _ext.load_error()
    status = {"auto": "available", "torch": "available", "reference": "available"}
    triton_reason = _triton_status()
    status["triton"] = "available" if triton_reason is None else triton_reason
    status["cpu"] = "available" if ext_reason is None else f"C++ extension unavailable: {ext_reason}"
    if ext_reason is not None:
        status["cuda"] = f"C++ extension unavailable: {ext_reason}"
    elif not _ext.has_cuda_kernels():
        status["cuda"] = "the C++ extension was built without CUDA kernels (FASTCONV_CUDA=0 or no nvcc)"
    elif not torch.cuda.is_available():
        status["cuda"] = "CUDA kernels are built, but no CUDA device is visible"
    else:
        gap = _ext.cuda_arch_gap(torch.cuda.get_device_capability())
        status["cuda"] = "available" if gap is None else gap
    return status


def available_backends() -> List[str]:
    """The backends that can run on this machine now."""
    status = backend_status()
    return [name for name in BACKENDS if status[name] == "available"]


def resolve(device: torch.device, op: str) -> str:
    """The concrete backend for ``op`` on ``device`` under the current selection.

    Raises instead of silently falling back: a requested backend that cannot run the
    tensors' device is an error, never a quiet switch to another implementation.
    """
    name = current_backend()
    if name == "auto":
        # the untimed choice; the ops themselves tune per signature (fastconv._autotune.dispatch)
        from . import _autotune

        return _autotune.heuristic(op, device)
    if name in ("reference", "torch"):
        return name
    if name == "triton":
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return name
        raise RuntimeError(
            f"fastconv.{op}: backend 'triton' cannot run tensors on {device}: "
            + (_triton_status() or "Triton runs CUDA tensors, or CPU tensors under TRITON_INTERPRET=1")
        )
    if name == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"fastconv.{op}: backend 'cpu' needs CPU tensors, got tensors on {device}")
        reason = _ext.load_error()
        if reason is not None:
            raise RuntimeError(f"fastconv.{op}: backend 'cpu' is unavailable: {reason}")
        return name
    if name == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"fastconv.{op}: backend 'cuda' needs CUDA tensors, got tensors on {device}")
        reason = backend_status()["cuda"]
        if reason != "available":
            raise RuntimeError(f"fastconv.{op}: backend 'cuda' is unavailable: {reason}")
        return name
    raise AssertionError(name)
