"""Bad inputs at every entry point raise a clear exception naming the argument; none crashes.

Each group of bad calls runs in a child Python process (a segfault or abort there fails the test
instead of killing pytest); the child prints the exception type and message of every call, and
the parent checks them. The private C++ kernels (``torch.ops.fastconv._<op>_cpu``) are called
directly with mis-shaped, mis-typed and overlapping outs too: their own checks must hold without
the public op in front of them.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import fastconv

HAS_EXT = "cpu" in fastconv.available_backends()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETUP = """
import torch, fastconv
from fastconv import nn as fnn
x = torch.randn(2, 4, 8, 8)
w = torch.randn(6, 4, 3, 3)
w1 = torch.randn(6, 4, 1, 1)
b = torch.randn(6)
out = torch.empty(2, 6, 6, 6)
out1 = torch.empty(2, 6, 8, 8)
buf = torch.randn(2, 8, 8, 8)
"""

# (label, code, expected exception type name, regex the message must match)
FUNCTIONAL = [
    ("conv x int", "fastconv.conv2d_relu(x.long(), w)", "TypeError", r"\bx\b.*floating"),
    ("conv x 2-D", "fastconv.conv2d_relu(x[0, 0], w)", "ValueError", r"\bx\b must be"),
    ("conv x not tensor", "fastconv.conv2d_relu([1.0], w)", "TypeError", r"\bx\b must be a torch.Tensor"),
    ("conv weight channels", "fastconv.conv2d_relu(x, torch.randn(6, 3, 3, 3))", "ValueError", r"weight.*input channels"),
    ("conv weight dtype", "fastconv.conv2d_relu(x, w.double())", "TypeError", r"weight has dtype"),
    ("conv bias shape", "fastconv.conv2d_relu(x, w, torch.randn(5))", "ValueError", r"bias must have shape"),
    ("conv bias dtype", "fastconv.conv2d_relu(x, w, b.half())", "TypeError", r"bias has dtype"),
    ("conv residual shape", "fastconv.conv2d_relu(x, w, residual=torch.randn(2, 6, 5, 5))", "ValueError", r"residual"),
    ("conv stride 0", "fastconv.conv2d_relu(x, w, stride=0)", "ValueError", r"stride"),
    ("conv stride str", "fastconv.conv2d_relu(x, w, stride='2')", "TypeError", r"stride"),
    ("conv padding negative", "fastconv.conv2d_relu(x, w, padding=-1)", "ValueError", r"padding"),
    ("conv padding same strided", "fastconv.conv2d_relu(x, w, stride=2, padding='same')", "ValueError", r"padding='same'"),
    ("conv padding bad str", "fastconv.conv2d_relu(x, w, padding='full')", "ValueError", r"padding"),
    ("conv groups float", "fastconv.conv2d_relu(x, w, groups=1.0)", "TypeError", r"groups must be an int"),
    ("conv relu int", "fastconv.conv2d_relu(x, w, relu=2)", "TypeError", r"relu must be a bool"),
    ("1x1 in_relu str", "fastconv.conv1x1(x, w1, in_relu='no')", "TypeError", r"in_relu must be a bool"),
    ("conv dilation 0", "fastconv.conv2d_relu(x, w, dilation=0)", "ValueError", r"dilation"),
    ("conv groups 0", "fastconv.conv2d_relu(x, w, groups=0)", "ValueError", r"groups"),
    ("conv groups indivisible", "fastconv.conv2d_relu(x, torch.randn(6, 2, 3, 3), groups=3)", "ValueError", r"groups"),
    ("conv kernel too big", "fastconv.conv2d_relu(x, torch.randn(6, 4, 9, 9))", "ValueError", r"kernel size"),
    ("conv out overlaps x", "fastconv.conv2d_relu(x, torch.randn(4, 4, 1, 1), out=x)", "RuntimeError", r"out overlaps.*\bx\b"),
    ("conv out overlaps residual", "r = torch.randn(2, 6, 6, 6); fastconv.conv2d_relu(x, w, residual=r, out=r)",
     "RuntimeError", r"out overlaps.*residual"),
    ("conv out slice overlaps input slice",
     "fastconv.conv2d_relu(buf[:, :4], torch.randn(4, 4, 1, 1), out=buf[:, 2:6])", "RuntimeError", r"overlaps"),
    ("conv out dtype", "fastconv.conv2d_relu(x, w, out=out.double())", "TypeError", r"out has dtype"),
    ("conv out shape", "fastconv.conv2d_relu(x, w, out=torch.empty(2, 6, 5, 5))", "ValueError", r"out must have shape"),
    ("conv out meta", "fastconv.conv2d_relu(x, w, out=torch.empty(2, 6, 6, 6, device='meta'))", "RuntimeError",
     r"out is on meta"),
    ("conv out expanded", "fastconv.conv2d_relu(x, w, out=torch.empty(1, 1, 1, 1).expand(2, 6, 6, 6))",
     "RuntimeError", r"out has elements that share memory"),
    ("conv out not tensor", "fastconv.conv2d_relu(x, w, out=3)", "TypeError", r"out must be a torch.Tensor"),
    ("conv out int", "fastconv.conv2d_relu(x, w, out=out.int())", "TypeError", r"out must be a floating"),
    ("conv op meta out", "torch.ops.fastconv.conv2d_relu_out(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True,"
     " torch.empty(2, 6, 6, 6, device='meta'))", "RuntimeError", r"out is on meta"),
    ("1x1 weight 3x3", "fastconv.conv1x1(x, w)", "ValueError", r"weight must be \[C_out, C_in\]"),
    ("1x1 weight channels", "fastconv.conv1x1(x, torch.randn(6, 3))", "ValueError", r"weight.*input channels"),
    ("1x1 in_scale shape", "fastconv.conv1x1(x, w1, in_scale=torch.randn(3))", "ValueError", r"in_scale"),
    ("1x1 in_shift dtype", "fastconv.conv1x1(x, w1, in_shift=torch.randn(4).double())", "TypeError", r"in_shift"),
    ("1x1 stride 0", "fastconv.conv1x1(x, w1, stride=0)", "ValueError", r"stride"),
    ("1x1 residual shape", "fastconv.conv1x1(x, w1, residual=torch.randn(2, 6, 4, 4))", "ValueError", r"residual"),
    ("1x1 out is x", "fastconv.conv1x1(x, torch.randn(4, 4))", None, None),  # sanity: the valid call passes
    ("1x1 out overlaps x", "fastconv.conv1x1(x, torch.randn(4, 4), out=x)", "RuntimeError", r"out overlaps.*\bx\b"),
    ("1x1 out overlaps slice", "fastconv.conv1x1(buf[:, :4], torch.randn(4, 4), out=buf[:, 3:7])", "RuntimeError",
     r"overlaps"),
    ("1x1 dense slice write ok", "fastconv.conv1x1(buf[:, :4], torch.randn(4, 4), out=buf[:, 4:8])", None, None),
    ("1x1 out dtype", "fastconv.conv1x1(x, w1, out=out1.half())", "TypeError", r"out has dtype"),
    ("1x1 out meta", "fastconv.conv1x1(x, w1, out=torch.empty(2, 6, 8, 8, device='meta'))", "RuntimeError",
     r"out is on meta"),
    ("1x1 op meta out", "torch.ops.fastconv.conv1x1_out(x, w1, None, None, None, None, False, [1, 1], True,"
     " torch.empty(2, 6, 8, 8, device='meta'))", "RuntimeError", r"out is on meta"),
    ("1x1 multi outs overlap", "o = torch.empty(2, 6, 8, 8); fastconv.ops.conv1x1_multi(x, [w1[:3], w1[3:]],"
     " outs=[o[:, :3], o[:, 2:5]])", "RuntimeError", r"outs\[1\] overlaps"),
    ("1x1 multi outs count", "fastconv.ops.conv1x1_multi(x, [w1[:3], w1[3:]], outs=[None])", "ValueError", r"outs"),
    ("1x1 multi outs meta", "fastconv.ops.conv1x1_multi(x, [w1[:3], w1[3:]],"
     " outs=[torch.empty(2, 3, 8, 8, device='meta'), None])", "RuntimeError", r"outs\[0\] is on meta"),
    ("pool kernel 0", "fastconv.max_pool2d(x, 0)", "ValueError", r"kernel_size"),
    ("pool stride negative", "fastconv.max_pool2d(x, 2, -1)", "ValueError", r"stride"),
    ("pool padding too big", "fastconv.max_pool2d(x, 2, padding=2)", "ValueError", r"padding"),
    ("pool ceil_mode str", "fastconv.max_pool2d(x, 2, ceil_mode='yes')", "TypeError", r"ceil_mode"),
    ("pool kernel too big", "fastconv.max_pool2d(x, 9)", "ValueError", r"larger than the input"),
    ("pool x 5-D", "fastconv.max_pool2d(x[None], 2)", "ValueError", r"\bx\b must be"),
    ("pool kernel triple", "fastconv.max_pool2d(x, (2, 2, 2))", "TypeError", r"kernel_size"),
    ("pool out overlaps x", "fastconv.max_pool2d(x, 1, out=x)", "RuntimeError", r"out overlaps.*\bx\b"),
    ("pool out dtype", "fastconv.max_pool2d(x, 2, out=torch.empty(2, 4, 4, 4, dtype=torch.bfloat16))", "TypeError",
     r"out has dtype"),
    ("pool out shape", "fastconv.max_pool2d(x, 2, out=torch.empty(2, 4, 3, 3))", "ValueError", r"out must have shape"),
    ("pool out meta", "fastconv.max_pool2d(x, 2, out=torch.empty(2, 4, 4, 4, device='meta'))", "RuntimeError",
     r"out is on meta"),
    ("pool op meta out", "torch.ops.fastconv.max_pool2d_out(x, [2, 2], [2, 2], [0, 0], [1, 1], False,"
     " torch.empty(2, 4, 4, 4, device='meta'))", "RuntimeError", r"out is on meta"),
    ("concat empty", "fastconv.dense_concat([])", "ValueError", r"features must not be empty"),
    ("concat not list", "fastconv.dense_concat(x)", "TypeError", r"features must be a list"),
    ("concat spatial", "fastconv.dense_concat([x, torch.randn(2, 4, 7, 8)])", "ValueError", r"features\[1\]"),
    ("concat batch", "fastconv.dense_concat([x, torch.randn(3, 4, 8, 8)])", "ValueError", r"features\[1\]"),
    ("concat dtype", "fastconv.dense_concat([x, x.half()])", "TypeError", r"features\[1\]"),
    ("concat 3-D", "fastconv.dense_concat([x, x[0]])", "ValueError", r"features\[1\]"),
    ("concat out overlaps", "fastconv.dense_concat([buf[:, :2], x], out=buf[:, 1:7])", "RuntimeError", r"overlaps"),
    ("concat out dtype", "fastconv.dense_concat([x, x], out=torch.empty(2, 8, 8, 8).double())", "TypeError", r"out"),
    ("concat out shape", "fastconv.dense_concat([x, x], out=torch.empty(2, 7, 8, 8))", "ValueError", r"out must have"),
    ("concat out meta", "fastconv.dense_concat([x, x], out=torch.empty(2, 8, 8, 8, device='meta'))", "RuntimeError",
     r"out is on meta"),
    ("concat op meta out", "torch.ops.fastconv.dense_concat_out([x, x], torch.empty(2, 8, 8, 8, device='meta'))",
     "RuntimeError", r"out is on meta"),
    ("backend unknown", "fastconv.use_backend('fast').__enter__()", "ValueError", r"unknown backend"),
]

MODULES = [
    ("Conv2dReLU channels", "fnn.Conv2dReLU(3, 8, 3)(x)", "ValueError", r"weight.*input channels.*x has 4"),
    ("Conv2dReLU residual", "fnn.Conv2dReLU(4, 6, 3)(x, residual=torch.randn(2, 6, 8, 8))", "ValueError", r"residual"),
    ("Conv2dReLU out dtype", "with torch.no_grad(): fnn.Conv2dReLU(4, 6, 3)(x, out=out.half())", "TypeError",
     r"out has dtype"),
    ("Conv2dReLU out grad mode", "fnn.Conv2dReLU(4, 6, 3)(x, out=out)", "RuntimeError",
     r"out= arguments don't support automatic differentiation"),
    ("Conv2dReLU out ok", "with torch.no_grad(): fnn.Conv2dReLU(4, 6, 3)(x, out=out)", None, None),
    ("Conv2dReLU dtype", "fnn.Conv2dReLU(4, 6, 3)(x.double())", "TypeError", r"weight has dtype"),
    ("Conv1x1 channels", "fnn.Conv1x1(3, 8)(x)", "ValueError", r"weight.*input channels"),
    # nn.Conv2d's constructor order: a third positional argument is the kernel size, not the stride
    ("Conv1x1 kernel_size", "fnn.Conv1x1(4, 8, 2)", "ValueError", r"kernel_size must be 1, got 2"),
    ("Conv1x1 padding", "fnn.Conv1x1(4, 8, 1, 1, 1)", "ValueError", r"padding must be 0"),
    ("Conv1x1 groups", "fnn.Conv1x1(4, 8, groups=2)", "ValueError", r"groups must be 1"),
    ("Conv1x1 bias", "fnn.Conv1x1(4, 8, 1, 1, 0, 1, 1, 2)", "TypeError", r"bias must be True or False"),
    ("Conv1x1 prologue", "fnn.Conv1x1(4, 8)(x, in_scale=torch.randn(8))", "ValueError", r"in_scale"),
    ("MaxPool2d too big", "fnn.MaxPool2d(9)(x)", "ValueError", r"larger than the input"),
    ("MaxPool2d indices", "fnn.MaxPool2d(2, return_indices=True)", "ValueError", r"return_indices"),
    # (an integer map pools as nn.MaxPool2d pools it: tests/test_convert_user_code.py; out= stays floating)
    ("MaxPool2d int out", "fnn.MaxPool2d(2)(x.long(), out=torch.empty(2, 4, 4, 4, dtype=torch.long))", "TypeError",
     r"\bx\b.*floating"),
    ("resnet18 eval channels", "fastconv.models.resnet18().eval()(torch.randn(1, 4, 32, 32))", "ValueError",
     r"ResNet: expected input of shape \[N, 3, H, W\]"),
    ("resnet18 train channels", "fastconv.models.resnet18().train()(torch.randn(2, 1, 32, 32))", "ValueError",
     r"ResNet: expected input of shape \[N, 3, H, W\]"),
    ("resnet18 3-D", "fastconv.models.resnet18().eval()(torch.randn(3, 32, 32))", "ValueError", r"expected input"),
    ("resnet18 not tensor", "fastconv.models.resnet18().eval()([1, 2])", "TypeError", r"input must be a tensor"),
    ("resnet18 int", "fastconv.models.resnet18().eval()(torch.zeros(1, 3, 32, 32, dtype=torch.long))", "TypeError",
     r"floating"),
    ("densenet121 channels", "fastconv.models.densenet121().eval()(torch.randn(1, 1, 32, 32))", "ValueError",
     r"DenseNet: expected input"),
    ("converted resnet18 channels",
     "import torchvision; m = fastconv.convert(torchvision.models.resnet18()); m(torch.randn(1, 4, 32, 32))",
     "ValueError", r"conv2d_relu: weight of shape \(64, 3, 7, 7\) expects 3 input channels.*x has 4"),
    ("converted vgg channels",
     "import torchvision; m = fastconv.convert(torchvision.models.vgg11()); m(torch.randn(1, 2, 32, 32))",
     "ValueError", r"weight.*expects 3 input channels"),
    ("convert not module", "fastconv.convert(3)", "TypeError", r"model must be an nn.Module"),
    ("convert dtype", "fastconv.convert(torch.nn.Conv2d(1, 1, 1), dtype=torch.int8)", "TypeError", r"dtype"),
]

PRIVATE = [
    # _conv2d_relu_cpu(x, weight, bias, residual, stride, padding4, dilation, groups, relu, out)
    ("c2d out shape", "torch.ops.fastconv._conv2d_relu_cpu(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True,"
     " torch.empty(2, 6, 5, 5))", "RuntimeError", r"out must have shape"),
    ("c2d out dtype", "torch.ops.fastconv._conv2d_relu_cpu(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True,"
     " out.double())", "RuntimeError", r"out has dtype"),
    ("c2d out 3-D", "torch.ops.fastconv._conv2d_relu_cpu(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True,"
     " out[0])", "RuntimeError", r"out must be 4-D"),
    ("c2d out overlaps x", "torch.ops.fastconv._conv2d_relu_cpu(x, torch.randn(4, 4, 1, 1), None, None, [1, 1],"
     " [0, 0, 0, 0], [1, 1], 1, True, x)", "RuntimeError", r"single memory location"),
    ("c2d out expanded", "torch.ops.fastconv._conv2d_relu_cpu(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1,"
     " True, torch.empty(1, 1, 1, 1).expand(2, 6, 6, 6))", "RuntimeError", r"more than one element"),
    ("c2d padding 2", "torch.ops.fastconv._conv2d_relu_cpu(x, w, None, None, [1, 1], [0, 0], [1, 1], 1, True, out)",
     "RuntimeError", r"padding"),
    ("c2d weight channels", "torch.ops.fastconv._conv2d_relu_cpu(x, torch.randn(6, 3, 3, 3), None, None, [1, 1],"
     " [0, 0, 0, 0], [1, 1], 1, True, out)", "RuntimeError", r"input channels"),
    ("c2d int x", "torch.ops.fastconv._conv2d_relu_cpu(x.long(), w.long(), None, None, [1, 1], [0, 0, 0, 0], [1, 1],"
     " 1, True, out.long())", "RuntimeError", r"floating"),
    ("c2d bias len", "torch.ops.fastconv._conv2d_relu_cpu(x, w, torch.randn(2), None, [1, 1], [0, 0, 0, 0], [1, 1],"
     " 1, True, out)", "RuntimeError", r"bias must have shape"),
    ("c2d stride 0", "torch.ops.fastconv._conv2d_relu_cpu(x, w, None, None, [0, 1], [0, 0, 0, 0], [1, 1], 1, True,"
     " out)", "RuntimeError", r"stride must be positive"),
    # _conv2d_winograd_cpu(x channels_last, u [16 or 36, C, K], bias, residual, padding4, relu, out, weight)
    ("wino x NCHW", "torch.ops.fastconv._conv2d_winograd_cpu(x, torch.randn(16, 4, 6), None, None, [0, 0, 0, 0],"
     " True, out)", "RuntimeError", r"channels_last"),
    ("wino u shape", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(9, 4, 6), None, None, [0, 0, 0, 0], True, out)", "RuntimeError", r"\[16 or 36, C_in, C_out\]"),
    ("wino weight shape", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 4, 6), None, None, [0, 0, 0, 0], True, out, torch.randn(6, 4, 5, 5))", "RuntimeError",
     r"weight must be the float32 CPU \[6, 4, 3, 3\]"),
    ("wino u strided", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 6, 4).transpose(1, 2), None, None, [0, 0, 0, 0], True, out)", "RuntimeError", r"contiguous"),
    ("wino out shape", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 4, 6), None, None, [1, 1, 1, 1], True, out)", "RuntimeError", r"out must be"),
    ("wino out expanded", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 4, 6), None, None, [0, 0, 0, 0], True, torch.empty(1, 1, 1, 1).expand(2, 6, 6, 6))",
     "RuntimeError", r"more than one element"),
    ("wino padding", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 4, 6), None, None, [0, -1, 0, 0], True, out)", "RuntimeError", r"non-negative"),
    ("wino double", "torch.ops.fastconv._conv2d_winograd_cpu(x.double().contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 4, 6).double(), None, None, [0, 0, 0, 0], True, out.double())", "RuntimeError", r"float32"),
    ("wino residual", "torch.ops.fastconv._conv2d_winograd_cpu(x.contiguous(memory_format=torch.channels_last),"
     " torch.randn(16, 4, 6), None, torch.randn(2, 6, 5, 5), [0, 0, 0, 0], True, out)", "RuntimeError", r"residual"),
    # _conv1x1_cpu(x, weight2d, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs)
    ("1x1 no outs", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, None, None, None, False, [1, 1], True, [])",
     "RuntimeError", r"outs must hold"),
    ("1x1 outs shape", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, None, None, None, False, [1, 1], True,"
     " [torch.empty(2, 6, 7, 8)])", "RuntimeError", r"outs\[0\] has shape"),
    ("1x1 outs channels", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, None, None, None, False, [1, 1],"
     " True, [torch.empty(2, 5, 8, 8)])", "RuntimeError", r"channels in all"),
    ("1x1 outs dtype", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, None, None, None, False, [1, 1], True,"
     " [out1.half()])", "RuntimeError", r"x's dtype"),
    ("1x1 weight 4-D", "torch.ops.fastconv._conv1x1_cpu(x, w1, None, None, None, None, False, [1, 1], True, [out1])",
     "RuntimeError", r"weight must be a 2-D"),
    ("1x1 out overlaps x", "torch.ops.fastconv._conv1x1_cpu(x, torch.randn(4, 4), None, None, None, None, False,"
     " [1, 1], True, [x])", "RuntimeError", r"single memory location"),
    ("1x1 outs overlap each other", "o = torch.empty(2, 3, 8, 8); torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1),"
     " None, None, None, None, False, [1, 1], True, [o, o])", "RuntimeError", r"single memory location"),
    ("1x1 out overlaps bias", "o = torch.empty(2, 6, 8, 8); torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1),"
     " o.view(-1)[:6], None, None, None, False, [1, 1], True, [o])", "RuntimeError", r"single memory location"),
    ("1x1 out expanded", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, None, None, None, False, [1, 1],"
     " True, [torch.empty(1, 1, 1, 1).expand(2, 6, 8, 8)])", "RuntimeError", r"more than one element"),
    ("1x1 residual two outs", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, torch.randn(2, 3, 8, 8), None,"
     " None, False, [1, 1], True, [torch.empty(2, 3, 8, 8), torch.empty(2, 3, 8, 8)])", "RuntimeError",
     r"residual needs exactly one out"),
    ("1x1 in_scale len", "torch.ops.fastconv._conv1x1_cpu(x, w1.flatten(1), None, None, torch.randn(3), None, False,"
     " [1, 1], True, [out1])", "RuntimeError", r"in_scale"),
    ("1x1 int x", "torch.ops.fastconv._conv1x1_cpu(x.int(), w1.flatten(1).int(), None, None, None, None, False,"
     " [1, 1], True, [out1.int()])", "RuntimeError", r"x must be float16"),
    # _max_pool2d_cpu(x, kernel, stride, padding, dilation, out)
    ("pool out batch", "torch.ops.fastconv._max_pool2d_cpu(x, [2, 2], [2, 2], [0, 0], [1, 1],"
     " torch.empty(1, 4, 4, 4))", "RuntimeError", r"batch and channels"),
    ("pool out spatial", "torch.ops.fastconv._max_pool2d_cpu(x, [2, 2], [2, 2], [0, 0], [1, 1],"
     " torch.empty(2, 4, 40, 40))", "RuntimeError", r"not the pooled shape"),
    ("pool out dtype", "torch.ops.fastconv._max_pool2d_cpu(x, [2, 2], [2, 2], [0, 0], [1, 1],"
     " torch.empty(2, 4, 4, 4).double())", "RuntimeError", r"out has dtype"),
    ("pool out overlaps x", "torch.ops.fastconv._max_pool2d_cpu(x, [1, 1], [1, 1], [0, 0], [1, 1], x)", "RuntimeError",
     r"single memory location"),
    ("pool out expanded", "torch.ops.fastconv._max_pool2d_cpu(x, [2, 2], [2, 2], [0, 0], [1, 1],"
     " torch.empty(1, 1, 1, 1).expand(2, 4, 4, 4))", "RuntimeError", r"more than one element"),
    ("pool kernel 1 elem", "torch.ops.fastconv._max_pool2d_cpu(x, [2], [2, 2], [0, 0], [1, 1], torch.empty(2, 4, 4, 4))",
     "RuntimeError", r"2 elements"),
    ("pool stride 0", "torch.ops.fastconv._max_pool2d_cpu(x, [2, 2], [0, 2], [0, 0], [1, 1], torch.empty(2, 4, 4, 4))",
     "RuntimeError", r"positive"),
    ("pool int", "torch.ops.fastconv._max_pool2d_cpu(x.long(), [2, 2], [2, 2], [0, 0], [1, 1],"
     " torch.empty(2, 4, 4, 4, dtype=torch.long))", "NotImplementedError|RuntimeError",  # torch 2.6: RuntimeError
     r"not implemented for 'Long'"),
    # _dense_concat_cpu(features, out)
    ("concat out channels", "torch.ops.fastconv._dense_concat_cpu([x, x], torch.empty(2, 7, 8, 8))", "RuntimeError",
     r"more channels than out"),
    ("concat out extra channels", "torch.ops.fastconv._dense_concat_cpu([x, x], torch.empty(2, 9, 8, 8))",
     "RuntimeError", r"8 channels but out has 9"),
    ("concat dtype", "torch.ops.fastconv._dense_concat_cpu([x, x.half()], torch.empty(2, 8, 8, 8))", "RuntimeError",
     r"out's dtype"),
    ("concat spatial", "torch.ops.fastconv._dense_concat_cpu([x, torch.randn(2, 4, 8, 7)], torch.empty(2, 8, 8, 8))",
     "RuntimeError", r"does not match out"),
    ("concat out 3-D", "torch.ops.fastconv._dense_concat_cpu([x], x[0])", "RuntimeError", r"4-D"),
    ("concat out overlaps", "o = torch.randn(2, 8, 8, 8); torch.ops.fastconv._dense_concat_cpu([o[:, :4], o[:, 4:]], o)",
     None, None),  # slices of out (the DenseNet pattern) are "too hard" for ATen's check: allowed, and correct
    ("concat out is feature", "torch.ops.fastconv._dense_concat_cpu([x], x)", "RuntimeError", r"single memory location"),
    ("concat out expanded", "torch.ops.fastconv._dense_concat_cpu([x], torch.empty(1, 1, 1, 1).expand(2, 4, 8, 8))",
     "RuntimeError", r"more than one element"),
]

CHILD = r"""
import json, sys, traceback
import warnings
warnings.simplefilter("ignore")
exec(SETUP)
results = []
for label, code in json.loads(sys.stdin.read()):
    try:
        exec(code)
        results.append([label, None, ""])
    except Exception as exc:
        results.append([label, type(exc).__name__, str(exc)])
