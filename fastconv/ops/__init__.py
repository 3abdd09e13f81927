"""Public fastconv ops (defined with torch.library) and their pure-PyTorch references."""
from . import reference
from .conv1x1 import conv1x1, conv1x1_multi
from .conv2d_relu import conv2d_relu

__all__ = ["conv1x1", "conv1x1_multi", "conv2d_relu", "reference"]
