"""FLOP formulas for ``torch.utils.flop_counter.FlopCounterMode`` (and what builds on it), so a
model running on fastconv's ops counts the FLOPs its PyTorch twin counts: 2 × the multiply-adds
of the convolution, as PyTorch counts ``aten.convolution`` (bias, residual, ReLU and the BN-ReLU
prologue not counted). max_pool2d and dense_concat move data and count nothing, as PyTorch's
pools and ``torch.cat`` do. The backward formulas run on ``aten.convolution_backward``, which the
counter already knows.

The counter sees the public ops: under any dispatch mode the fast path stands aside
(``fastconv._fastpath.usable``), and a mode does not see the ops its own handler runs."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

_ops = torch.ops.fastconv


@register_flop_formula(_ops.conv2d_relu)
def _conv2d_relu(x, weight, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x, weight, out_shape)


@register_flop_formula(_ops.conv2d_relu_out)
def _conv2d_relu_out(x, weight, bias, residual, stride, padding, dilation, groups, relu, out, *args, **kwargs) -> int:
    return conv_flop_count(x, weight, out)


@register_flop_formula(_ops.conv1x1)
def _conv1x1(x, weight, *args, out_shape=None, **kwargs) -> int:
    return conv_flop_count(x, weight, out_shape)  # a [C_out, C_in] weight: its product is the 1×1's


@register_flop_formula(_ops.conv1x1_out)
def _conv1x1_out(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, out, *args, **kwargs) -> int:
    return conv_flop_count(x, weight, out)


@register_flop_formula(_ops.conv1x1_multi_out)
def _conv1x1_multi_out(x, weight, bias, in_scale, in_shift, in_relu, stride, relu, outs, *args, **kwargs) -> int:
    return sum(conv_flop_count(x, [o[1], x[1]], o) for o in outs)
