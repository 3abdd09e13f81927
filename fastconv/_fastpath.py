"""The eager fast path of fused modules, drop-in layers and the functionals: a call that
once went through the full op path is replayed straight on the kernel it resolved to.

The full path of one fused conv is the public functional (argument normalization and checks),
the torch.library custom op, and under ``auto`` a signature string and a cache lookup: about
40–70 µs of Python per call measured on the CPU, where PyTorch's own conv+ReLU costs ~16 µs
(``benchmarks/host_instructions.py`` counts it in instructions, which do not drift with the VM). On a
GPU that made converted models host-bound (NVIDIA H200, ResNet-50, bf16, batch 32: 11.4 ms
converted against 5.4 ms eager; benchmarks/RESULTS_gpu_h200.md). So each fused module remembers, per
call layout — the shapes, strides, dtypes and device of every tensor, the module's own settings
(stride, padding, ... as they are now), the selected backend and the tuning state — the kernel and
output layout the full path settled on, and calls that kernel directly from then on. Everything validated on the first call depends only on that key, except
whether an ``out`` overlaps an input (and whether it may be written), checked again on every call.
The public functionals ``fastconv.conv2d_relu``, ``conv1x1`` and ``max_pool2d`` called directly
do the same through one process-wide table (``FUNCTIONAL``), their scalar arguments in the key
(``plain_settings``).

It applies only where it cannot change what a call means: plain CPU or CUDA tensors (not the fake,
functional or proxy tensors of tracing, nor meta tensors), eager mode (not torch.compile or torch.jit tracing,
nor forward-mode AD or a torch.func transform, which the full path refuses or serves; nor under a
dispatch mode, such as FlopCounterMode, which is to see the public op rather than a private kernel), no
input requiring grad under grad mode, and no ``kernel_stats`` collection. Under autocast a conv
replays on its tensors cast as the op's autocast rule would cast them (autocast_conv_args). A choice
``auto`` has not finalized yet (untuned signature, CUDA-graph capture) is not remembered;
storing or clearing any tuned choice (``_autotune.generation``) invalidates every plan.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple

import torch

from . import _autotune, _backend
from .ops import _autocast, _checks
from .ops.conv1x1 import planned_kernel as conv1x1_planned_kernel
from .ops.conv2d_relu import _mark_grad_free, _marks, normalize_padding
from .ops.conv2d_relu import planned_kernel as conv2d_planned_kernel
from .ops.max_pool2d import normalize as pool_normalize
from .ops.max_pool2d import planned_kernel as pool_planned_kernel


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def meta(t: Optional[torch.Tensor]):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


# where fastconv has kernels to replay; elsewhere (the meta device of shape inference and
# deferred initialization, above all) every call takes the full op path, which handles it
_DEVICES = ("cpu", "cuda")


def usable(x: torch.Tensor, *others: Optional[torch.Tensor]) -> bool:
    """Whether a call on these tensors may take the fast path (see the module docstring)."""
    if type(x) is not torch.Tensor or x.dim() != 4:
        return False
    device = x.device.type
    if device not in _DEVICES:
        return False
    if (_autotune.collectors() or torch.compiler.is_compiling() or torch.jit.is_tracing() or _checks.transforms_active()
            or torch._C._len_torch_dispatch_stack()):  # a dispatch mode (FlopCounterMode) sees the public op
        return False
    grad = torch.is_grad_enabled()
    if grad and x.requires_grad:
        return False
    for t in others:  # (an nn.Parameter is a plain tensor here: a drop-in layer's weight)
        if t is not None and (type(t) not in _PLAIN or (grad and t.requires_grad)):
            return False
    return True


def autocast_conv_args(x, weight, bias, residual, out, in_scale, in_shift):
    """For a call under autocast on x's device: the conv's tensors as the op's autocast rule casts
    them (fastconv/ops/_autocast.py: to the region's dtype, or to ``out``'s; weight-like ones
    through the cast cache), so that the replayed kernel sees what the full path's op would. The
    replay must then run with autocast off below it, as the rule runs the op (``replayed``).
    None: an ``out`` that is not floating, for the full path to report."""
    device = x.device.type
    if out is not None and not out.is_floating_point():
        return None
    dtype = out.dtype if out is not None else torch.get_autocast_dtype(device)
    tensors = (x, weight, bias, residual, in_scale, in_shift)  # (conv1x1's schema order: its weight-like positions)
    return tuple(_autocast.cast_args(tensors, device, dtype, _autocast.CONV1X1_PARAMS))


def state() -> Tuple:
    """What every remembered choice also depends on: the backend selection, the tuning state and
    the CPU thread count (auto's choices are made per thread count)."""
    return (_backend.current_backend(), _autotune.generation, _autotune.autotune_enabled(),
            _autotune.current_timing(), torch.get_num_threads())


MAX_PLANS = 64  # per module; more call layouts than this (or stale tuning generations): start over


def _hashable(v):
    return tuple(_hashable(e) for e in v) if isinstance(v, (list, tuple)) else v


class _Plans(dict):
    """A module's remembered plans. A cache: pickling or deep-copying the module gives it an empty
    one (plans hold torch.memory_format objects, which do not pickle; the next call rebuilds them)."""

    limit = MAX_PLANS

    def __reduce__(self):
        return (_Plans, ())


class _FunctionalPlans:
    """The plan table of the public functionals called directly (``fastconv.conv2d_relu``,
    ``conv1x1``, ``max_pool2d``): one per process, shared by every call site and thread (a plan is an
    immutable tuple; the key holds the thread's backend), so it holds more layouts than a module's."""

    def __init__(self) -> None:
        self._fastpath_plans = _Plans()
        self._fastpath_plans.limit = 1024

    def clear(self) -> None:
        self._fastpath_plans.clear()


FUNCTIONAL = _FunctionalPlans()


def plain_settings(*values) -> bool:
    """Whether a functional's scalar arguments may key a plan: ints (not bools), sequences of ints,
    a padding string, or None (a default stride). Anything else (floats, SymInts, bools where ints go) takes the full path,
    whose checks reject or normalize it: 1.0 and True hash like 1, so a plan made for 1 would
    otherwise answer for them."""
    for v in values:
        t = type(v)
        if t is int or t is str or v is None:
            continue
        if (t is tuple or t is list) and all(type(e) is int for e in v):
            continue
        return False
    return True


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
        if len(table) >= table.limit:
            table.clear()
        # keyed by the state after the call: tuning during it may have bumped the generation
        table[(state(), settings, *map(meta, key_tensors))] = remembered
    return result


def destination(out: Optional[torch.Tensor], shape, strides, x: torch.Tensor, op: str,
                inputs: Iterable[Tuple[str, Optional[torch.Tensor]]]) -> torch.Tensor:
    """A replayed call's output: a fresh tensor of the remembered shape and strides (those of the
    full call's result; x's dtype and device), or the given ``out`` checked again for overlap with
    ``inputs`` (that depends on pointers, not on the key) and for being writable here (an
    inference tensor outside inference mode)."""
    if out is None:
        return x.new_empty_strided(shape, strides)  # half the cost of torch.empty(..., memory_format=)
    _checks.check_writable(op, out)
    _checks.check_no_overlap(op, out, inputs)
    return out


# ---------------------------------------------------------------------------------------------
# conv2d_relu / conv1x1 through the fast path: fastconv.fused's conv modules and fastconv.nn's
# Conv2dReLU and Conv1x1

_CONV_INPUTS = ("x", "weight", "bias", "residual", "in_scale", "in_shift")


def conv(module: torch.nn.Module, full: Callable[[], torch.Tensor], x: torch.Tensor, weight: torch.Tensor,
         bias: Optional[torch.Tensor], residual: Optional[torch.Tensor], out: Optional[torch.Tensor], stride,
         padding, dilation, groups: int, relu: bool, pointwise: bool, in_scale: Optional[torch.Tensor] = None,
         in_shift: Optional[torch.Tensor] = None, in_relu: bool = False) -> torch.Tensor:
    """``full()`` (the public op the module calls: conv1x1 where ``pointwise``, else conv2d_relu, with
    these arguments) on the first call of a layout, its planned kernel afterwards. A weight that
    requires grad, in a call with autograd off, is marked grad-free around both, as the public
    functional marks it (it decides whether the cpu tactic may run Winograd, and keys auto's choice)."""
    if not usable(x, weight, bias, residual, out, in_scale, in_shift):
        return full()
    replay = _conv_replay
    if torch.is_autocast_enabled(x.device.type):
        tensors = autocast_conv_args(x, weight, bias, residual, out, in_scale, in_shift)
        if tensors is None:
            return full()
        replay = replayed(x.device.type, _conv_replay)
    else:
        tensors = (x, weight, bias, residual, in_scale, in_shift)
    marked = _mark_grad_free(weight)
    try:
        settings = (stride, padding, dilation, groups, relu, pointwise, in_relu)
        return call(module, (*tensors, out), settings, full,
                    lambda y: _conv_plan(tensors, in_relu, stride, padding, dilation, groups, relu, pointwise, y),
                    lambda plan: replay(plan, tensors, in_relu, relu, pointwise, out))
    finally:
        if marked:
            _marks.ids.pop()


def replayed(device_type: str, fn: Callable) -> Callable:
    """``fn`` run as the op's autocast rule runs its kernel: with autocast off below it (a kernel
    that calls F.conv2d, the torch tactic or the reference, would otherwise be cast again)."""
    return functools.partial(_autocast.run_without_autocast, device_type, fn)


def _conv_plan(tensors, in_relu, stride, padding, dilation, groups, relu, pointwise, y):
    x, w, b, residual, in_scale, in_shift = tensors
    if y.numel() == 0 or w[0].numel() == 0:  # (no reduction: the full path fills it without a kernel)
        return None
    if pointwise:
        scalars = list(_checks.pair("conv1x1", stride, "stride"))
        kernel = conv1x1_planned_kernel(x, w.reshape(w.shape[0], w.shape[1]), b, residual, in_scale, in_shift,
                                           in_relu, scalars, relu, [y])
    else:
        stride = _checks.pair("conv2d_relu", stride, "stride")
        dilation = _checks.pair("conv2d_relu", dilation, "dilation")
        scalars = (stride, normalize_padding(padding, w.shape[2:], stride, dilation), dilation, groups)
        kernel = conv2d_planned_kernel(x, w, b, residual, *scalars, relu, y)
    return None if kernel is None else (kernel, scalars, y.shape, y.stride())


def _conv_replay(plan, tensors, in_relu, relu, pointwise, out):
    kernel, scalars, shape, strides = plan
    x, w, b, residual, in_scale, in_shift = tensors
    out = destination(out, shape, strides, x, "conv1x1" if pointwise else "conv2d_relu", zip(_CONV_INPUTS, tensors))
    if pointwise:
        kernel(x, w.reshape(w.shape[0], w.shape[1]), b, residual, in_scale, in_shift, in_relu, scalars, relu, [out])
    else:
        kernel(x, w, b, residual, *scalars, relu, out)
    return out


# ---------------------------------------------------------------------------------------------
# max_pool2d through the fast path: fastconv.nn.MaxPool2d (what convert() puts in) and the functional

def pool(holder, full: Callable[[], torch.Tensor], x: torch.Tensor, out: Optional[torch.Tensor], kernel_size,
         stride, padding, dilation, ceil_mode: bool) -> torch.Tensor:
    """``full()`` (fastconv.max_pool2d with these arguments) on the first call of a layout, its
    planned kernel afterwards (``holder``: the module, or ``FUNCTIONAL``)."""
    if not usable(x, out):
        return full()
    settings = (kernel_size, stride, padding, dilation, ceil_mode)
    return call(holder, (x, out), settings, full, lambda y: _pool_plan(x, y, settings),
                lambda plan: _pool_replay(plan, x, out, ceil_mode))


def _pool_plan(x, y, settings):
    if y.numel() == 0:
        return None
    kernel_size, stride, padding, dilation, ceil_mode = settings
    window = pool_normalize(kernel_size, stride, padding, dilation)
    kernel = pool_planned_kernel(x, *window, ceil_mode, y)
    return None if kernel is None else (kernel, window, y.shape, y.stride())


def _pool_replay(plan, x, out, ceil_mode):
    kernel, window, shape, strides = plan
    out = destination(out, shape, strides, x, "max_pool2d", (("x", x),))
    kernel(x, *window, ceil_mode, out)
    return out
