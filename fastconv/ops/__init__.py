"""Public fastconv ops (defined with torch.library) and their pure-PyTorch references."""
from . import reference
from .conv2d_relu import conv2d_relu

__all__ = ["conv2d_relu", "reference"]
