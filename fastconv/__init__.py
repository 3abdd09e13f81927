"""fastconv: fused CNN inference kernels (Triton, C++/CUDA, C++ CPU) registered as torch custom ops."""
from ._version import __version__
from . import _ext
from ._backend import available_backends, backend_status, use_backend
from .ops import conv1x1, conv2d_relu, dense_concat, max_pool2d
from . import models, nn
from .convert import convert
from ._autotune import clear_cache, kernel_stats, tune
from ._graphs import CUDAGraphModel

_ext.load_error()  # load the C++ extension now (warns once if it cannot be used)

__all__ = [
    "__version__",
    "CUDAGraphModel",
    "available_backends",
    "clear_cache",
    "kernel_stats",
    "tune",
    "backend_status",
    "conv1x1",
    "conv2d_relu",
    "convert",
    "dense_concat",
    "max_pool2d",
    "models",
    "nn",
    "use_backend",
]
