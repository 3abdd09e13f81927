"""Public fastconv ops (defined with torch.library) and their pure-PyTorch references."""
from . import reference
from .conv1x1 import conv1x1, conv1x1_multi
from .conv2d_relu import conv2d_relu
from .dense_concat import dense_concat
from .max_pool2d import max_pool2d
from . import _autocast, _flops  # noqa: F401  (_flops registers FlopCounterMode's formulas on import)

_autocast.register()  # autocast rules for every public op (after they are all defined)

__all__ = ["conv1x1", "conv1x1_multi", "conv2d_relu", "dense_concat", "max_pool2d", "reference"]
