"""Conv weights in the form a CPU kernel wants, made once per weight instead of on every call.

Two kernels read a transformed weight:

- oneDNN (the ``torch`` tactic): given a plain (NCHW or channels_last) float32 weight, its
  convolution reorders it into a blocked layout on every call.
  ``torch.ops.mkldnn._reorder_convolution_weight`` does that once (PyTorch's inductor does the same
  when it freezes a CPU model). Measured on the 2-core CPU VM (fp32, batch 4): ResNet-50's 512→512
  3×3 conv 5.6 → 4.2 ms, 256→1024 1×1 2.35 → 2.0 ms, outputs bit-identical.
  ``FASTCONV_ONEDNN_PREPACK=0`` turns this one off.
- fastconv's Winograd kernel (the ``cpu`` tactic's 3×3 stride-1 path) reads ``G g Gᵀ``.

Under ``torch.autocast`` (any device) the weight-like arguments' casts to the autocast dtype are
cached here too (``fastconv/ops/_autocast.py``'s ``cast_param``).

Each costs one extra copy of the weight in memory (e.g. ~94 MB for ResNet-50's convs in oneDNN's
layout) for as long as the weight lives. The entries live on the weight's base tensor itself (the
weight, or what it is a view of, e.g. conv1x1's 2-D weight seen as [C_out, C_in, 1, 1]) in a
``_fastconv_forms`` attribute, so they go when the tensor does, with no weak reference to the
tensor (a weak reference makes ``torch.utils.swap_tensors`` refuse it, and with
``torch.__future__.set_swap_module_params_on_conversion(True)`` every ``module.to()`` and
``load_state_dict`` swaps parameters). They are checked against the tensor's version counter (an
in-place update, such as ``load_state_dict`` or an optimizer step, remakes them) and its data
pointer (``param.data = new`` and ``module.half().float()`` round trips give the tensor other
memory without bumping the counter; the entry holds the storage it was made from, so that memory
cannot come back at the same address while the entry exists: after ``module.half()`` the old
memory is freed when the weight is next asked for a form, or by ``clear()``), and a key naming the form and the
call geometry (oneDNN picks its layout for the input size); at most ``MAX_PER_WEIGHT`` per
weight, least recently used first out. Not seen: an in-place write through ``weight.data``
(``w.data.mul_(2)``), which PyTorch does not count on ``w``'s version counter either; update
weights in place under ``torch.no_grad()`` instead, or call ``clear()``. torch.optim's fused
optimizers (``Adam(..., fused=True)``) do not count their in-place update either: fastconv bumps
the version counters of a fused param group's parameters after every optimizer step (a global
step hook), so these caches and fastconv.models' fused copies see the new weights. Inference tensors (made
under ``torch.inference_mode``) have no version counter and are never cached: oneDNN then gets
the plain weight (and reorders it itself), and 3×3 convs take the im2col kernel instead of
Winograd.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Callable, List, Optional

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

MAX_PER_WEIGHT = 3  # e.g. two input sizes in oneDNN's layout and the Winograd form

_ATTR = "_fastconv_forms"
_lock = threading.Lock()


def _reset_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # (a fork while another thread held it: see _autotune._reset_locks_in_child)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)
_all_forms: "weakref.WeakSet[_Forms]" = weakref.WeakSet()  # for clear() and cached_count()


class _Forms:
    """One tensor's cached forms: valid while its data pointer and version are what they were
    when made. A cache: deep-copying the tensor gives an empty dict, pickling it an empty
    OrderedDict (which torch.load(weights_only=True) accepts), never the derived tensors."""

    __slots__ = ("storage", "data_ptr", "version", "values", "__weakref__")

    def __init__(self, owner: torch.Tensor) -> None:
        self.storage = owner.untyped_storage()  # pins the memory the forms were made from
        self.data_ptr, self.version = owner.data_ptr(), owner._version
        self.values: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def __deepcopy__(self, memo):
        return {}

    def __reduce__(self):
        return (OrderedDict, ())


def _current(owner: torch.Tensor) -> Optional[_Forms]:
    """``owner``'s forms if they were made from its present memory and version, else None."""
    forms = owner.__dict__.get(_ATTR)
    if type(forms) is _Forms and forms.data_ptr == owner.data_ptr() and forms.version == owner._version:
        return forms
    return None


def has_forms(t: torch.Tensor) -> bool:
    """Whether ``t`` (or the base it is a view of) holds cached forms, current or stale."""
    owner = t if t._base is None else t._base
    return _ATTR in owner.__dict__


def drop_stale(t: torch.Tensor) -> None:
    """Forget ``t``'s forms if they are stale (its memory or version changed since), releasing the
    storage they pin: the next derived() would replace them, but a tensor that is never asked for
    a form again (a module cast to the autocast dtype) would otherwise keep the old memory."""
    owner = t if t._base is None else t._base
    if _current(owner) is not None:  # (the common case, current forms: no lock)
        return
    with _lock:
        forms = owner.__dict__.get(_ATTR)
        if type(forms) is _Forms and _current(owner) is None:
            forms.values.clear()
            forms.storage = None
            del owner.__dict__[_ATTR]


