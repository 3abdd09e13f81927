"""fastconv.dense_concat: torch.cat(features, 1) without the copy when there is nothing to copy.

DenseNet blocks and Inception modules allocate their output once and let every producer write
its channels into a slice of it (the ``out=`` of every fastconv op). Concatenating those slices
is then free: ``dense_concat`` recognises features that are adjacent channel slices of one buffer
and returns a view of it. Anything else is copied once into a fresh tensor by a fastconv kernel
(``fastconv::dense_concat``), which is differentiable.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .. import _autotune
from . import _autocast, _checks
from ._vmap import fold, unfold

OP = "dense_concat"


def check_features(features) -> List[int]:
    """Validate the feature list; return the concatenated shape."""
    if not isinstance(features, (list, tuple)):
        raise TypeError(f"fastconv.{OP}: features must be a list or tuple of tensors, got {type(features).__name__}")
    if len(features) == 0:
        raise ValueError(f"fastconv.{OP}: features must not be empty")
    first = _checks.check_tensor(OP, features[0], "features[0]", ndims=(4,))
    for i, f in enumerate(features[1:], start=1):
        _checks.check_tensor(OP, f, f"features[{i}]", ndims=(4,))
        _checks.check_like(OP, f, f"features[{i}]", first, "features[0]")
        if f.shape[0] != first.shape[0] or f.shape[2:] != first.shape[2:]:
            raise ValueError(
                f"fastconv.{OP}: features[{i}] has shape {tuple(f.shape)}, which does not match features[0] "
                f"{tuple(first.shape)} outside the channel dimension"
            )
    return [first.shape[0], sum(f.shape[1] for f in features), first.shape[2], first.shape[3]]


def adjacent_view(features: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """A view covering all ``features`` when they are adjacent channel slices of one buffer, else None."""
    first = features[0]
    offset = first.storage_offset()
    for f in features:
        if f.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or f.stride() != first.stride():
            return None
        if f.storage_offset() != offset:
            return None
        offset += f.shape[1] * f.stride(1)
    shape = [first.shape[0], sum(f.shape[1] for f in features), first.shape[2], first.shape[3]]
    if first.untyped_storage().nbytes() < (first.storage_offset() + _span(shape, first.stride())) * first.element_size():
        return None
    return first.as_strided(shape, first.stride(), first.storage_offset())


def _span(shape, stride) -> int:
    return sum((s - 1) * st for s, st in zip(shape, stride)) + 1


# ---------------------------------------------------------------------------------------------
# backend kernels: fn(features, out) -> None, out shaped like the concatenation

def _reference_kernel(features, out):
    c = 0
    for f in features:
        out.narrow(1, c, f.shape[1]).copy_(f)
        c += f.shape[1]


def _cpu_kernel(features, out):
    torch.ops.fastconv._dense_concat_cpu(list(features), out)


def _cuda_kernel(features, out):
    torch.ops.fastconv._dense_concat_cuda(list(features), out)


def _triton_kernel(features, out):
    from .triton import dense_concat as triton_concat

    triton_concat.dense_concat(list(features), out)


def _torch_kernel(features, out):
    torch.cat(list(features), 1, out=out)


KERNELS = {"reference": _reference_kernel, "cpu": _cpu_kernel, "cuda": _cuda_kernel, "triton": _triton_kernel,
           "torch": _torch_kernel}


def _run(features, out):
    if out.numel() == 0:
        return
    _autotune.dispatch(OP, out.device, KERNELS, (features, out), (list(features), out), ())


def _layout(features) -> torch.memory_format:
    """torch.cat's rule: channels_last when every feature is, else NCHW."""
    cl = all(_checks.output_layout(f) == torch.channels_last for f in features)
    return torch.channels_last if cl else torch.contiguous_format


@torch.library.custom_op("fastconv::dense_concat", mutates_args=())
def dense_concat_op(features: List[torch.Tensor]) -> torch.Tensor:
    shape = check_features(features)
    out = torch.empty(shape, dtype=features[0].dtype, device=features[0].device, memory_format=_layout(features))
    _run(features, out)
    return out


