"""Loading the optional C++/CUDA extension ``fastconv._C``.

The extension registers the private ``fastconv::_<op>_cpu`` / ``_<op>_cuda`` kernels. It is
optional at run time: when it is missing, or was built against another torch, ``import
fastconv`` still works with the ``auto``, ``torch``, ``reference`` and (where Triton runs)
``triton`` backends, warns once, and
``fastconv.backend_status()`` carries the reason.
"""
from __future__ import annotations

import importlib
import re
import threading
import warnings

import torch

_lock = threading.Lock()
_loaded = False
_error: str | None = None
_arch_list: str | None = None  # TORCH_CUDA_ARCH_LIST the extension was built with, when recorded


def _torch_series(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _load() -> None:
    global _loaded, _error, _arch_list
    with _lock:
        if _loaded:
            return
        try:
            from . import _build_info  # written by setup.py next to the compiled module
        except ImportError:
            _build_info = None
        _arch_list = getattr(_build_info, "CUDA_ARCH_LIST", None)
        if _build_info is not None and _torch_series(_build_info.TORCH_VERSION) != _torch_series(torch.__version__):
            _error = (
                f"fastconv._C was built against torch {_build_info.TORCH_VERSION}, but torch "
                f"{torch.__version__} is running; rebuild with `pip install --no-build-isolation .`"
            )
        else:
            try:
                importlib.import_module("fastconv._C")
            except Exception as exc:  # ImportError, OSError (undefined symbols after an ABI change)
                _error = f"cannot import fastconv._C ({type(exc).__name__}: {exc})"
        _loaded = True
    if _error is not None:
        warnings.warn(
            f"fastconv: C++ extension not loaded, backends 'cpu' and 'cuda' are off: {_error}",
            RuntimeWarning,
            stacklevel=3,
        )


def load_error() -> str | None:
    """None when the extension is loaded, else why it is not."""
    _load()
    return _error


def has_cuda_kernels() -> bool:
    """Whether the loaded extension carries CUDA kernels (built with nvcc)."""
    if load_error() is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastconv::_conv2d_relu_cuda", "CUDA")


_ARCH = re.compile(r"^(\d+)\.(\d+)(a?)(\+PTX)?$")


def cuda_arch_gap(capability: tuple, arch_list: str | None = None) -> str | None:
    """None when the extension's CUDA kernels can run on a GPU of compute ``capability``, else why
    not. ``arch_list`` (default: the one the extension was built with) is TORCH_CUDA_ARCH_LIST. The
    CUDA rules: a cubin for X.Y runs on X.Z with Z >= Y, one for X.Ya only on X.Y; PTX for X.Y is
    compiled at load time for any later GPU. An unknown list (an older build) is taken as fine.

    Without this, an extension built on a machine without a GPU (8.0;9.0a) and run on, say, a T4
    or a Blackwell card would fail at its first launch ("no kernel image"), and `auto` tuning with it."""
    if arch_list is None:
        load_error()
        arch_list = _arch_list
    if not arch_list:
        return None
    entries = [a for a in re.split(r"[;\s]+", arch_list.strip()) if a]
    parsed = [_ARCH.match(a) for a in entries]
    if not all(parsed):
        return None
    dev = tuple(capability)
    for m in parsed:
        arch, specific, ptx = (int(m.group(1)), int(m.group(2))), bool(m.group(3)), bool(m.group(4))
        if specific:
            runs = dev == arch
        else:
            runs = (dev[0] == arch[0] and dev[1] >= arch[1]) or (ptx and dev >= arch)
        if runs:
            return None
    sm = f"{dev[0]}.{dev[1]}"
    wanted = sm + ("a" if dev == (9, 0) else "")  # Hopper's CUTLASS kernels need sm_90a
    return (
        f"fastconv._C has CUDA kernels for {arch_list} only, none that runs on this GPU (compute capability "
        f"{sm}); rebuild on this machine, or with TORCH_CUDA_ARCH_LIST={wanted}: pip install --no-build-isolation ."
    )
