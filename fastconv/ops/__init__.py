"""Public fastconv ops (defined with torch.library) and their pure-PyTorch references."""
from . import reference
from .conv2d_relu import conv2d_relu
from .dense_concat import dense_concat

__all__ = ["conv2d_relu", "dense_concat", "reference"]