@dense_concat_op.register_fake
def _(features):
    shape = check_features(features)
    return torch.empty(shape, dtype=features[0].dtype, device=features[0].device, memory_format=_layout(features))


def _vmap(info, in_dims, features):
    """torch.func.vmap of dense_concat (PyTorch has no fallback for a Tensor[] argument): the
    vmapped dimension folded into the batch, one concat of every example's features."""
    size = info.batch_size
    flat = [fold(f, dim, size) for f, dim in zip(features, in_dims[0])]
    return unfold(torch.ops.fastconv.dense_concat([f for f, _ in flat]), size, flat[-1][1])


torch.library.register_vmap("fastconv::dense_concat", _vmap)


@torch.library.custom_op("fastconv::dense_concat_out", mutates_args=("out",))
def dense_concat_out_op(features: List[torch.Tensor], out: torch.Tensor) -> None:
    shape = check_features(features)
    _checks.check_out(OP, out, shape, features[0], [(f"features[{i}]", f) for i, f in enumerate(features)],
                      "features[0]")
    _run(features, out)


@dense_concat_out_op.register_fake
def _(features, out):
    # device too: a meta out with real inputs lands here
    _checks.check_out(OP, out, check_features(features), features[0], (), "features[0]")


def _setup_context(ctx, inputs, output):
    ctx.sizes = [f.shape[1] for f in inputs[0]]


def _backward(ctx, grad):
    return (list(grad.split(ctx.sizes, dim=1)),)


torch.library.register_autograd("fastconv::dense_concat", _backward, setup_context=_setup_context)


def dense_concat(features: Sequence[torch.Tensor], *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``torch.cat(features, 1)``; a copy-free view when the features are adjacent channel slices of one buffer.

    With ``out=`` the features are copied into ``out`` (unless they already are its slices).
    Under ``torch.autocast`` features of different floating dtypes are promoted, as torch.cat does;
    outside it they must share one dtype (a TypeError names the odd one: torch.cat would promote
    silently, fastconv's ops refuse mixed dtypes as F.conv2d does).
    """
    if isinstance(features, (list, tuple)) and any(_checks.is_fx_proxy(f) for f in features):
        # torch.fx tracing: record the op (a copy; the traced graph checks on real tensors)
        if out is not None:
            raise NotImplementedError(f"fastconv.{OP} under torch.fx tracing takes no out=")
        return torch.ops.fastconv.dense_concat(list(features))
    features = _autocast.promote_features(features)
    check_features(features)
    if out is not None:
        # checked before dispatch: an out on another device (meta) would route the op to that
        # device's kernel (the fake one), which writes nothing
        _checks.check_out_call(OP, out, features[0], features)
    # (no view under a torch.func transform: its wrapped tensors have no storage to compare;
    # nor while autograd records: the view would carry no dense_concat backward; under no_grad
    # features that require grad take it, as torch.cat into its exact out accepts; nor under
    # torch.jit.trace, which would record an as_strided with this call's strides for every later
    # input size; nor for meta or fake tensors, whose storages all report address 0)
    # (under torch.jit.trace only the exact-out case: returning out records nothing to go stale)
    if not torch.compiler.is_compiling() and not _checks.transforms_active() and not (
            torch.is_grad_enabled() and any(f.requires_grad for f in features)) and _checks.has_real_storage(features):
        view = adjacent_view(features)
        if view is not None:
            if out is None:
                if not torch.jit.is_tracing():
                    return view
            elif out.data_ptr() == view.data_ptr() and out.stride() == view.stride() and out.shape == view.shape:
                return out  # the producers already wrote into out
    _checks.check_autodiff_mode(OP, features)
    if out is None:
        return torch.ops.fastconv.dense_concat(list(features))
    torch.ops.fastconv.dense_concat_out(list(features), out)
    return out
