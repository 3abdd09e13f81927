"""fastconv.conv2d_relu: relu(conv2d(x, weight) + bias + residual) in one kernel.

Two public ops are defined here with torch.library (so they exist without the C++
extension): ``fastconv::conv2d_relu`` (functional) and ``fastconv::conv2d_relu_out`` (writes
into ``out``, which may be a channel slice of a larger NCHW or NHWC buffer). Both check their
arguments, then hand ``out`` to the kernel of the current backend: every backend kernel has the
same out-variant contract, so allocation and layout decisions live in one place.
"""
from __future__ import annotations

import os
import threading
from typing import List, Optional, Sequence, Union

import torch

from .. import _autotune
from . import _checks, _torch_tactic, _vmap, _weight_cache, reference

OP = "conv2d_relu"


# ---------------------------------------------------------------------------------------------
# argument normalization and checks

def normalize_padding(padding, kernel: Sequence[int], stride: List[int], dilation: List[int]) -> List[int]:
    """``padding`` (int, pair, "same" or "valid") as [top, bottom, left, right]."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding == "same":
            if stride != [1, 1]:
                raise ValueError(f"fastconv.{OP}: padding='same' is not supported for strided convolutions (stride={stride})")
            sides = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                sides += [total // 2, total - total // 2]  # PyTorch puts the odd element on the far side
            return sides
        raise ValueError(f"fastconv.{OP}: padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
    ph, pw = _checks.pair(OP, padding, "padding")
    return [ph, ph, pw, pw]


def output_shape(x_shape, w_shape, stride, padding, dilation) -> List[int]:
    n, _, h, w = x_shape
    c_out, _, kh, kw = w_shape
    oh = (h + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return [n, c_out, oh, ow]


def check_args(x, weight, bias, residual, stride, padding, dilation, groups) -> List[int]:
    """Validate normalized arguments; return the output shape."""
    _checks.check_tensor(OP, x, "x", ndims=(4,))
    _checks.check_tensor(OP, weight, "weight", ndims=(4,))
    _checks.check_like(OP, weight, "weight", x)
    _checks.check_like(OP, bias, "bias", x)
    _checks.check_like(OP, residual, "residual", x)
    if len(stride) != 2 or len(dilation) != 2 or len(padding) != 4:
        raise ValueError(f"fastconv.{OP}: expected 2 strides, 4 paddings and 2 dilations, got {stride}, {padding}, {dilation}")
    if any(s <= 0 for s in stride):
        raise ValueError(f"fastconv.{OP}: stride must be positive, got {stride}")
    if any(p < 0 for p in padding):
        raise ValueError(f"fastconv.{OP}: padding must be non-negative, got {padding}")
    if any(d <= 0 for d in dilation):
        raise ValueError(f"fastconv.{OP}: dilation must be positive, got {dilation}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"fastconv.{OP}: groups must be a positive int, got {groups!r}")
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in % groups != 0:
        raise ValueError(f"fastconv.{OP}: input channels ({c_in}) must be divisible by groups ({groups})")
    if c_out % groups != 0:
        raise ValueError(f"fastconv.{OP}: weight's output channels ({c_out}) must be divisible by groups ({groups})")
    if weight.shape[1] * groups != c_in:
        raise ValueError(
            f"fastconv.{OP}: weight of shape {tuple(weight.shape)} expects {weight.shape[1] * groups} input channels "
            f"with groups={groups}, but x has {c_in} (x shape {tuple(x.shape)})"
        )
    if weight.shape[2] == 0 or weight.shape[3] == 0 or c_out == 0:
        raise ValueError(f"fastconv.{OP}: weight must have a non-empty kernel and output channels, got {tuple(weight.shape)}")
    _checks.check_shape(OP, bias, "bias", [c_out])
    if x.shape[0] > 0 and c_in > 0 and (x.shape[2] == 0 or x.shape[3] == 0):
        # as torch.nn.functional.conv2d: padding would otherwise make a non-empty output of bias alone
        raise ValueError(f"fastconv.{OP}: x must have non-empty spatial dimensions (only the batch or the "
                         f"channels may be 0), got shape {tuple(x.shape)}")
    padded = [x.shape[2] + padding[0] + padding[1], x.shape[3] + padding[2] + padding[3]]
    span = [dilation[0] * (weight.shape[2] - 1) + 1, dilation[1] * (weight.shape[3] - 1) + 1]
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(
            f"fastconv.{OP}: kernel size {tuple(weight.shape[2:])} with dilation {dilation} spans {span}, larger than "
            f"the padded input {padded}"
        )
    shape = output_shape(x.shape, weight.shape, stride, padding, dilation)
    _checks.check_shape(OP, residual, "residual", shape)
    return shape


# ---------------------------------------------------------------------------------------------
# backend kernels: fn(x, weight, bias, residual, stride, padding4, dilation, groups, relu, out) -> None

def _reference_kernel(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    out.copy_(reference.conv2d_relu(x, weight, bias, residual, stride, padding, dilation, groups, relu))


def _cpu_kernel(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    u = winograd_weight(weight, winograd_tile(x, out)) if use_winograd(x, weight, stride, dilation, groups) else None
    if u is not None:
        # (the weight too: tiles with a NaN or Inf input are computed directly from it)
        torch.ops.fastconv._conv2d_winograd_cpu(x, u, bias, residual, padding, relu, out, weight)
        return
    torch.ops.fastconv._conv2d_relu_cpu(x, weight, bias, residual, stride, padding, dilation, groups, relu, out)


# Winograd F(m x m, 3x3) (csrc/cpu/winograd_conv_kernel.cpp) for 3x3 stride-1 convs, float32
# channels_last, at least WINOGRAD_MIN_CHANNELS in and out (below that the tile transforms outweigh
# the saving), for weights that do not require grad (inference weights, as convert() leaves them)
# or whose call runs with autograd off (grad_free below): a weight in training changes every step,
# and transforming it again costs more than the conv. m = 4 (4x fewer multiplications than a direct
# conv, relative error ~1-3e-6) where it measured faster, m = 2 (2.25x fewer, ~3e-7) elsewhere:
# F(4x4) reads 36 transformed weight matrices against F(2x2)'s 16, which costs more than it saves
# when few tiles share them, and its transforms cost more per element, which shows where the GEMMs
# are small (few output channels). benchmarks/bench_cpu_winograd_tiles.py, one core, F(4x4) over
# F(2x2): 512 channels at 7x7, batch 1/2/4/8/16 (4-64 tiles): 0.86/0.70/0.91/1.47/1.59x; 256 at
# 14x14, batch 1/2/4: 1.01/1.17/1.29x; 128 at 28x28: 1.35x; 64 at 56x56: 1.26x. DenseNet's 128 -> 32
# growth convs alone gained at 56x56 and 28x28 (1.17/1.12x) and lost at 14x14 (0.93x), but the
# whole DenseNet-121 measured 0.94-0.95x with them on F(4x4), twice (not explained; the model-level
# noise here is ~5%). Hence F(4x4) from max(WINOGRAD_4X4_MIN_TILES, C_in * C_out / 8192) 4x4 output tiles and
# WINOGRAD_4X4_MIN_OUT_CHANNELS output channels. FASTCONV_CPU_WINOGRAD: 0 keeps every conv on the
# im2col kernel, 2 or 4 forces m.
WINOGRAD_MIN_CHANNELS = 16
_WINOGRAD_GT = {  # Gᵀ of F(m x m, 3x3), [3, m + 2]
    2: torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
                    dtype=torch.float64).t().contiguous(),
    4: torch.tensor([[1 / 4, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                     [1 / 24, -1 / 12, 1 / 6], [0.0, 0.0, 1.0]], dtype=torch.float64).t().contiguous(),
}


WINOGRAD_4X4_MIN_TILES = 16
WINOGRAD_4X4_MIN_OUT_CHANNELS = 64


def winograd_tile(x: torch.Tensor, out: torch.Tensor) -> int:
    """m of the F(m x m, 3x3) the cpu tactic runs for input ``x`` and output ``out``."""
    v = os.environ.get("FASTCONV_CPU_WINOGRAD", "1")
    if v not in ("0", "1", "2", "4"):
        raise ValueError(f"FASTCONV_CPU_WINOGRAD must be 0 (off), 1 (on: F(4x4) or F(2x2) by the tile rule), "
                         f"2 or 4 (that F(m x m, 3x3) always), got {v!r}")
    if v in ("2", "4"):
        return int(v)
    n, k, oh, ow = out.shape
    tiles = n * -(-oh // 4) * -(-ow // 4)
    enough = tiles >= max(WINOGRAD_4X4_MIN_TILES, x.shape[1] * k / 8192)
    return 4 if enough and k >= WINOGRAD_4X4_MIN_OUT_CHANNELS else 2


def use_winograd(x, weight, stride, dilation, groups) -> bool:
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and groups == 1 and grad_free(weight)
            and tuple(weight.shape[2:]) == (3, 3) and list(stride) == [1, 1] and list(dilation) == [1, 1]
            and x.shape[1] >= WINOGRAD_MIN_CHANNELS and weight.shape[0] >= WINOGRAD_MIN_CHANNELS
            and x.stride(1) == 1 and os.environ.get("FASTCONV_CPU_WINOGRAD", "1") != "0"
            and hasattr(torch.ops.fastconv, "_conv2d_winograd_cpu"))


# A weight that requires grad is still grad-free for one call made with autograd off (an nn layer
# under torch.no_grad() or torch.inference_mode(): inference with trainable parameters). The op's
# implementation cannot tell (it always runs with grad mode off), so the Python API marks such a
# weight for the duration of its call, on this thread. Calls that skip the Python API (a compiled
# graph) see no mark and stay on the im2col kernel: the conservative choice.
_marks = threading.local()


def grad_free(weight: torch.Tensor) -> bool:
    return not weight.requires_grad or id(weight) in getattr(_marks, "ids", ())


def _mark_grad_free(weight: torch.Tensor) -> bool:
    """Mark ``weight`` grad-free on this thread for one call made with autograd off; True if marked
    (the caller unmarks it in a ``finally``). Not while torch.compile traces: the mark would not
    reach the compiled graph's calls anyway, and torch 2.6's Dynamo cannot trace a generator
    context manager here (every compiled fastconv model failed)."""
    if not weight.requires_grad or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    _marks.__dict__.setdefault("ids", []).append(id(weight))
    return True


def make_winograd_weight(weight: torch.Tensor, m: int = 4) -> torch.Tensor:
    """U = G g Gᵀ for each [C_out, C_in] pair of a 3x3 weight, as the contiguous float32
    [(m + 2)², C_in, C_out] the kernel's GEMMs read (computed in float64, rounded once)."""
    k, c = weight.shape[:2]
    gt = _WINOGRAD_GT[m]
    a = weight.detach().double().reshape(k * c, 3, 3) @ gt  # g Gᵀ          [K*C, 3, a]
    ut = a.transpose(1, 2) @ gt                              # (G g Gᵀ)ᵀ     [K*C, a, a]
    return ut.transpose(1, 2).reshape(k, c, (m + 2) ** 2).permute(2, 1, 0).to(torch.float32).contiguous()


