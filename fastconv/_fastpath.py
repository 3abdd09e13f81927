"""The fused modules' eager fast path: a call that once went through the full op path is
replayed straight on the kernel it resolved to.

The full path of one fused conv is the public functional (argument normalization and checks),
the torch.library custom op, and under ``auto`` a signature string and a cache lookup: about
40–70 µs of Python per call measured on the CPU, where PyTorch's own conv+ReLU costs ~16 µs
(``benchmarks/host_instructions.py`` counts it in instructions, which do not drift with the VM). On a
GPU that made converted models host-bound (NVIDIA H200, ResNet-50, bf16, batch 32: 11.4 ms
converted against 5.4 ms eager; benchmarks/RESULTS_gpu_h200.md). So each fused module remembers, per
call layout — the shapes, strides, dtypes and device of every tensor, the module's own settings
(stride, padding, ... as they are now), the selected backend and the tuning state — the kernel and
output layout the full path settled on, and calls that kernel directly from then on. Everything validated on the first call depends only on that key, except
whether an ``out`` overlaps an input, which is checked again on every call.

It applies only where it cannot change what a call means: plain tensors (not the fake,
functional or proxy tensors of tracing), eager mode (not torch.compile or torch.jit tracing), no
input requiring grad under grad mode, no autocast, and no ``kernel_stats`` collection. A choice
``auto`` has not finalized yet (untuned signature, CUDA-graph capture) is not remembered;
storing or clearing any tuned choice (``_autotune.generation``) invalidates every plan.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

import torch

from . import _autotune, _backend
from .ops import _checks


def meta(t: Optional[torch.Tensor]):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def usable(x: torch.Tensor, *others: Optional[torch.Tensor]) -> bool:
    """Whether a call on these tensors may take the fast path (see the module docstring)."""
    if type(x) is not torch.Tensor or x.dim() != 4:
        return False
    if _autotune._collectors or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    grad = torch.is_grad_enabled()
    if grad and x.requires_grad:
        return False
    for t in others:
        if t is not None and (type(t) is not torch.Tensor or (grad and t.requires_grad)):
            return False
    return not torch.is_autocast_enabled(x.device.type)


def state() -> Tuple:
    """What every remembered choice also depends on: the backend selection and the tuning state."""
    return (_backend.current_backend(), _autotune.generation, _autotune.autotune_enabled(),
            _autotune.current_timing())


MAX_PLANS = 64  # per module; more call layouts than this (or stale tuning generations): start over


def _hashable(v):
    return tuple(_hashable(e) for e in v) if isinstance(v, (list, tuple)) else v


class _Plans(dict):
    """A module's remembered plans. A cache: pickling or deep-copying the module gives it an empty
    one (plans hold torch.memory_format objects, which do not pickle; the next call rebuilds them)."""

    def __reduce__(self):
        return (_Plans, ())


def call(module: torch.nn.Module, key_tensors: Sequence[Optional[torch.Tensor]], settings: tuple,
         full: Callable[[], Any], plan: Callable[[Any], Optional[tuple]], run: Callable[[tuple], Any]):
    """``full()`` (the public op path) the first time a call layout is seen, remembering
    ``plan(result)`` (None: not final yet, keep taking the full path); ``run(plan)`` afterwards.
    ``settings``: the module attributes the call depends on (a user may change them). The plans
    live in a plain attribute of ``module`` (not a buffer or state-dict entry)."""
    table = module.__dict__.get("_fastpath_plans")
    if table is None:
        table = module.__dict__["_fastpath_plans"] = _Plans()
    try:
        entry = table.get((state(), settings, *map(meta, key_tensors)))
    except TypeError:  # a list among the settings (an attribute a user set by hand): its tuple form
        settings = _hashable(settings)
        entry = table.get((state(), settings, *map(meta, key_tensors)))
    if entry is not None:
        return run(entry)
    result = full()
    remembered = plan(result)
    if remembered is not None:
        if len(table) >= MAX_PLANS:
            table.clear()
        # keyed by the state after the call: tuning during it may have bumped the generation
        table[(state(), settings, *map(meta, key_tensors))] = remembered
    return result


def destination(out: Optional[torch.Tensor], shape, strides, x: torch.Tensor, op: str,
                inputs: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> torch.Tensor:
    """A replayed call's output: a fresh tensor of the remembered shape and strides (those of the
    full call's result; x's dtype and device), or the given ``out`` checked again for overlap with
    ``inputs`` (that depends on pointers, not on the key)."""
    if out is None:
        return x.new_empty_strided(shape, strides)  # half the cost of torch.empty(..., memory_format=)
    _checks.check_no_overlap(op, out, inputs)
    return out
