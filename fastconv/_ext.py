"""Loading the optional C++/CUDA extension ``fastconv._C``.

The extension registers the private ``fastconv::_<op>_cpu`` / ``_<op>_cuda`` kernels. It is
optional at run time: when it is missing, or was built against another torch, ``import
fastconv`` still works with the ``triton`` and ``reference`` backends, warns once, and
``fastconv.backend_status()`` carries the reason.
"""
from __future__ import annotations

import importlib
import threading
import warnings

import torch

_lock = threading.Lock()
_loaded = False
_error: str | None = None


def _torch_series(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _load() -> None:
    global _loaded, _error
    with _lock:
        if _loaded:
            return
        try:
            from . import _build_info  # written by setup.py next to the compiled module
        except ImportError:
            _build_info = None
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
