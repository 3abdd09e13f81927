"""The ``torch`` tactic: PyTorch's own convolution with fastconv's fusion around it.

On the CPU (float16/bfloat16 computed in float32, as the reference does) the conv is oneDNN's
``mkldnn::_convolution_pointwise`` (``F.conv2d`` for one input channel and on torch < 2.7, where
oneDNN's own op goes wrong: see ``_use_onednn``) with BN already folded into the weights and the
residual as oneDNN's binary ``"add"`` post-op, and float32 weights handed over in oneDNN's blocked
layout, reordered once per weight (``_weight_cache``) instead of on every call. oneDNN returns a
fresh tensor, so writing ``out`` (possibly a channel slice) costs one pass, which also applies the
ReLU (``clamp_min(y, 0, out=o)``: NaN-propagating like torch.relu, which oneDNN's ``"relu"``
post-op is not). That pass is counted in ``KernelStats.copied_bytes``. Elsewhere (CUDA: cuDNN) the conv is ``F.conv2d`` with the bias in it,
the residual added in place, and the same ReLU-and-copy pass writes ``out``. A prologue
(``relu(x * scale + shift)``, DenseNet's BN-ReLU) is materialized once before the conv.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import _autotune
from .._ext import _torch_series
from . import _weight_cache


# ``mkldnn::_convolution_pointwise`` is a private op whose robustness varies by release: torch 2.6's
# crashes (SIGSEGV, uncatchable) on a channels_last input with a 1-wide kernel and width padding,
# shapes eager F.conv2d computes (2.7.1, 2.10, 2.11, 2.14 compute them all). The fastconv suite
# passes with it on 2.7, 2.10, 2.11, 2.14 and 2.15 (benchmarks/RESULTS.md, "torch versions");
# torch 2.6 takes F.conv2d, eager's own path, with the same fusion around it.
ONEDNN_POINTWISE = tuple(int(v) for v in _torch_series(torch.__version__).split(".")) >= (2, 7)


def _use_onednn(x: torch.Tensor) -> bool:
    # Not for one input channel: there oneDNN computes wrong values, silently, when the output is
    # one column wide and the width stride >= 2 (x [2,1,3,2], w [1,1,2,4], stride (1,2), padding
    # (0,1): every output row after the first), on 2.7 to 2.11 with any weight and on 2.14/2.15
    # with a prepacked one (about 1 in 10 such convs in a random probe; grouped convs with one
    # channel per group are right). Eager F.conv2d on an NCHW input computes them (see conv).
    return (ONEDNN_POINTWISE and x.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and x.shape[1] > 1)


def _output_is_one_pixel(x: torch.Tensor, weight: torch.Tensor, pad: List[int], stride: List[int],
                         dilation: List[int]) -> bool:
    size = [(x.shape[2 + d] + 2 * pad[d] - dilation[d] * (weight.shape[2 + d] - 1) - 1) // stride[d] + 1
            for d in range(2)]
    return size == [1, 1]


def _plain_strides(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` with the row-major strides when it is contiguous but carries other strides on size-1
    dimensions (e.g. a [1, C, 1, 1] channels_last result): torch 2.11's oneDNN cannot describe
    those ("could not create a memory"); the same memory, restrided, is fine."""
    if t is None or not t.is_contiguous():
        return t
    expected, acc = [], 1
    for size in reversed(t.shape):
        expected.append(acc)
        acc *= max(size, 1)
    expected.reverse()
    return t if list(t.stride()) == expected else t.as_strided(t.shape, expected)


def _write(y: torch.Tensor, outs: Sequence[torch.Tensor], relu: bool) -> None:
    """Split y's channels over outs, applying the ReLU on the way (NaN-propagating, as torch.relu).

    This is one pass over the output that a fused kernel would not need: counted as a copy."""
    c0 = 0
    for o in outs:
        part = y.narrow(1, c0, o.shape[1])
        if relu and part.dtype != o.dtype:  # computed in float32: round once (relu commutes with it)
            part = part.to(o.dtype)
        if relu:
            torch.clamp_min(part, 0, out=o)
        else:
            o.copy_(part)
        c0 += o.shape[1]
    _autotune.count_copy(y.numel() * outs[0].element_size())


def conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
         stride: List[int], padding: List[int], dilation: List[int], groups: int, relu: bool,
         outs: Sequence[torch.Tensor], in_scale: Optional[torch.Tensor] = None,
         in_shift: Optional[torch.Tensor] = None, in_relu: bool = False) -> None:
    """outs ← relu?(conv(x', weight, padding=[top, bottom, left, right]) + bias + residual), x' the prologue."""
    # a dilation along a 1-tap kernel dimension changes nothing, but oneDNN (eager F.conv2d too, torch
    # 2.14) segfaults on some such convs: channels_last x [2,3,2,1], 1x1 weight, bias, stride (2,3),
    # padding (0,2), dilation (1,2). The same conv with that dilation at 1 is computed.
    dilation = [d if weight.shape[2 + i] > 1 else 1 for i, d in enumerate(dilation)]
    onednn = _use_onednn(x)
    cacheable = weight.dtype == torch.float32  # not the per-call float32 copy of a 16-bit weight
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        # computed in float32 and rounded once, as the reference does. Eager's own 16-bit CPU conv
        # is 3-7x faster on an AMX CPU but not safe: it shares oneDNN's one-input-channel bug
        # (_use_onednn) on 2.14, and on 2.6 it computed 1-wide outputs with a width stride wrong
        # (bf16, 2 and 4 input channels too) and segfaulted (fp16, 1-wide kernels with padding)
        x, weight = x.float(), weight.float()
        bias = None if bias is None else bias.float()
        residual = None if residual is None else residual.float()
        in_scale = None if in_scale is None else in_scale.float()
        in_shift = None if in_shift is None else in_shift.float()
    if in_scale is not None or in_shift is not None or in_relu:
        if stride != [1, 1] and tuple(weight.shape[2:]) == (1, 1) and padding == [0, 0, 0, 0]:
            x, stride = x[:, :, ::stride[0], ::stride[1]], [1, 1]  # a 1x1 conv: subsample first
        x = x * in_scale.view(1, -1, 1, 1) if in_scale is not None else x.clone()
        if in_shift is not None:
            x.add_(in_shift.view(1, -1, 1, 1))
        if in_relu:
            x.relu_()
    if not onednn and x.device.type == "cpu":
        # F.conv2d on a row-major copy: eager's channels_last CPU path goes wrong where oneDNN's op
        # does. One input channel (see _use_onednn; an input with strides [HW, 1, W, 1], or a view
        # eager copies so: 2.7 to 2.14), and on 2.6 narrow padded inputs (SIGSEGV: x [2,3,8,1],
        # w [2,3,3,1], stride 2, padding 1; x [2,3,8,1], w [2,3,4,2], stride 3, padding (1,2)).
        # Its NCHW path computed every probed conv right.
        x = _plain_strides(x.contiguous())
    top, bottom, left, right = padding
    if top == bottom and left == right:
        pad = [top, left]
    else:
        x = F.pad(x, [left, right, top, bottom])
        pad = [0, 0]
    if onednn:
        x, residual = _plain_strides(x), _plain_strides(residual)
        one_out = weight.shape[0] == 1
        packed = _weight_cache.onednn_blocked(weight, pad, stride, dilation, groups, x.shape) if cacheable else None
        one_pixel = residual is not None and _output_is_one_pixel(x, weight, pad, stride, dilation)
        weight = weight if packed is None else packed
        # bias and residual are oneDNN post-ops; its "relu" post-op is not used because it maps NaN
        # to 0 (fastconv's ReLU, like torch.relu, propagates NaN): the ReLU rides on the copy into out
        if residual is None or one_out or one_pixel:
            # torch 2.11's oneDNN cannot build the binary post-op's memory descriptor ("could not
            # create a memory") for one output channel, nor (2.6 to 2.11) for a 1x1 output with a
            # prepacked weight or a channels_last input (ResNet's layer4 on a 32x32 input): the
            # residual is added after the conv instead
            y = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, pad, stride, dilation, groups,
                                                       "none", [], "")
            if residual is not None:
                y.add_(residual)
        else:
            y = torch.ops.mkldnn._convolution_pointwise.binary(x, residual, weight, bias, pad, stride, dilation,
                                                              groups, "add", None, None, [], None)
    else:
        y = F.conv2d(x, weight, bias, stride, pad, dilation, groups)
        if residual is not None:
            y.add_(residual)
    _write(y, outs, relu)
