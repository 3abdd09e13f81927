"""One definition per benchmarked op, shared by the pytest-benchmark suites and gpu_ops.py:
inputs at a shape, the PyTorch baseline (eager PyTorch as a user writes the unfused op:
``F.relu(F.conv2d(x, w, b, ...))`` in the input's memory format, cuDNN on a GPU), the oracle the
errors are measured against (fastconv.ops.reference, the tests' oracle, in fp32, so the two cannot
drift), the fastconv call, and the work done (FLOPs; ideal bytes moved).

(Until 2026-11-29 the conv baseline was the oracle itself, which computes on an NCHW copy and
applies the ReLU separately: on channels_last GPU inputs that timed a layout copy as well, so the
conv2d_relu "x torch" ratios measured before then flatter fastconv.)"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops import reference

from . import shapes as S

N_INPUTS = 3  # preallocated inputs cycled through the timed calls, so no call finds its input in cache


@dataclass
class Case:
    op: str
    shape: object
    inputs: List[tuple]          # N_INPUTS argument tuples
    torch_fn: Callable
    fastconv_fn: Callable
    flops: float                 # 0 for memory-bound ops
    moved: float                 # ideal bytes: inputs + weights + outputs, each once
    ref_fn: Optional[Callable] = None  # the oracle, run in fp32 (torch_fn when None)


def _randn(shape, gen, device, dtype, channels_last, scale=1.0):
    t = (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)
    if channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def make_case(shape, batch: int, device: str, dtype: torch.dtype, channels_last: bool, seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    size = torch.empty((), dtype=dtype).element_size()

    def x(c, h, w):
        return _randn((batch, c, h, w), gen, device, dtype, channels_last)

    def param(*shape_, scale=1.0):
        return _randn(shape_, gen, device, dtype, False, scale)

    if isinstance(shape, S.Conv):
        (kh, kw), (ph, pw), cin, cout = shape.kernel, shape.padding, shape.in_channels, shape.out_channels
        fan_in = cin * kh * kw
        inputs = [(x(cin, shape.height, shape.width), param(cout, cin, kh, kw, scale=fan_in ** -0.5), param(cout))
                  for _ in range(N_INPUTS)]
        oh, ow = shape.out_hw
        return Case("conv2d_relu", shape, inputs,
                    lambda x_, w, b: F.relu(F.conv2d(x_, w, b, shape.stride, shape.padding)),
                    lambda x_, w, b: fastconv.conv2d_relu(x_, w, b, shape.stride, shape.padding),
                    2 * shape.macs(batch),
                    size * (batch * cin * shape.height * shape.width + cout * fan_in + cout + batch * cout * oh * ow),
                    ref_fn=lambda x_, w, b: reference.conv2d_relu(x_, w, b, None, list(shape.stride),
                                                                  [ph, ph, pw, pw], [1, 1], 1, True))
    if isinstance(shape, S.Conv1x1):
        s, cin, cout = shape.stride, shape.in_channels, shape.out_channels
        inputs = [(x(cin, shape.height, shape.width), param(cout, cin, 1, 1, scale=cin ** -0.5), param(cout))
                  for _ in range(N_INPUTS)]
        oh, ow = shape.out_hw
        return Case("conv1x1", shape, inputs,
                    lambda x_, w, b: F.relu(F.conv2d(x_, w, b, s)),
                    lambda x_, w, b: fastconv.conv1x1(x_, w, b, s, relu=True),
                    2 * shape.macs(batch),
                    size * (batch * cin * shape.height * shape.width + cout * cin + cout + batch * cout * oh * ow),
                    ref_fn=lambda x_, w, b: reference.conv1x1(x_, w, b, None, None, None, False, [s, s], True))
    if isinstance(shape, S.Conv1x1Prologue):
        conv = shape.conv
        s, cin, cout = conv.stride, conv.in_channels, conv.out_channels
        # folded BatchNorm: scale around 1, shift around 0 (so the ReLU clips about half)
        inputs = [(x(cin, conv.height, conv.width), param(cout, cin, 1, 1, scale=cin ** -0.5), param(cout),
                   (param(cin, scale=0.2) + 1.0), param(cin)) for _ in range(N_INPUTS)]
        oh, ow = conv.out_hw
        return Case("conv1x1", shape, inputs,
                    # eager DenseNet: BatchNorm (eval: a per-channel affine map) and ReLU, then the conv
                    lambda x_, w, b, sc, sh: F.relu(F.conv2d(F.relu(x_ * sc.view(1, -1, 1, 1) + sh.view(1, -1, 1, 1)),
                                                             w, b, s)),
                    lambda x_, w, b, sc, sh: fastconv.conv1x1(x_, w, b, s, relu=True, in_scale=sc, in_shift=sh,
                                                              in_relu=True),
                    2 * shape.macs(batch),
                    size * (batch * cin * conv.height * conv.width + cout * cin + cout + 2 * cin + batch * cout * oh * ow),
                    ref_fn=lambda x_, w, b, sc, sh: reference.conv1x1(x_, w, b, None, sc, sh, True, [s, s], True))
    if isinstance(shape, S.Pool):
        k, s, p, c = shape.kernel, shape.stride, shape.padding, shape.channels
        inputs = [(x(c, shape.height, shape.width),) for _ in range(N_INPUTS)]
        oh, ow = shape.out_hw
        return Case("max_pool2d", shape, inputs,
                    lambda x_: F.max_pool2d(x_, k, s, p, 1, shape.ceil_mode),
                    lambda x_: fastconv.max_pool2d(x_, k, s, p, 1, shape.ceil_mode),
                    0.0, size * batch * c * (shape.height * shape.width + oh * ow))
    if isinstance(shape, S.DenseBlock):
        from torchvision.models.densenet import _DenseBlock

        from fastconv._bench import randomize_batchnorm

        block = randomize_batchnorm(_DenseBlock(shape.num_layers, shape.in_channels, shape.bn_size,
                                                shape.growth_rate, 0.0), gen).eval().to(device)
        fast = fastconv.convert(block, dtype=dtype, channels_last=channels_last)
        eager = copy.deepcopy(block).to(dtype)  # block stays fp32: the reference
        if channels_last:
            eager = eager.to(memory_format=torch.channels_last)
        inputs = [(x(shape.in_channels, shape.height, shape.width),) for _ in range(N_INPUTS)]
        moved = size * batch * shape.height * shape.width * (shape.in_channels + shape.out_channels)
        return Case("dense_block", shape, inputs, eager, fast, 2 * shape.macs(batch), moved, ref_fn=block)
    raise TypeError(f"no benchmark case for {shape!r}")


def torch_result_fp32(case: Case) -> torch.Tensor:
    """The baseline's result in fp32 (no TF32), on the first inputs: what errors are measured against."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            return (case.ref_fn or case.torch_fn)(*(a.float() for a in case.inputs[0]))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return ((y - ref).norm() / ref.norm().clamp_min(1e-300)).item()
