"""oneDNN's blocked copies of conv weights, made once per weight instead of on every call.

Given a plain (NCHW or channels_last) float32 weight, oneDNN's convolution reorders it into the
blocked layout its kernel wants on every call. ``torch.ops.mkldnn._reorder_convolution_weight``
does that reorder once (PyTorch's inductor does the same when it freezes a CPU model); the ``torch``
tactic then hands the blocked copy to ``mkldnn::_convolution_pointwise``. Measured on the 2-core
CPU VM (fp32, batch 4): ResNet-50's 512→512 3×3 conv 5.6 → 4.2 ms, 256→1024 1×1 2.35 → 2.0 ms,
outputs bit-identical; benchmarks/RESULTS_auto_cpu.md has the whole-model effect.

Costs one extra copy of each such weight in memory (e.g. ~94 MB for ResNet-50's convs) for as long
as the weight lives. Entries are keyed by the identity of the weight's base tensor (the weight
itself, or what it is a view of, e.g. conv1x1's 2-D weight seen as [C_out, C_in, 1, 1]; a weak
reference: the entry goes when the tensor does), checked against its version counter (an in-place update, such as
``load_state_dict`` or an optimizer step, repacks) and the call geometry (oneDNN picks the blocked
layout for the input size), at most ``MAX_GEOMETRIES`` per weight. Inference tensors (made under
``torch.inference_mode``) have no version counter and are not cached. ``FASTCONV_ONEDNN_PREPACK=0``
turns the cache off.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch

MAX_GEOMETRIES = 2  # per weight: a model usually runs one input size; a second one must not thrash

_lock = threading.Lock()
# id(owner) -> (weak reference to owner, owner's version when packed, {geometry: blocked weight})
_entries: Dict[int, Tuple[weakref.ref, int, "OrderedDict[tuple, torch.Tensor]"]] = {}


def enabled() -> bool:
    return os.environ.get("FASTCONV_ONEDNN_PREPACK", "1") != "0" and hasattr(
        torch.ops.mkldnn, "_reorder_convolution_weight")


def _forget(key: int) -> None:
    with _lock:
        _entries.pop(key, None)


def blocked(weight: torch.Tensor, padding: List[int], stride: List[int], dilation: List[int], groups: int,
            x_shape) -> Optional[torch.Tensor]:
    """``weight`` in oneDNN's blocked layout for a conv on an input of ``x_shape``, or None where it
    is not cached (then pass the plain weight)."""
    owner = weight if weight._base is None else weight._base  # views share their base's version counter
    if (weight.dtype != torch.float32 or weight.device.type != "cpu" or owner.is_inference()
            or type(owner) not in (torch.Tensor, torch.nn.Parameter) or not enabled()):
        return None
    key, version = id(owner), owner._version
    geometry = (tuple(weight.shape), weight.stride(), weight.storage_offset(), tuple(padding), tuple(stride),
                tuple(dilation), groups, tuple(x_shape))
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0]() is owner and entry[1] == version:
            packed = entry[2].get(geometry)
            if packed is not None:
                entry[2].move_to_end(geometry)
                return packed
    packed = torch.ops.mkldnn._reorder_convolution_weight(weight, list(padding), list(stride), list(dilation),
                                                          groups, list(x_shape))
    with _lock:
        entry = _entries.get(key)
        if entry is None or entry[0]() is not owner or entry[1] != version:
            entry = _entries[key] = (weakref.ref(owner, lambda _ref, k=key: _forget(k)), version, OrderedDict())
        entry[2][geometry] = packed
        while len(entry[2]) > MAX_GEOMETRIES:
            entry[2].popitem(last=False)
    return packed


def clear() -> None:
    """Drop every cached blocked weight."""
    with _lock:
        _entries.clear()


def cached_count() -> int:
    with _lock:
        return sum(len(e[2]) for e in _entries.values())
