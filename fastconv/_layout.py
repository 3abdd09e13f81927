"""convert()'s default layout policy (channels_last=None): on the CPU the converted model runs its
4-D activations channels_last (oneDNN's convs and fastconv's CPU kernels are faster there: 1.02-1.32x
end to end over NCHW inside on the five networks, benchmarks/RESULTS_auto_cpu.md run 6) and hands a 4-D output
back in the layout it was given. Two hooks on the root module rather than a wrapper module, so the
state-dict keys and the attribute tree stay the model's; module-level functions, so the converted
model still pickles (fastconv.convert, the function, shadows the module of that name)."""
from __future__ import annotations

import copy
import threading

import torch
import torch.nn as nn

from .ops import _checks

# Per thread, one entry per forward in flight (nested or re-entrant calls each get their own):
# whether that forward's 4-D output goes back to contiguous NCHW.
_cpu_layout = threading.local()


def _cpu_channels_last_pre_hook(module: nn.Module, args):
    # torch.compile traces the model as given: no layout policy; nor under a torch.func transform,
    # whose wrapped tensors answer no memory-format query
    if torch.compiler.is_compiling() or _checks.transforms_active():
        return None
    x = args[0] if args else None
    # (as the ops read strides: a one-channel NCHW image is channels_last-"contiguous" too)
    to_cl = (isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu"
             and _checks.output_layout(x) != torch.channels_last)
    stack = _cpu_layout.__dict__.setdefault("restore", [])
    stack.append(bool(to_cl and x.is_contiguous()))  # hand back contiguous NCHW for contiguous NCHW in
    if to_cl:
        return (_checks.as_layout(x, torch.channels_last),) + tuple(args[1:])
    return None


def _cpu_channels_last_hook(module: nn.Module, args, output):
    if torch.compiler.is_compiling() or _checks.transforms_active():  # (as the pre-hook: nothing pushed)
        return None
    stack = getattr(_cpu_layout, "restore", None)
    restore = stack.pop() if stack else False
    if not restore:
        return None
    if isinstance(output, torch.Tensor):  # the common case, on every forward: no container walk
        return _checks.as_layout(output, torch.contiguous_format) if output.dim() == 4 else None
    # Backbones (torchvision's IntermediateLayerGetter, detection bodies) return dicts of feature
    # maps and classifiers return (logits, features): their 4-D tensors go back too.
    restored = _restore_nchw(output)
    return None if restored is output else restored


def _restore_nchw(obj):
    """``obj`` with every 4-D tensor in its (nested) dicts, lists and tuples made contiguous NCHW;
    ``obj`` itself, the same object, when none changes, so the caller can tell. Containers are
    rebuilt, never changed in place: the model may keep a reference to what it returned."""
    if isinstance(obj, torch.Tensor):
        return _checks.as_layout(obj, torch.contiguous_format) if obj.dim() == 4 else obj  # (obj when it already is)
    if isinstance(obj, dict):
        changed = {}
        for k, v in obj.items():
            r = _restore_nchw(v)
            if r is not v:
                changed[k] = r
        if not changed:
            return obj
        # copy.copy keeps a subclass's type and state (OrderedDict, defaultdict's factory, a
        # ModelOutput's attributes); assigning existing keys keeps their order
        out = dict(obj) if type(obj) is dict else copy.copy(obj)
        for k, r in changed.items():
            out[k] = r
        return out
    if isinstance(obj, (list, tuple)):
        items = [_restore_nchw(v) for v in obj]
        if all(r is v for r, v in zip(items, obj)):
            return obj
        if type(obj) is list:
            return items
        if type(obj) is tuple:
            return tuple(items)
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple takes its fields positionally
            return type(obj)(*items)
        try:  # other sequence types (torch.return_types, list subclasses) take an iterable
            return type(obj)(items)
        except TypeError:  # a constructor we cannot call: hand the output back as it was
            return obj
    return obj