def winograd_weight(weight: torch.Tensor, m: int) -> Optional[torch.Tensor]:
    """The cached F(m x m) transformed weight, or None where it cannot be cached (an inference
    tensor, say) or the weight holds a NaN or Inf (G g Gᵀ would spread it over the tap's whole
    transformed row as NaN, so every tile would be recomputed directly): then the im2col kernel
    runs instead."""
    def make() -> torch.Tensor:
        u = make_winograd_weight(weight, m)
        return u if bool(u.isfinite().all()) else u.new_empty(0)  # cached as "no Winograd form"
    u = _weight_cache.derived(weight, ("winograd", m), make)
    return u if u is not None and u.numel() > 0 else None


def _cuda_kernel(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    torch.ops.fastconv._conv2d_relu_cuda(x, weight, bias, residual, stride, padding, dilation, groups, relu, out)


def _triton_kernel(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    from .triton import conv2d_relu as triton_conv  # imported lazily: Triton is optional on the CPU

    triton_conv.conv2d_relu(x, weight, bias, residual, stride, padding, dilation, groups, relu, out)


def _torch_kernel(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    _torch_tactic.conv(x, weight, bias, residual, stride, padding, dilation, groups, relu, [out])


KERNELS = {"reference": _reference_kernel, "cpu": _cpu_kernel, "cuda": _cuda_kernel, "triton": _triton_kernel,
           "torch": _torch_kernel}


def _signature(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    """The tensors and flags ``auto`` keys its choice by (a weight that needs its gradient, which
    keeps the cpu tactic off the Winograd kernel, keys its own choice)."""
    flags = (stride, padding, dilation, groups, relu)
    return (x, weight, bias, residual, out), flags if grad_free(weight) else flags + ("weight-grad",)


def fill_without_reduction(out: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                           relu: bool, channels: slice = slice(None)) -> None:
    """A convolution over no input channels (K = 0): every output is relu?(bias + residual), for
    every backend alike (the kernels are never asked for an empty reduction; F.conv2d returns a
    tensor with no channels there, against the op's own shape). ``channels``: bias's share of out."""
    value = out.new_zeros(()) if bias is None else bias[channels].to(out.dtype).view(1, -1, 1, 1)
    if residual is not None:
        value = value + residual
    out.copy_(value.clamp_min(0) if relu else value)  # (clamp_min keeps NaN, as torch.relu)


def _run(x, weight, bias, residual, stride, padding, dilation, groups, relu, out) -> None:
    if out.numel() == 0:
        return
    if weight[0].numel() == 0:
        return fill_without_reduction(out, bias, residual, relu)
    args = (x, weight, bias, residual, stride, padding, dilation, groups, relu, out)
    _autotune.dispatch(OP, x.device, KERNELS, args, *_signature(*args),
                       lambda: 2 * out.numel() * weight[0].numel())


def planned_kernel(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    """The kernel every later call with these arguments' signature runs, or None while ``auto``
    has yet to tune it (for the fused modules' fast path, fastconv/_fastpath.py)."""
    tactic = _autotune.final_tactic(OP, x.device, *_signature(x, weight, bias, residual, stride, padding, dilation,
                                                               groups, relu, out))
    return None if tactic is None else KERNELS[tactic]


# ---------------------------------------------------------------------------------------------
# the public torch.library ops

@torch.library.custom_op("fastconv::conv2d_relu", mutates_args=())
def conv2d_relu_op(
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
    shape = check_args(x, weight, bias, residual, stride, padding, dilation, groups)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_checks.output_layout(x))
    _run(x, weight, bias, residual, stride, padding, dilation, groups, relu, out)
    return out


@conv2d_relu_op.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, relu):
    shape = check_args(x, weight, bias, residual, stride, padding, dilation, groups)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_checks.output_layout(x))


@torch.library.custom_op("fastconv::conv2d_relu_out", mutates_args=("out",))
def conv2d_relu_out_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
    relu: bool,
    out: torch.Tensor,
) -> None:
    shape = check_args(x, weight, bias, residual, stride, padding, dilation, groups)
    _checks.check_out(OP, out, shape, x, [("x", x), ("weight", weight), ("bias", bias), ("residual", residual)])
    _run(x, weight, bias, residual, stride, padding, dilation, groups, relu, out)


@conv2d_relu_out_op.register_fake
def _(x, weight, bias, residual, stride, padding, dilation, groups, relu, out):
    shape = check_args(x, weight, bias, residual, stride, padding, dilation, groups)
    _checks.check_out(OP, out, shape, x, ())  # device too: a meta out with real inputs lands here


# ---------------------------------------------------------------------------------------------
# autograd (backward on PyTorch's convolution_backward; fastconv is an inference library first)

def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, stride, padding, dilation, groups, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.conv = (stride, padding, dilation, groups, relu, bias is not None, residual is not None)


def _backward(ctx, grad):
    x, weight, out = ctx.saved_tensors
    stride, padding, dilation, groups, relu, has_bias, has_residual = ctx.conv
    if relu:
        grad = grad * (out > 0)  # as threshold_backward: the gradient passes where the output is positive
    top, bottom, left, right = padding
    symmetric = top == bottom and left == right
    xp = x if symmetric else torch.nn.functional.pad(x, [left, right, top, bottom])
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
    empty = weight.shape[1] == 0  # no input channels: convolution_backward's bias gradient is 0 there
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, xp, weight, [weight.shape[0]] if has_bias else None, stride,
        [top, left] if symmetric else [0, 0], dilation, False, [0, 0], groups, mask[:2] + [mask[2] and not empty])
    if mask[2] and empty:
        gb = grad.sum((0, 2, 3))
    if gx is not None and not symmetric:
        gx = gx[:, :, top:top + x.shape[2], left:left + x.shape[3]]
    return gx, gw, gb if has_bias else None, grad if has_residual else None, None, None, None, None, None


torch.library.register_autograd("fastconv::conv2d_relu", _backward, setup_context=_setup_context)
_vmap.register_batch_folding("conv2d_relu", per_image=(0, 3), per_channel=(1, 2))  # x, residual | weight, bias


# ---------------------------------------------------------------------------------------------
# the Python API

def conv2d_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int], str] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    *,
    relu: bool = True,
    residual: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``relu(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual)`` in one pass.

    Arguments follow ``torch.nn.functional.conv2d``; ``relu=False`` skips the ReLU, ``residual``
    (the output's shape) is added before it, and ``out`` (a tensor or a channel-slice view of a
    larger buffer, sharing no memory with the inputs) receives the result in place. 3-D
    (unbatched) input is accepted as F.conv2d accepts it.

    In inference (autograd off, or nothing requiring grad) a call whose tensors' shapes, strides,
    dtypes and devices and whose other arguments match an earlier call's replays the kernel that
    call resolved to, skipping the checks it passed (fastconv/_fastpath.py); ``out`` is still
    checked for overlap with the inputs and for being writable.
    """
    def full():
        return _conv2d_relu(x, weight, bias, stride, padding, dilation, groups, relu, residual, out)

    if type(groups) is int and type(relu) is bool and _fastpath.plain_settings(stride, padding, dilation):
        return _fastpath.conv(_fastpath.FUNCTIONAL, full, x, weight, bias, residual, out, stride, padding, dilation,
                              groups, relu, False)
    return full()


def _conv2d_relu(x, weight, bias, stride, padding, dilation, groups, relu, residual, out):
    """The full path of ``conv2d_relu``: argument checks, then the public torch.library op."""
    if _checks.is_fx_proxy(x):
        # 'same' needs the kernel size: a module's weight is traced as a get_attr of a known tensor
        kernel = _checks.traced_shape(weight)
        if isinstance(padding, str) and padding != "valid" and kernel is None or out is not None:
            raise NotImplementedError(f"fastconv.{OP} under torch.fx tracing takes int padding (or 'same' with a "
                                      "module's weight) and no out= (a fastconv layer traced as the root: "
                                      "concrete_args={'residual': None, 'out': None})")
        stride_, dilation_ = _checks.pair(OP, stride, "stride"), _checks.pair(OP, dilation, "dilation")
        return torch.ops.fastconv.conv2d_relu(x, weight, bias, residual, stride_,
                                              normalize_padding(padding, (kernel or [None] * 4)[2:], stride_,
                                                                dilation_), dilation_, groups, relu)
    _checks.check_tensor(OP, x, "x", ndims=(3, 4))
    _checks.check_tensor(OP, weight, "weight", ndims=(4,))
    _checks.check_autodiff_mode(OP, (x, weight, bias, residual))
    stride_ = _checks.pair(OP, stride, "stride")
    dilation_ = _checks.pair(OP, dilation, "dilation")
    _checks.check_int(OP, groups, "groups")
    _checks.check_flag(OP, relu, "relu")
    padding_ = normalize_padding(padding, weight.shape[2:], stride_, dilation_)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
        residual = None if residual is None else _checks.check_tensor(OP, residual, "residual", ndims=(3,)).unsqueeze(0)
        out_view = None if out is None else _checks.check_tensor(OP, out, "out", ndims=(3,)).unsqueeze(0)
    else:
        out_view = out
    if out_view is not None:
        # checked before dispatch: an out on another device (meta) would route the op to that
        # device's kernel (the fake one), which writes nothing
        _checks.check_out_call(OP, out_view, x, (weight, bias, residual))
    marked = _mark_grad_free(weight)
    try:
        if out_view is None:
            y = torch.ops.fastconv.conv2d_relu(x, weight, bias, residual, stride_, padding_, dilation_, groups, relu)
            return y.squeeze(0) if unbatched else y
        torch.ops.fastconv.conv2d_relu_out(x, weight, bias, residual, stride_, padding_, dilation_, groups, relu,
                                           out_view)
    finally:
        if marked:
            _marks.ids.pop()
    return out


# imported last: fastconv._fastpath imports this module's planning helpers (a cycle that resolves
# once both are loaded; conv2d_relu() only reads _fastpath at call time)
from .. import _fastpath  # noqa: E402
