"""Drop-in fastconv layers for nn.Conv2d(+ReLU), 1×1 convs, max-pooling and DenseNet blocks."""
from .layers import Conv1x1, Conv2dReLU, MaxPool2d

__all__ = ["Conv1x1", "Conv2dReLU", "DenseBlock", "MaxPool2d"]


def __getattr__(name):
    # DenseBlock lives with the DenseNet model that defines its tree; imported lazily to avoid a cycle
    if name == "DenseBlock":
        from ..models.densenet import DenseBlock

        return DenseBlock
    raise AttributeError(name)
