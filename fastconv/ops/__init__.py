"""Public fastconv ops (defined with torch.library) and their pure-PyTorch references."""
from . import reference
from .conv2d_relu import conv2d_relu
from .max_pool2d import max_pool2d

__all__ = ["conv2d_relu", "max_pool2d", "reference"]