_TRACING_MODES = tuple(getattr(torch._C._TorchDispatchModeKey, k) for k in ("FAKE", "PROXY", "FUNCTIONAL")
                       if hasattr(torch._C, "_TorchDispatchModeKey"))


def _tracing_mode_active() -> bool:
    """A fake, proxy (make_fx) or functional dispatch mode is on: tensors made now are not real."""
    if not torch._C._len_torch_dispatch_stack():
        return False
    if not _TRACING_MODES:  # (an older torch without the mode keys: any mode counts)
        return True
    return any(torch._C._get_dispatch_mode(k) is not None for k in _TRACING_MODES)


def derived(weight: torch.Tensor, key: tuple, make: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """``make()`` (a form of ``weight`` that depends only on its values and ``key``), cached; None
    where ``weight`` cannot be cached (an inference tensor, a tensor subclass): make it per call."""
    owner = weight if weight._base is None else weight._base  # views share their base's version counter
    if owner.is_inference() or type(owner) not in (torch.Tensor, torch.nn.Parameter):
        return None
    if _tracing_mode_active() or torch._C._functorch.maybe_current_level() is not None:
        # under a tracing dispatch mode (FakeTensorMode: make() would return a fake tensor, cached
        # for the real calls after) or a torch.func transform (a wrapped weight has no storage);
        # other modes (FlopCounterMode, DebugMode) see real tensors and keep the cache
        return None
    key = (tuple(weight.shape), weight.stride(), weight.storage_offset(), weight.dtype) + key
    with _lock:
        forms = _current(owner)
        if forms is not None:
            value = forms.values.get(key)
            if value is not None:
                forms.values.move_to_end(key)
                return value
    made_from = (owner.data_ptr(), owner._version)
    value = make()
    with _lock:
        if (owner.data_ptr(), owner._version) != made_from or type(value) is not torch.Tensor:
            # written while make() read it (another thread): right for this call, not cached; or
            # not a plain tensor (a mode's subclass)
            return value
        forms = _current(owner)
        if forms is None:
            forms = _Forms(owner)
            setattr(owner, _ATTR, forms)
            _all_forms.add(forms)
        forms.values[key] = value
        while len(forms.values) > MAX_PER_WEIGHT:
            forms.values.popitem(last=False)
    return value


def _after_fused_optimizer_step(optimizer, args, kwargs) -> None:
    """A fused optimizer's step (torch.optim's ``fused=True``) writes the parameters in place
    without moving their version counters, which every weight cache here (and fastconv.models'
    fused copy) keys on: count the write."""
    for group in optimizer.param_groups:
        if group.get("fused"):
            params = [p for p in group["params"] if isinstance(p, torch.Tensor) and not p.is_inference()]
            if params:
                torch.autograd.graph.increment_version(params)


register_optimizer_step_post_hook(_after_fused_optimizer_step)


def onednn_prepack_enabled() -> bool:
    return os.environ.get("FASTCONV_ONEDNN_PREPACK", "1") != "0" and hasattr(
        torch.ops.mkldnn, "_reorder_convolution_weight")


def onednn_blocked(weight: torch.Tensor, padding: List[int], stride: List[int], dilation: List[int], groups: int,
                   x_shape) -> Optional[torch.Tensor]:
    """A float32 or bfloat16 CPU ``weight`` in oneDNN's blocked layout for a conv on an input of
    ``x_shape`` (and the weight's dtype), or None (then pass the plain weight: oneDNN reorders it itself)."""
    if (weight.dtype not in (torch.float32, torch.bfloat16) or weight.device.type != "cpu"
            or not onednn_prepack_enabled()):
        return None
    # Keyed by the input's channels and size but not its batch: with the batch in the key a server
    # whose batch sizes take turns (1, 2, 3, 4, ...) evicted and re-packed every weight on every
    # call (at most MAX_PER_WEIGHT forms), and a converted ResNet-18 ran 2x slower interleaved than
    # grouped. The form packed for the first batch size serves the others (oneDNN reorders a weight
    # whose layout does not suit a call itself, so values are right either way); measured on the
    # 2-core VM: interleaved batches 1-4 at 64x64, 42.7 -> 12.4 ms/call (RESULTS.md, session 12).
    geometry = (tuple(padding), tuple(stride), tuple(dilation), groups, tuple(x_shape[1:]))
    return derived(weight, ("onednn",) + geometry, lambda: torch.ops.mkldnn._reorder_convolution_weight(
        weight, list(padding), list(stride), list(dilation), groups, list(x_shape)))


def clear() -> None:
    """Drop every cached form, and release the memory stale entries pin."""
    with _lock:
        for forms in list(_all_forms):
            forms.values.clear()
            forms.storage, forms.data_ptr = None, -1  # never current again: the next form starts anew


def cached_count() -> int:
    with _lock:
        return sum(len(forms.values) for forms in list(_all_forms))
