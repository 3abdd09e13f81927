"""Autocast rules for the public fastconv ops (``torch.autocast("cpu" | "cuda", dtype=...)``).

``torch.library.register_autocast`` fixes the target dtype when it is registered; fastconv's
rules instead read the dtype of the enclosing ``torch.autocast`` region at call time, so one
registration serves float16 and bfloat16 regions alike. They are registered on the dispatcher's
Autocast<Device> keys, so they apply to the Python API, to ``torch.ops.fastconv.*`` calls and
under torch.compile alike, and they run above autograd (the casts are differentiable).

Policies (those of the PyTorch ops each one replaces):

- ``conv2d_relu``, ``conv1x1`` (functional): like ``conv2d``, every floating tensor argument that
  is not float64 is cast to the autocast dtype; the op then runs, and returns, in that dtype.
- ``conv2d_relu_out``, ``conv1x1_out``, ``conv1x1_multi_out``, ``dense_concat_out``: these write
  into a caller-given ``out`` (they mutate it), which cannot be replaced by a cast copy. The caller
  chose the output dtype, so the *inputs* are cast to ``out``'s dtype (``outs[0]``'s for the
  grouped form) and ``out`` itself is written in place. Under autocast a model that allocates its
  concat buffer in the activations' dtype (fastconv's DenseNet and Inception blocks) therefore
  runs in the autocast dtype throughout.
- ``dense_concat`` (functional): like ``torch.cat``, promoted to the widest floating dtype among the
  features.
- ``max_pool2d``: no rule, like ``max_pool2d`` in PyTorch (no arithmetic: it runs in the input's
  dtype); the dispatcher's autocast fallthrough applies.

Weight-like arguments (weight, bias, in_scale, in_shift) are cast once and the cast cached on the
tensor (keyed by its version counter) while no gradient flows through them, as PyTorch's autocast
caches the casts of its parameters within a region: see ``cast_param``.

Casting happens only for tensors on the autocast device type (as PyTorch's autocast); float64
tensors are left alone, so an autocast region does not change a float64 computation.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch

from . import _weight_cache

DEVICE_TYPES = ("cpu", "cuda")

_lib = torch.library.Library("fastconv", "IMPL")


def eligible(t, device_type: str) -> bool:
    return (isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type == device_type
            and t.dtype is not torch.float64)


def cast(value, device_type: str, dtype: torch.dtype):
    """``value`` (a tensor, a list/tuple of tensors, or anything else) with its eligible tensors cast."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if eligible(value, device_type) else value
    if isinstance(value, (list, tuple)):
        return type(value)(cast(v, device_type, dtype) for v in value)
    return value


def promote_dtype(tensors: Sequence[torch.Tensor]) -> Optional[torch.dtype]:
    """The widest floating dtype among ``tensors`` (None if there is no floating tensor)."""
    dtype = None
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype


def enabled(device_type: str) -> bool:
    """Whether autocast is on for tensors of this device type (False for a type autocast does not
    know, e.g. meta, where torch.is_autocast_enabled raises)."""
    return device_type in DEVICE_TYPES and torch.is_autocast_enabled(device_type)


def promote_features(features):
    """dense_concat's Python-level promotion (autocast's "promote" policy, as torch.cat's): when an
    autocast region is active on the features' device and their floating dtypes differ, cast them
    to the widest one. Called by ``fastconv.dense_concat`` before its argument checks, which
    otherwise reject mixed dtypes."""
    if not isinstance(features, (list, tuple)) or not features or not isinstance(features[0], torch.Tensor):
        return features
    device_type = features[0].device.type
    if not enabled(device_type):
        return features
    dtype = promote_dtype(features)
    if dtype is None or all(not isinstance(f, torch.Tensor) or f.dtype == dtype or not f.is_floating_point()
                            for f in features):
        return features
    return [f.to(dtype) if isinstance(f, torch.Tensor) and f.is_floating_point() else f for f in features]


