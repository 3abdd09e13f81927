"""Public fastconv ops (defined with torch.library) and their pure-PyTorch references."""
from . import reference
from .conv2d_relu import conv2d_relu
from .dense_concat import dense_concat
from .max_pool2d import max_pool2d

__all__ = ["conv2d_relu", "dense_concat", "max_pool2d", "reference"]
