"""The ``torch`` tactic: PyTorch's own convolution with fastconv's fusion around it.

On the CPU the conv is oneDNN's ``mkldnn::_convolution_pointwise`` (``F.conv2d`` for one input
channel and on torch < 2.7, where oneDNN's own op goes wrong: see ``_use_onednn``) with BN already
folded into the weights and the residual as oneDNN's binary ``"add"`` post-op, and float32 (or
bfloat16, below) weights handed over in oneDNN's blocked layout, reordered once per weight
(``_weight_cache``) instead of on every call. oneDNN returns a fresh tensor, so writing ``out``
(possibly a channel slice) costs one pass, which also applies the ReLU (``clamp_min(y, 0, out=o)``:
NaN-propagating like torch.relu, which oneDNN's ``"relu"`` post-op is not). That pass is counted in
``KernelStats.copied_bytes``. Elsewhere (CUDA: cuDNN) the conv is ``F.conv2d`` with the bias in it,
the residual added in place, and the same ReLU-and-copy pass writes ``out``. A prologue
(``relu(x * scale + shift)``, DenseNet's BN-ReLU) is materialized once before the conv.

16-bit on the CPU: bfloat16 runs on oneDNN's own bfloat16 kernel where the CPU executes bfloat16
(``NATIVE_BF16``: AVX512-BF16 or AMX; float32 accumulation, the result rounded once), 2-3x faster
than the same conv computed in float32 on an AMX CPU. Every other 16-bit CPU conv is computed in
float32 and rounded once, as the reference does: float16 on oneDNN measured slower than float32 on
that CPU (it has no AMX-FP16), and the ``F.conv2d`` path's own 16-bit kernels compute some convs
wrong (see ``conv``).
"""
from __future__ import annotations

import functools
import os
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


# whether torch was built with oneDNN (fixed); whether it is enabled (torch.backends.mkldnn.flags) is read per call
_MKLDNN_BUILT = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
# the two overloads, resolved once: calling the packet (torch.ops.mkldnn._convolution_pointwise)
# matches the arguments against each overload's schema on every call
_POINTWISE = torch.ops.mkldnn._convolution_pointwise.default if _MKLDNN_BUILT else None
_POINTWISE_BINARY = torch.ops.mkldnn._convolution_pointwise.binary if _MKLDNN_BUILT else None


def _use_onednn(x: torch.Tensor) -> bool:
    # Not for one input channel: there oneDNN computes wrong values, silently, when the output is
    # one column wide and the width stride >= 2 (x [2,1,3,2], w [1,1,2,4], stride (1,2), padding
    # (0,1): every output row after the first), on 2.7 to 2.11 with any weight and on 2.14/2.15
    # with a prepacked one (about 1 in 10 such convs in a random probe; grouped convs with one
    # channel per group are right). Eager F.conv2d on an NCHW input computes them (see conv).
    return (ONEDNN_POINTWISE and _MKLDNN_BUILT and x.device.type == "cpu" and torch.backends.mkldnn.enabled
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16) and x.shape[1] > 1)


def _cpu_executes_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (AVX512-BF16 or AMX): elsewhere oneDNN emulates
    bfloat16, slower than float32."""
    has = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731
    return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")


# bfloat16 convs on oneDNN's bfloat16 kernel: where the CPU executes bfloat16, unless
# FASTCONV_ONEDNN_BF16=0 (read on every call, like FASTCONV_ONEDNN_PREPACK; auto's cache key has it)
NATIVE_BF16 = _cpu_executes_bf16()


def _out_size(size, taps, padding, stride, dilation) -> List[int]:
    """The conv's output height and width; size and taps (height, width), padding [top, bottom, left, right]."""
    return [(size[d] + padding[2 * d] + padding[2 * d + 1] - dilation[d] * (taps[d] - 1) - 1) // stride[d] + 1
            for d in range(2)]


def _has_dead_window(size: int, taps: int, stride: int, lo: int, hi: int, dilation: int) -> bool:
    """Whether some output position along one dimension reads only padding (every tap outside the input)."""
    out = (size + lo + hi - dilation * (taps - 1) - 1) // stride + 1
    return any(all(not 0 <= o * stride - lo + t * dilation < size for t in range(taps)) for o in range(out))