def cast_param(t, device_type: str, dtype: torch.dtype):
    """A weight-like argument (weight, bias, in_scale, in_shift) cast to ``dtype``, the cast cached
    on the tensor (keyed by its version counter, as the kernels' weight forms) while no gradient
    needs to flow through it: PyTorch's autocast caches its weight casts for a region, and a
    converted model re-casting every weight on every call ran slower than eager under autocast.
    Unlike PyTorch's, the cast outlives the region (like the other weight forms: one copy in the
    autocast dtype per weight, freed with the weight or when it changes), and like them it misses
    a write through ``.data``. A tensor that requires grad under grad mode is cast per call (the
    cast is part of the graph), and so is every tensor under ``autocast(cache_enabled=False)``."""
    if not eligible(t, device_type) or t.dtype == dtype:
        if isinstance(t, torch.Tensor) and _weight_cache.has_forms(t):
            _weight_cache.drop_stale(t)  # (a module cast to this dtype: free the old storage's casts)
        return t
    if (t.requires_grad and torch.is_grad_enabled()) or not torch.is_autocast_cache_enabled():
        return t.to(dtype)

    def make():
        with torch.inference_mode(False):  # a normal tensor: autograd may save it (backward to x)
            return t.detach().to(dtype)

    cached = _weight_cache.derived(t, ("autocast", dtype), make)
    return cached if cached is not None else t.to(dtype)


@functools.lru_cache(maxsize=None)
def _autocast_keyset(device_type: str):
    return torch._C.DispatchKeySet(getattr(torch._C.DispatchKey,
                                           "Autocast" + torch._C._dispatch_key_for_device(device_type)))


def run_without_autocast(device_type: str, fn: Callable, *args):
    """``fn(*args)`` with the dispatcher's autocast key of ``device_type`` excluded, as a
    registered rule runs the op below it (the fast path's replay of a kernel whose inputs it cast)."""
    with torch._C._ExcludeDispatchKeyGuard(_autocast_keyset(device_type)):
        return fn(*args)


def _register(name: str, device_type: str, transform: Callable) -> None:
    """Register ``transform(args, device_type) -> args`` as the autocast rule of ``fastconv::name``."""
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
    overload = getattr(torch.ops.fastconv, name).default

    def kernel(_keyset, *args, **kwargs):
        if kwargs:
            raise TypeError(f"fastconv::{name}: keyword arguments are not supported by the op schema: {list(kwargs)}")
        new_args = transform(args, device_type)
        with torch._C._ExcludeDispatchKeyGuard(keyset):
            return overload(*new_args)

    _lib.impl(name, kernel, key, with_keyset=True)


def cast_args(args, device_type: str, dtype: torch.dtype, params: Sequence[int], skip: int = -1):
    """``args`` cast to ``dtype``: the weight-like ones (indices ``params``) through the cast cache,
    the others per call; ``args[skip]`` (an out) as it is. The rules below, and the calls that
    replay a kernel without them (fastconv/_fastpath.py, fused.FusedLinear), cast through it."""
    return [a if i == skip else cast_param(a, device_type, dtype) if i in params else cast(a, device_type, dtype)
            for i, a in enumerate(args)]


def _to_autocast_dtype(params: Sequence[int]):
    def transform(args, device_type):
        return cast_args(args, device_type, torch.get_autocast_dtype(device_type), params)

    return transform


def _to_out_dtype(out_index: int, params: Sequence[int], *, is_list: bool = False):
    def transform(args, device_type):
        out = args[out_index]
        target = out[0] if is_list else out
        if not isinstance(target, torch.Tensor) or not target.is_floating_point():
            return args  # the op's checks report the bad out
        return cast_args(args, device_type, target.dtype, params, skip=out_index)

    return transform


def _promote(args, device_type):
    (features,) = args
    dtype = promote_dtype(features) if isinstance(features, (list, tuple)) else None
    if dtype is None:
        return args
    return ([f.to(dtype) if isinstance(f, torch.Tensor) and f.is_floating_point() and f.device.type == device_type
             else f for f in features],)


# the positions of the weight-like arguments in each op's schema (weight, bias, in_scale, in_shift)
_CONV_PARAMS, CONV1X1_PARAMS, _MULTI_PARAMS = (1, 2), (1, 2, 4, 5), (1, 2, 3, 4)
_RULES = {
    "conv2d_relu": _to_autocast_dtype(_CONV_PARAMS),
    "conv1x1": _to_autocast_dtype(CONV1X1_PARAMS),
    "conv2d_relu_out": _to_out_dtype(9, _CONV_PARAMS),
    "conv1x1_out": _to_out_dtype(9, CONV1X1_PARAMS),
    "conv1x1_multi_out": _to_out_dtype(8, _MULTI_PARAMS, is_list=True),
    "dense_concat": _promote,
    "dense_concat_out": _to_out_dtype(1, ()),
}


def register() -> None:
    for device_type in DEVICE_TYPES:
        if not torch._C._is_autocast_available(device_type):
            continue
        for name, transform in _RULES.items():
            _register(name, device_type, transform)