# Modules whose forward is known to take activations in any memory layout (no .view of an
# activation, no stride assumptions): torch.nn's own layers, torchvision's CNN families as shipped
# (and its IntermediateLayerGetter), fastconv's modules, and a class that says so with a class
# attribute ``fastconv_any_layout = True``. A user's forward may .view() a feature map, which
# fails on channels_last.
_ANY_LAYOUT_MODULES = ("torch.nn.modules.", "fastconv.", "torchvision.ops.misc", "torchvision.models._utils") + tuple(
    f"torchvision.models.{family}" for family in ("alexnet", "vgg", "googlenet", "resnet", "densenet"))


def _mutates_its_input(m: nn.Module) -> bool:
    """Whether the module's first layer writes its input in place (a Sequential opening with
    ReLU(inplace=True), as Xception-style blocks do before their skip adds that input)."""
    while isinstance(m, nn.Sequential) and len(m):
        m = m[0]
    return getattr(m, "inplace", False) is True


def _channels_last_targets(m: nn.Module, root: bool = True):
    """(whether ``m`` and everything below it run on any layout, the submodules to run channels_last)."""
    results = [_channels_last_targets(c, root=False) for c in m.children()]
    below = [t for _, targets in results for t in targets]
    own = (type(m).__module__.startswith(_ANY_LAYOUT_MODULES) or getattr(type(m), "fastconv_any_layout", False) is True
           or (isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward))
    if not (own and all(ok for ok, _ in results)):
        return False, below
    if type(m).forward is nn.Module.forward or (not root and _mutates_its_input(m)):
        # a container that is never called itself (ModuleList, ModuleDict: hooks on it would never
        # run), or one that writes its input in place: the pre-hook would hand it a channels_last
        # copy, and the caller's tensor (which its own forward may use again) would miss the write
        return True, below
    return True, [m]


def _convs(m: nn.Module) -> int:
    return sum(isinstance(s, nn.Conv2d) or (type(s).__module__ == "fastconv.fused" and "weight" in s._buffers
                                            and s._buffers["weight"].dim() == 4)  # (not FusedLinear)
               for s in m.modules())


def add_cpu_channels_last_hooks(model: nn.Module) -> None:
    """The layout policy's hooks on the model when its whole forward is known to take any layout
    (torchvision's families, fastconv.models, nn.Sequential of torch.nn layers); otherwise on each
    largest submodule that is, with at least two convs (a model's own forward that flattens a
    feature map with .view() then meets the layout it would have met without fastconv)."""
    whole, targets = _channels_last_targets(model)
    for m in targets:
        if whole or _convs(m) >= 2:
            m.register_forward_pre_hook(_cpu_channels_last_pre_hook)
            m.register_forward_hook(_cpu_channels_last_hook, always_call=True)


def conv_weights_channels_last(model: nn.Module) -> None:
    """Store the 4-D conv weights of fastconv's fused modules and layers with a kernel larger than
    1x1 channels_last (OHWI): for channels_last activations oneDNN otherwise reorders the weight on
    every call (8 ms of a 290 ms ResNet-50 forward on the 2-core VM), and it is the KRSC filter the
    CUTLASS and Triton kernels read. Same values, same state-dict keys; parameters stay parameters.
    Modules convert() left alone keep their weights as they are (a weight-standardizing conv
    may .view() its weight)."""
    from . import fused

    for m in model.modules():
        if type(m).__module__ != fused.__name__ and fused.conv_relu_kind(m) is None:
            continue
        for store in (m._parameters, m._buffers):
            w = store.get("weight")
            if (w is None or w.dim() != 4 or w.shape[2] * w.shape[3] == 1
                    or w.is_contiguous(memory_format=torch.channels_last)):
                continue
            with torch.no_grad():
                cl = w.contiguous(memory_format=torch.channels_last)
            store["weight"] = nn.Parameter(cl, requires_grad=w.requires_grad) if isinstance(w, nn.Parameter) else cl
