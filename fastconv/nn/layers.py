"""Drop-in layers: torch.nn's constructor arguments and parameter names, fastconv's fused kernels.

Each layer is a subclass of (or shaped like) the torch layer it replaces, so state dicts load
unchanged and ``isinstance(layer, nn.Conv2d)`` still holds where code relies on it. They run in
eval and in train mode (gradients come from the autograd formulas registered on the ops).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _fastpath, ops


class Conv2dReLU(nn.Conv2d):
    """``nn.Conv2d`` followed by ``nn.ReLU``, in one kernel. ``relu=False`` makes it a plain conv.

    ``forward(x, residual=None, out=None)``: ``residual`` is added before the ReLU (ResNet's block
    tail) and ``out`` may be a channel slice of a larger buffer (DenseNet / Inception concat).
    """

    # (the settings a fastconv model's cached fused copy is keyed by, as nn.Conv2d's own)
    __constants__ = nn.Conv2d.__constants__ + ["relu"]

    def __init__(self, *args, relu: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu

    def extra_repr(self) -> str:
        return super().extra_repr() + f", relu={self.relu}"

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        w, b = self.weight, self.bias  # (not _parameters: a parametrization makes weight a property)

        def full():
            return ops.conv2d_relu(x, w, b, self.stride, padding, self.dilation, self.groups, relu=self.relu,
                                   residual=residual, out=out)

        # inference (autograd off, or nothing requiring grad): the full path once per call layout, then
        # its kernel directly (fastconv/_fastpath.py); training takes the full path every call
        return _fastpath.conv(self, full, x, w, b, residual, out, self.stride, padding, self.dilation, self.groups,
                              self.relu, False)


def _pair(v, name: str):
    if isinstance(v, (tuple, list)) and len(v) == 1:  # (nn.Conv2d repeats a one-element tuple)
        v = v[0]
    pair = (v, v) if isinstance(v, int) and not isinstance(v, bool) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair):
        raise TypeError(f"fastconv.nn.Conv1x1: {name} must be an int or a pair of ints, got {v!r}")
    return pair


class Conv1x1(nn.Module):
    """A 1×1 convolution as a GEMM over channels (+ ReLU unless ``relu=False``): ``weight``
    [out, in, 1, 1] like nn.Conv2d's, and nn.Conv2d's constructor arguments in nn.Conv2d's order,
    so ``nn.Conv2d(c_in, c_out, 1, stride)`` becomes ``Conv1x1(c_in, c_out, 1, stride)``; what a 1×1
    GEMM does not compute (another kernel size, padding, groups) is refused.

    ``forward(x, residual=None, out=None, in_scale=None, in_shift=None, in_relu=False)``: the
    optional per-channel prologue ``relu?(x * in_scale + in_shift)`` is applied as x is read.
    """

    __constants__ = ["in_channels", "out_channels", "stride", "relu"]  # (as Conv2dReLU's)

    def __init__(self, in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 *, relu: bool = True) -> None:
        super().__init__()
        if _pair(kernel_size, "kernel_size") != (1, 1):
            raise ValueError(f"fastconv.nn.Conv1x1: kernel_size must be 1, got {kernel_size!r} (nn.Conv2d's argument "
                             "order: in_channels, out_channels, kernel_size, stride; use Conv2dReLU for other kernels)")
        if padding == "same" and _pair(stride, "stride") != (1, 1):
            raise ValueError("fastconv.nn.Conv1x1: padding='same' is not supported for strided convolutions")
        if padding not in ("valid", "same") and _pair(padding, "padding") != (0, 0):  # (a 1x1 kernel's 'same' is 0)
            raise ValueError(f"fastconv.nn.Conv1x1: padding must be 0, got {padding!r} (use Conv2dReLU)")
        if groups != 1:
            raise ValueError(f"fastconv.nn.Conv1x1: groups must be 1, got {groups!r} (use Conv2dReLU)")
        if not isinstance(bias, bool):
            raise TypeError(f"fastconv.nn.Conv1x1: bias must be True or False, got {bias!r}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"fastconv.nn.Conv1x1: padding_mode must be one of 'zeros', 'reflect', 'replicate', "
                             f"'circular', got {padding_mode!r}")
        self.stride = _pair(stride, "stride")
        # nn.Conv2d's attributes, for code that reads them (dilation and padding mode change
        # nothing for a 1×1 kernel without padding)
        self.kernel_size, self.padding, self.dilation, self.groups = (1, 1), (0, 0), _pair(dilation, "dilation"), 1
        self.padding_mode = padding_mode
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels, self.relu = in_channels, out_channels, relu
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 1, 1, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's initialisation, so a Conv1x1 starts like the layer it replaces
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / self.in_channels ** 0.5 if self.in_channels > 0 else 0  # (nn.Conv2d's rule for fan_in 0)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, bias={self.bias is not None}, "
                f"relu={self.relu}")

    def forward(self, x, residual=None, out=None, in_scale=None, in_shift=None, in_relu=False):
        w, b = self.weight, self.bias  # (not _parameters: a parametrization makes weight a property)

        def full():
            return ops.conv1x1(x, w, b, self.stride, relu=self.relu, residual=residual, in_scale=in_scale,
                               in_shift=in_shift, in_relu=in_relu, out=out)

        return _fastpath.conv(self, full, x, w, b, residual, out, self.stride, 0, 1, 1, self.relu, True, in_scale,
                              in_shift, in_relu)  # as Conv2dReLU


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` on fastconv's pooling kernel (``return_indices`` is not supported)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.return_indices:
            raise ValueError("fastconv.nn.MaxPool2d: return_indices=True is not supported; use torch.nn.MaxPool2d")

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and not x.is_floating_point() and out is None:
            # integer maps (masks, labels): PyTorch's pool, as the nn.MaxPool2d this layer replaces
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        # the kernel the first call resolved to, directly, from the second call of a layout on
        # (fastconv/_fastpath.py)
        return _fastpath.pool(self, lambda: self._full(x, out), x, out, self.kernel_size, self.stride, self.padding,
                              self.dilation, self.ceil_mode)

    def _full(self, x, out):
        return ops.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, out=out)
