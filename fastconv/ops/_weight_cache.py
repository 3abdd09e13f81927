"""Conv weights in the form a CPU kernel wants, made once per weight instead of on every call.

Two kernels read a transformed weight:

- oneDNN (the ``torch`` tactic): given a plain (NCHW or channels_last) float32 weight, its
  convolution reorders it into a blocked layout on every call.
  ``torch.ops.mkldnn._reorder_convolution_weight`` does that once (PyTorch's inductor does the same
  when it freezes a CPU model). Measured on the 2-core CPU VM (fp32, batch 4): ResNet-50's 512→512
  3×3 conv 5.6 → 4.2 ms, 256→1024 1×1 2.35 → 2.0 ms, outputs bit-identical.
  ``FASTCONV_ONEDNN_PREPACK=0`` turns this one off.
- fastconv's Winograd kernel (the ``cpu`` tactic's 3×3 stride-1 path) reads ``G g Gᵀ``.

Each costs one extra copy of the weight in memory (e.g. ~94 MB for ResNet-50's convs in oneDNN's
layout) for as long as the weight lives. Entries are keyed by the identity of the weight's base
tensor (the weight itself, or what it is a view of, e.g. conv1x1's 2-D weight seen as
[C_out, C_in, 1, 1]; a weak reference: the entries go when the tensor does), checked against its
version counter (an in-place update, such as ``load_state_dict`` or an optimizer step, remakes
them) and a key naming the form and the call geometry (oneDNN picks its layout for the input
size); at most ``MAX_PER_WEIGHT`` per weight, least recently used first out. Inference tensors
(made under ``torch.inference_mode``) have no version counter and are never cached: oneDNN then
gets the plain weight (and reorders it itself), and 3×3 convs take the im2col kernel instead of
Winograd.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Tuple

import torch

MAX_PER_WEIGHT = 3  # e.g. two input sizes in oneDNN's layout and the Winograd form

# Reentrant: a weak reference's callback (_forget) may run inside a locked region of this thread
# when a garbage collection there frees some other weight.
_lock = threading.RLock()
# id(owner) -> (weak reference to owner, owner's version when made, {key: derived tensor})
_entries: Dict[int, Tuple[weakref.ref, int, "OrderedDict[tuple, torch.Tensor]"]] = {}


def _forget(ident: int) -> None:
    with _lock:
        _entries.pop(ident, None)


def derived(weight: torch.Tensor, key: tuple, make: Callable[[], torch.Tensor]) -> Optional[torch.Tensor]:
    """``make()`` (a form of ``weight`` that depends only on its values and ``key``), cached; None
    where ``weight`` cannot be cached (an inference tensor, a tensor subclass): make it per call."""
    owner = weight if weight._base is None else weight._base  # views share their base's version counter
    if owner.is_inference() or type(owner) not in (torch.Tensor, torch.nn.Parameter):
        return None
    ident, version = id(owner), owner._version
    key = (tuple(weight.shape), weight.stride(), weight.storage_offset(), weight.dtype) + key
    with _lock:
        entry = _entries.get(ident)
        if entry is not None and entry[0]() is owner and entry[1] == version:
            value = entry[2].get(key)
            if value is not None:
                entry[2].move_to_end(key)
                return value
    value = make()
    with _lock:
        entry = _entries.get(ident)
        if entry is None or entry[0]() is not owner or entry[1] != version:
            entry = _entries[ident] = (weakref.ref(owner, lambda _ref, i=ident: _forget(i)), version, OrderedDict())
        entry[2][key] = value
        while len(entry[2]) > MAX_PER_WEIGHT:
            entry[2].popitem(last=False)
    return value


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
    geometry = (tuple(padding), tuple(stride), tuple(dilation), groups, tuple(x_shape))
    return derived(weight, ("onednn",) + geometry, lambda: torch.ops.mkldnn._reorder_convolution_weight(
        weight, list(padding), list(stride), list(dilation), groups, list(x_shape)))


def clear() -> None:
    """Drop every cached form."""
    with _lock:
        _entries.clear()


def cached_count() -> int:
    with _lock:
        return sum(len(e[2]) for e in _entries.values())