print("RESULTS " + json.dumps(results))
"""


def _run_child(cases):
    script = "SETUP = " + repr(SETUP) + "\n" + CHILD
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps([[c[0], c[1]] for c in cases]),
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")]
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {label: (name, msg) for label, name, msg in json.loads(line[-1][len("RESULTS "):])}


def _check(cases):
    import re

    got = _run_child(cases)
    failures = []
    for label, code, want, pattern in cases:
        name, msg = got[label]
        if want is None:
            if name is not None:
                failures.append(f"{label}: expected no error, got {name}: {msg}")
        elif name not in want.split("|") or not re.search(pattern, msg, re.S):
            failures.append(f"{label}: expected {want} matching {pattern!r}, got {name}: {msg[:300]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("backend", ["reference", "cpu"] + (["triton"] if "triton" in fastconv.available_backends()
                                                             else []))
def test_functional_bad_calls(backend):
    if backend == "cpu" and not HAS_EXT:
        pytest.skip("C++ extension not built")
    cases = [(label, f"with fastconv.use_backend({backend!r}):\n" + textwrap.indent(code, "    "), want, pattern)
             for label, code, want, pattern in FUNCTIONAL]
    _check(cases)


def test_module_and_model_bad_calls():
    _check(MODULES)


@pytest.mark.skipif(not HAS_EXT, reason="C++ extension not built")
def test_private_cpu_ops_bad_calls():
    _check(PRIVATE)
