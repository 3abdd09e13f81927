"""Pure-PyTorch implementations of every fastconv op: the test oracle and the `reference` backend.

Each function takes the op's normalized arguments (explicit int lists, 4-sided padding
``[top, bottom, left, right]``) and returns a new tensor; half-precision inputs on the CPU are
computed in float32 and rounded once, as the fused kernels do.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding, dilation,
          groups: int) -> torch.Tensor:
    """F.conv2d, but a convolution over no input channels is its bias in the output's shape
    (F.conv2d returns a tensor with no channels there: torch 2.14)."""
    if weight.shape[1] != 0:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    out_hw = [(x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1
              for i in range(2)]
    y = x.new_zeros([x.shape[0], weight.shape[0], *out_hw])
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def conv2d_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    relu: bool,
) -> torch.Tensor:
    """relu?(conv2d(x, weight, padding=[top, bottom, left, right]) + bias + residual).

    On an NCHW-contiguous copy of x, with the dilation of a 1-tap kernel dimension set to 1 (it
    changes nothing): PyTorch's channels_last CPU conv (oneDNN) crashes the process on some convs
    eager F.conv2d accepts (torch 2.14: x [1, 9, 3, 1] channels_last, w [3, 3, 3, 1], groups 3,
    stride (1, 2), padding (2, 1), dilation (1, 2) is a SIGSEGV), and this is the oracle."""
    dtype = _compute_dtype(x)
    top, bottom, left, right = padding
    dilation = [d if weight.shape[2 + i] > 1 else 1 for i, d in enumerate(dilation)]
    xc = x.to(dtype).contiguous()
    if top == bottom and left == right:
        pad = [top, left]
    else:
        xc = F.pad(xc, [left, right, top, bottom])
        pad = [0, 0]
    y = _conv(xc, weight.to(dtype), None if bias is None else bias.to(dtype), stride, pad, dilation, groups)
    if residual is not None:
        y = y + residual.to(dtype)
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype)


def max_pool2d(
    x: torch.Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    ceil_mode: bool,
) -> torch.Tensor:
    """F.max_pool2d with explicit pairs (padding is symmetric: [ph, pw], as PyTorch's).

    Computed in the input's dtype: a max involves no rounding, so widening half precision
    would change nothing, and F.max_pool2d supports float16/bfloat16 on the CPU.
    """
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)

def conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    in_scale: Optional[torch.Tensor],
    in_shift: Optional[torch.Tensor],
    in_relu: bool,
    stride: List[int],
    relu: bool,
) -> torch.Tensor:
    """relu?(W · x'[:, :, ::s0, ::s1] + bias + residual), x' = relu?(x * in_scale + in_shift) per channel.

    ``weight`` is [C_out, C_in] or [C_out, C_in, 1, 1]. The prologue is per pixel, so applying it
    after the spatial subsampling gives the same values for fewer pixels.
    """
    dtype = _compute_dtype(x)
    xc = x[:, :, :: stride[0], :: stride[1]].to(dtype)
    if in_scale is not None:
        xc = xc * in_scale.to(dtype).view(1, -1, 1, 1)
    if in_shift is not None:
        xc = xc + in_shift.to(dtype).view(1, -1, 1, 1)
    if in_relu:
        xc = torch.relu(xc)
    w = weight.to(dtype).reshape(weight.shape[0], weight.shape[1], 1, 1)
    y = _conv(xc, w, None if bias is None else bias.to(dtype), [1, 1], [0, 0], [1, 1], 1)
    if residual is not None:
        y = y + residual.to(dtype)
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype)
