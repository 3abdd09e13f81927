"""fastconv.max_pool2d: F.max_pool2d's exact values in one read of the input and one write.

Two public ops are defined here with torch.library: ``fastconv::max_pool2d`` (functional) and
``fastconv::max_pool2d_out`` (writes into ``out``, which may be a channel slice of a larger NCHW
or NHWC buffer). Both check their arguments with PyTorch's rules, then hand ``out`` to the
kernel of the current backend. ``ceil_mode`` only changes the output size, so it is resolved
here: the kernels read the output size from ``out`` and clip every window to the input.

Semantics shared by every backend (those of PyTorch's CPU kernel): padding never wins (it
counts as -inf), each window is scanned row by row and a value replaces the running max when it
is larger or NaN, so a NaN in the window makes the output NaN and among equal maxima (+0/-0)
the first one is kept.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from .. import _autotune
from . import _checks, _vmap, reference

OP = "max_pool2d"


# ---------------------------------------------------------------------------------------------
# argument normalization and checks

def pooled_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's pooling_output_shape: in ceil_mode the last window must start inside the input
    or the left padding, otherwise it is dropped."""
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * pad - span + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1  # floor division, as PyTorch's div_rtn
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def check_args(x, kernel_size, stride, padding, dilation, ceil_mode) -> List[int]:
    """Validate normalized arguments (PyTorch's pool2d_shape_check rules); return the output shape."""
    _checks.check_tensor(OP, x, "x", ndims=(4,))
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding), ("dilation", dilation)):
        if len(value) != 2:
            raise ValueError(f"fastconv.{OP}: {name} must have 2 elements, got {list(value)}")
    if any(k <= 0 for k in kernel_size):
        raise ValueError(f"fastconv.{OP}: kernel_size must be positive, got {list(kernel_size)}")
    if any(s <= 0 for s in stride):
        raise ValueError(f"fastconv.{OP}: stride must be positive, got {list(stride)}")
    if any(d <= 0 for d in dilation):
        raise ValueError(f"fastconv.{OP}: dilation must be positive, got {list(dilation)}")
    if any(p < 0 for p in padding):
        raise ValueError(f"fastconv.{OP}: padding must be non-negative, got {list(padding)}")
    if any(p > k // 2 for p, k in zip(padding, kernel_size)):
        raise ValueError(
            f"fastconv.{OP}: padding must be at most half the kernel size, got padding={list(padding)} "
            f"for kernel_size={list(kernel_size)}"
        )
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"fastconv.{OP}: ceil_mode must be a bool, got {ceil_mode!r}")
    n, c, h, w = x.shape
    if c == 0 or h == 0 or w == 0:
        raise ValueError(
            f"fastconv.{OP}: x must have non-empty channel and spatial dimensions (only the batch may be 0), "
            f"got shape {tuple(x.shape)}"
        )
    oh = pooled_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = pooled_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(
            f"fastconv.{OP}: kernel_size={list(kernel_size)} with dilation={list(dilation)} and "
            f"padding={list(padding)} is larger than the input {h}x{w} (output size {oh}x{ow})"
        )
    return [n, c, oh, ow]


# ---------------------------------------------------------------------------------------------
# backend kernels: fn(x, kernel_size, stride, padding, dilation, ceil_mode, out) -> None
# (ceil_mode is already in out's shape; only the reference, which calls F.max_pool2d, reads it)

def _reference_kernel(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    out.copy_(reference.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode))