@functools.lru_cache(maxsize=4096)
def _onednn_rewrite(size: tuple, taps: tuple, padding: tuple, stride: tuple, dilation: tuple):
    """None where oneDNN's bfloat16 conv can take the call as it is, else the window to cut each
    dimension's padded input to (None: the whole padded input). Cached: it runs on every call."""
    dims = [(size[d], taps[d], stride[d], padding[2 * d], padding[2 * d + 1], dilation[d]) for d in range(2)]
    spans = [dilation[d] * (taps[d] - 1) + 1 for d in range(2)]
    outs = _out_size(size, taps, padding, stride, dilation)
    one_strided = [outs[d] == 1 and stride[d] > 1 for d in range(2)]
    over_padded = any(max(lo, hi) > (span - 1) // 2 for (_, _, _, lo, hi, _), span in zip(dims, spans))
    if not (any(one_strided) or over_padded or any(_has_dead_window(*dim) for dim in dims)):
        return None
    return tuple(spans[d] if one_strided[d] else None for d in range(2))


def _steer_onednn(x: torch.Tensor, weight: torch.Tensor, padding: List[int], stride: List[int],
                  dilation: List[int]):
    """(x, padding, stride) for oneDNN's bfloat16 conv, steering around its bugs (torch 2.7 to 2.15,
    eager F.conv2d too, any layout, with or without a prepacked weight; benchmarks/RESULTS.md, "The
    torch tactic in bfloat16"):

    - wrong values, silently, for a one-wide output with a width stride >= 2 (about 1 in 7 such
      convs): x [1,8,10,3], w [4,2,3,3], groups 4, stride (1,3), padding 1. A one-wide (or one-tall)
      output reads one window, so the stride there is irrelevant: the input is padded and cut to
      that window and the stride set to 1. (float32 has this bug too, rarely: see conv.)
    - wrong values with more padding than a "same" conv has (x [3,96,11,10], w [24,96,1,2],
      stride (2,1), padding (0,2), dilation (1,2)), and SIGSEGV when some output reads only padding
      (x [2,3,1,7], w [16,3,2,2], stride (2,1), padding (1,2), dilation 2: rows -1 and 1 of a
      one-row input). The padding is made explicit (F.pad); none of the five networks pads so.
    """
    windows = _onednn_rewrite(tuple(x.shape[2:]), tuple(weight.shape[2:]), tuple(padding), tuple(stride),
                              tuple(dilation))
    if windows is None:
        return x, padding, stride
    top, bottom, left, right = padding
    x = F.pad(x, [left, right, top, bottom])
    stride = list(stride)
    for d, window in enumerate(windows):
        if window is not None:
            x, stride[d] = x.narrow(2 + d, 0, window), 1
    return x, [0, 0, 0, 0], stride


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
        part = y if len(outs) == 1 else y.narrow(1, c0, o.shape[1])
        if relu and part.dtype != o.dtype:  # computed in float32: round once (relu commutes with it)
            part = part.to(o.dtype)
        if relu:
            torch.clamp_min(part, 0, out=o)
        else:
            o.copy_(part)
        c0 += o.shape[1]
    _autotune.count_copy(y.numel() * outs[0].element_size())


def _prologue(x: torch.Tensor, in_scale: Optional[torch.Tensor], in_shift: Optional[torch.Tensor],
              in_relu: bool) -> torch.Tensor:
    """relu?(x * in_scale + in_shift) per channel: one pass (``addcmul``), and the ReLU in place.
    PyTorch computes 16-bit elementwise ops in float32 and rounds once, so a bfloat16 x gets one
    rounding, of the conv's operand, as a fused kernel's load would."""
    scale = None if in_scale is None else in_scale.view(1, -1, 1, 1)
    shift = None if in_shift is None else in_shift.view(1, -1, 1, 1)
    if scale is not None and shift is not None:
        x = torch.addcmul(shift, x, scale)
    elif scale is not None:
        x = x * scale
    elif shift is not None:
        x = x + shift
    else:
        return torch.relu(x) if in_relu else x
    return x.relu_() if in_relu else x


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
    # torch 2.11's oneDNN cannot build the binary post-op's memory descriptor ("could not create a
    # memory") for one output channel, nor (2.6 to 2.11) for a 1x1 output with a prepacked weight or a
    # channels_last input (ResNet's layer4 on a 32x32 input): the residual is added after the conv
    out_hw = _out_size(x.shape[2:], weight.shape[2:], padding, stride, dilation)
    residual_after = residual is not None and (weight.shape[0] == 1 or out_hw == [1, 1])
    # ... and there a bfloat16 conv would be rounded before the residual is added: float32 instead
    native_bf16 = (onednn and x.dtype == torch.bfloat16 and NATIVE_BF16 and not residual_after
                   and os.environ.get("FASTCONV_ONEDNN_BF16", "1") != "0")
    if onednn and not native_bf16 and ((weight.shape[0] == 1 and out_hw == [1, 1]) or _onednn_rewrite(
            tuple(x.shape[2:]), tuple(weight.shape[2:]), tuple(padding), tuple(stride), tuple(dilation)) is not None):
        # float32, wrong values, silently, with a prepacked weight or a channels_last input: some
        # one-wide outputs with a width stride >= 2 (x [2,128,19,2], w [5,128,1,2], stride 2; about 1
        # in 1000 such convs with many channels; torch 2.7 to 2.14), as for one input channel; and one
        # output channel with the kernel covering the input (x [2,4,9,9], w [1,4,9,9]: 1 in 4 such
        # convs; 2.14 and 2.15). Rewriting the first kind as _steer_onednn does for bfloat16 can make the second.
        # And SIGSEGV, as in bfloat16, where some output window reads only padding (with a bias; a
        # prepacked weight or a channels_last input: x [2,3,5,1] NCHW, w [1,3,1,3], stride (5,6),
        # padding 5, dilation (1,2); about 1 in 300 small convs padded more than "same"; torch 2.14).
        # F.conv2d's NCHW path computes all of them; none of the five networks' convs comes here.
        onednn = False
    # not the per-call float32 copy of a 16-bit weight
    cacheable = weight.dtype == torch.float32 or native_bf16
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16) and not native_bf16:
        # computed in float32 and rounded once, as the reference does. Eager's own 16-bit CPU conv
        # is not safe where oneDNN's op is not used: it shares oneDNN's one-input-channel bug
        # (_use_onednn) on 2.14, and on 2.6 it computed 1-wide outputs with a width stride wrong
        # (bf16, 2 and 4 input channels too) and segfaulted (fp16, 1-wide kernels with padding)
        # (the F.conv2d path wants a row-major x below: one copy makes it float32 and row-major)
        x = x.to(torch.float32, memory_format=torch.preserve_format if onednn else torch.contiguous_format)
        weight = weight.float()
        bias = None if bias is None else bias.float()
        residual = None if residual is None else residual.float()
        in_scale = None if in_scale is None else in_scale.float()
        in_shift = None if in_shift is None else in_shift.float()
    if in_scale is not None or in_shift is not None or in_relu:
        if stride != [1, 1] and tuple(weight.shape[2:]) == (1, 1) and padding == [0, 0, 0, 0]:
            x, stride = x[:, :, ::stride[0], ::stride[1]], [1, 1]  # a 1x1 conv: subsample first
        x = _prologue(x, in_scale, in_shift, in_relu)
    if not onednn and x.device.type == "cpu":
        # F.conv2d on a row-major copy: eager's channels_last CPU path goes wrong where oneDNN's op
        # does. One input channel (see _use_onednn; an input with strides [HW, 1, W, 1], or a view
        # eager copies so: 2.7 to 2.14), and on 2.6 narrow padded inputs (SIGSEGV: x [2,3,8,1],
        # w [2,3,3,1], stride 2, padding 1; x [2,3,8,1], w [2,3,4,2], stride 3, padding (1,2)).
        # Its NCHW path computed every probed conv right.
        x = _plain_strides(x.contiguous())
    if native_bf16:
        x, padding, stride = _steer_onednn(x, weight, padding, stride, dilation)
    top, bottom, left, right = padding
    if top == bottom and left == right:
        pad = [top, left]
    else:
        x = F.pad(x, [left, right, top, bottom])
        pad = [0, 0]
    if onednn:
        x, residual = _plain_strides(x), _plain_strides(residual)
        # oneDNN's op reads the bias as a dense vector whatever its stride (a bias[::2] view read
        # as bias[:3]: wrong values, silently); F.conv2d below honours the stride
        bias = None if bias is None else bias.contiguous()
        packed = _weight_cache.onednn_blocked(weight, pad, stride, dilation, groups, x.shape) if cacheable else None
        weight = weight if packed is None else packed
        # bias and residual are oneDNN post-ops (the residual added in float32 before the one
        # rounding, bfloat16 too); its "relu" post-op is not used because it maps NaN to 0
        # (fastconv's ReLU, like torch.relu, propagates NaN): the ReLU rides on the copy into out
        if residual is None or residual_after:
            y = _POINTWISE(x, weight, bias, pad, stride, dilation, groups, "none", [], "")
            if residual is not None:
                y.add_(residual)
        else:
            y = _POINTWISE_BINARY(x, residual, weight, bias, pad, stride, dilation, groups, "add", None, None, [],
                                  None)
    else:
        y = F.conv2d(x, weight, bias, stride, pad, dilation, groups)
        if residual is not None:
            y.add_(residual)
    _write(y, outs, relu)