def _cpu_kernel(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    torch.ops.fastconv._max_pool2d_cpu(x, kernel_size, stride, padding, dilation, out)


def _cuda_kernel(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    torch.ops.fastconv._max_pool2d_cuda(x, kernel_size, stride, padding, dilation, out)


def _triton_kernel(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    from .triton import max_pool2d as triton_pool  # imported lazily: Triton is optional on the CPU

    triton_pool.max_pool2d(x, kernel_size, stride, padding, dilation, out)


def _torch_kernel(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    # PyTorch's pooling returns a fresh tensor: one copy into out (counted)
    out.copy_(torch.nn.functional.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode))
    _autotune.count_copy(out.numel() * out.element_size())


KERNELS = {"reference": _reference_kernel, "cpu": _cpu_kernel, "cuda": _cuda_kernel, "triton": _triton_kernel,
           "torch": _torch_kernel}


def _signature(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    """The tensors and flags ``auto`` keys its choice by."""
    return (x, out), (kernel_size, stride, padding, dilation, ceil_mode)


def _run(x, kernel_size, stride, padding, dilation, ceil_mode, out) -> None:
    if out.numel() == 0:
        return
    args = (x, kernel_size, stride, padding, dilation, ceil_mode, out)
    _autotune.dispatch(OP, x.device, KERNELS, args, *_signature(*args))


def normalize(kernel_size, stride, padding, dilation) -> Tuple[List[int], List[int], List[int], List[int]]:
    """The pooling window arguments as the ops take them (``stride`` None or empty: ``kernel_size``)."""
    kernel_ = _checks.pair(OP, kernel_size, "kernel_size")
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride_ = list(kernel_)
    else:
        stride_ = _checks.pair(OP, stride, "stride")
    return kernel_, stride_, _checks.pair(OP, padding, "padding"), _checks.pair(OP, dilation, "dilation")


def planned_kernel(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    """The kernel every later call with these arguments' signature runs, or None while ``auto``
    has yet to tune it (for the fused modules' fast path, fastconv/_fastpath.py)."""
    tactic = _autotune.final_tactic(OP, x.device, *_signature(x, kernel_size, stride, padding, dilation, ceil_mode,
                                                               out))
    return None if tactic is None else KERNELS[tactic]


# ---------------------------------------------------------------------------------------------
# the public torch.library ops

@torch.library.custom_op("fastconv::max_pool2d", mutates_args=())
def max_pool2d_op(
    x: torch.Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    ceil_mode: bool,
) -> torch.Tensor:
    shape = check_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_checks.output_layout(x))
    _run(x, kernel_size, stride, padding, dilation, ceil_mode, out)
    return out


@max_pool2d_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = check_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_checks.output_layout(x))


@torch.library.custom_op("fastconv::max_pool2d_out", mutates_args=("out",))
def max_pool2d_out_op(
    x: torch.Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    ceil_mode: bool,
    out: torch.Tensor,
) -> None:
    shape = check_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    _checks.check_out(OP, out, shape, x, [("x", x)])
    _run(x, kernel_size, stride, padding, dilation, ceil_mode, out)


@max_pool2d_out_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    shape = check_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    _checks.check_out(OP, out, shape, x, ())  # device too: a meta out with real inputs lands here


# ---------------------------------------------------------------------------------------------
# the Python API


# autograd: PyTorch's max-pool backward, with the argmax recomputed from the saved input

def _setup_context(ctx, inputs, output):
    x, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.save_for_backward(x)
    ctx.pool = (kernel_size, stride, padding, dilation, ceil_mode)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    kernel_size, stride, padding, dilation, ceil_mode = ctx.pool
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)
    gx = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, kernel_size, stride, padding, dilation,
                                                         ceil_mode, indices)
    return gx, None, None, None, None, None


torch.library.register_autograd("fastconv::max_pool2d", _backward, setup_context=_setup_context)
_vmap.register_batch_folding("max_pool2d", per_image=(0,), per_channel=())


def max_pool2d(
    x: torch.Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    ceil_mode: bool = False,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)``, bit for bit.

    ``stride`` defaults to ``kernel_size`` (None or an empty sequence, as PyTorch accepts);
    ``out`` (a tensor or a channel-slice view of a larger buffer, sharing no memory with ``x``)
    receives the result in place. 3-D (unbatched) input is accepted as F.max_pool2d accepts it.
    Repeated inference calls replay their kernel as ``conv2d_relu``'s do (fastconv/_fastpath.py).
    """
    def full():
        return _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, out)

    if type(ceil_mode) is bool and _fastpath.plain_settings(kernel_size, stride, padding, dilation):
        return _fastpath.pool(_fastpath.FUNCTIONAL, full, x, out, kernel_size, stride, padding, dilation, ceil_mode)
    return full()


def _max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode, out):
    """The full path of ``max_pool2d``: argument checks, then the public torch.library op."""
    if _checks.is_fx_proxy(x):
        if out is not None:
            raise NotImplementedError(f"fastconv.{OP} under torch.fx tracing takes no out=")
        return torch.ops.fastconv.max_pool2d(x, *normalize(kernel_size, stride, padding, dilation), ceil_mode)
    _checks.check_tensor(OP, x, "x", ndims=(3, 4))
    _checks.check_autodiff_mode(OP, (x,))
    kernel_, stride_, padding_, dilation_ = normalize(kernel_size, stride, padding, dilation)
    _checks.check_flag(OP, ceil_mode, "ceil_mode")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
        out_view = None if out is None else _checks.check_tensor(OP, out, "out", ndims=(3,)).unsqueeze(0)
    else:
        out_view = out
    if out_view is not None:
        # checked here too: an out on another device (meta) would otherwise route the op to that
        # device's kernel (the fake one) before the op body could reject it
        _checks.check_like(OP, out_view, "out", x)
        _checks.check_out_call(OP, out_view, x)  # out= is not differentiable
    if out_view is None:
        y = torch.ops.fastconv.max_pool2d(x, kernel_, stride_, padding_, dilation_, ceil_mode)
        return y.squeeze(0) if unbatched else y
    torch.ops.fastconv.max_pool2d_out(x, kernel_, stride_, padding_, dilation_, ceil_mode, out_view)
    return out


# imported last: fastconv._fastpath imports this module's planning helpers (a cycle that resolves
# once both are loaded; max_pool2d() only reads _fastpath at call time)
from .. import _fastpath  # noqa: E402
