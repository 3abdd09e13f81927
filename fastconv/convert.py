"""fastconv.convert: a torchvision-style model as a fused inference model on fastconv ops.

The module tree is walked and rewritten in place of a copy:
- the torchvision families' blocks (and fastconv.models', which share their class names and
  attributes; same-named classes from elsewhere are not assumed to be the same) become fused
  blocks: ResNet's BasicBlock/Bottleneck, GoogLeNet's BasicConv2d and Inception, DenseNet's dense
  blocks and transitions; ResNet's stem conv1/bn1/relu. Only as they come: a block whose user
  swapped in another activation, a conv subclass, another padding mode or pool, or another norm
  (fused.NotFusable) has its layers converted one by one under its own forward;
- inside any nn.Sequential (run by nn.Sequential's forward, as a chain), Conv2d→BatchNorm2d→ReLU,
  Conv2d→BatchNorm2d, Conv2d→ReLU runs become one fused conv (the BN and ReLU slots become
  nn.Identity, so names and indices are kept; code that runs a Sequential's children itself and
  reads the output between a conv and its BN or ReLU sees the fused output there);
- every other Conv2d (and fastconv.nn.Conv2dReLU, its ReLU kept) becomes a fused conv, and every
  MaxPool2d fastconv's pooling; subclasses with a forward of their own (Conv2d, BatchNorm2d,
  MaxPool2d, ReLU, Sequential) are left alone, and so is every module with hooks (forward,
  pre-forward or backward: a fused replacement would drop them), and a block with hooks anywhere
  inside it is converted layer by layer (process-wide hooks, torch.nn.modules.module's
  register_module_forward_hook, are not looked at: they run on the fused modules instead);
- modules it does not know are left as they are, and the model's own forward still drives them.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from . import _layout, fused
from .ops import _checks
from .nn.layers import MaxPool2d as FastMaxPool2d


def _pool(m: nn.MaxPool2d) -> nn.Module:
    if not fused.is_plain_max_pool(m) or isinstance(m, FastMaxPool2d):
        return m  # indices wanted, a subclass's own forward, hooks: left as it is
    return FastMaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)


def _convertible_bn(bn: nn.Module, conv: nn.Conv2d) -> bool:
    """A BatchNorm2d that folds into the conv before it (one that does not match the conv's
    channels is left to raise as it does in eager)."""
    return (fused.is_plain_bn(bn) and bn.running_mean is not None and bn.running_var is not None
            and bn.running_mean.numel() == conv.out_channels)


def _convert_sequential(seq: nn.Module, dtype, keep=frozenset()) -> nn.Module:
    """A chain of children (nn.Sequential, IntermediateLayerGetter) with Conv2d→BatchNorm2d→ReLU
    runs fused; a child named in ``keep`` (an output the container hands out) ends a run."""
    names = list(seq._modules.keys())
    mods = list(seq._modules.values())
    new = []
    i = 0
    while i < len(mods):
        m = mods[i]
        if fused.conv_relu_kind(m) is False:  # (a conv with its own ReLU cannot take a BatchNorm after it)
            bn = (mods[i + 1] if i + 1 < len(mods) and names[i] not in keep and _convertible_bn(mods[i + 1], m)
                  else None)
            j = i + 1 + (bn is not None)
            relu = j < len(mods) and names[j - 1] not in keep and fused.is_plain_relu(mods[j])
            new.append((names[i], fused.FusedConv.from_conv(m, bn, relu=relu, dtype=dtype)))
            new += [(names[k], nn.Identity()) for k in range(i + 1, j + relu)]
            i = j + relu
            continue
        new.append((names[i], _convert(m, dtype)))
        i += 1
    # in place (the Sequential is convert()'s own copy, or the user's under inplace=True)
    seq._modules = type(seq._modules)(new)
    return seq


def _convert_resnet_stem(m: nn.Module, dtype) -> None:
    """ResNet's conv1/bn1/relu as one fused conv (NotFusable, nothing changed, where they are not
    a plain conv, a BatchNorm2d with running statistics and nn.ReLU)."""
    fused.require_relu(m.relu, "the ResNet stem's relu")
    m.conv1 = fused.FusedConv.from_conv(fused.require_plain_conv(m.conv1, "the ResNet stem's conv1"), m.bn1,
                                        relu=True, dtype=dtype)
    m.bn1 = nn.Identity()
    m.relu = nn.Identity()


# The blocks convert() rewrites whole (fused.KNOWN_MODULES): a class of the same name defined
# elsewhere has its convs and pools converted one by one, and its own forward drives them.
def _known(m: nn.Module, name: str) -> bool:
    return type(m).__name__ == name and type(m).__module__ in fused.KNOWN_MODULES


def _known_layer_getter(m: nn.Module) -> bool:
    """torchvision's IntermediateLayerGetter with its own forward: its children run in order, each
    on the last one's output, and those named in ``return_layers`` are handed out."""
    return (fused.runs_forward_of(m, "torchvision.models._utils", "IntermediateLayerGetter")
            and isinstance(getattr(m, "return_layers", None), dict))


_BLOCKS = {
    "BasicBlock": fused.FusedResidualBlock,
    "Bottleneck": fused.FusedResidualBlock,
    "Inception": fused.FusedInception,
    "_DenseBlock": fused.FusedDenseBlock,
    "DenseBlock": fused.FusedDenseBlock,
    "_Transition": fused.FusedTransition,
    "Transition": fused.FusedTransition,
    "BasicConv2d": fused._basic_conv,
}


def _convert(m: nn.Module, dtype) -> nn.Module:
    name = type(m).__name__
    # a block is rebuilt whole only when nothing in it has hooks (the fused block has none of its modules)
    if name in _BLOCKS and _known(m, name) and not any(fused.has_hooks(sub) for sub in m.modules()):
        try:
            return _BLOCKS[name](m, dtype)
        except fused.NotFusable:
            pass  # e.g. another norm layer: convert the block's convs and pools one by one below
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:
        return _convert_sequential(m, dtype)  # (a subclass with its own forward: one by one, below)
    if _known_layer_getter(m):  # torchvision's backbone wrapper (detection, segmentation): a chain too
        return _convert_sequential(m, dtype, keep=frozenset(m.return_layers))
    relu = fused.conv_relu_kind(m)
    if relu is not None:
        return fused.FusedConv.from_conv(m, None, relu=relu, dtype=dtype)
    if isinstance(m, nn.Conv2d):
        return m  # its own forward or padding mode: left to compute what it computes
    if isinstance(m, nn.MaxPool2d):
        return _pool(m)
    if fused.is_plain_linear(m):
        return fused.FusedLinear.from_linear(m, dtype)
    if type(m).__module__ == fused.__name__:
        return m  # already converted
    if hasattr(type(m), "_fastconv_fused"):
        m._fastconv_fused = True  # a fastconv.models model inside: its plain forward over the fused tree
    if isinstance(m, _InputCast):  # a converted model inside: its input cast follows the new dtype
        if dtype is not None:
            m.dtype = dtype
        m.model = _convert(m.model, dtype)
        return m
    if _known(m, "ResNet"):
        try:
            _convert_resnet_stem(m, dtype)
        except fused.NotFusable:
            pass  # its layers one by one below, under ResNet's own forward
    for child_name, child in list(m._modules.items()):
        if child is None:
            continue
        new = _convert(child, dtype)
        if new is not child:
            m._modules[child_name] = new
    return m


def _drop_wrapper_prefix(module, state_dict, prefix, local_metadata):
    for key in list(state_dict):
        if key.startswith(prefix + "model."):
            state_dict[prefix + key[len(prefix) + len("model."):]] = state_dict.pop(key)


def _add_wrapper_prefix(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for key in list(state_dict):
        if key.startswith(prefix) and not key.startswith(prefix + "model."):
            state_dict[prefix + "model." + key[len(prefix):]] = state_dict.pop(key)


def _refuse_unconverted_checkpoint(module, incompatible_keys) -> None:
    """load_state_dict of a converted model: BatchNorm statistics among the keys it does not have
    mean a checkpoint of the model before conversion (its BNs are folded into the convs here, and
    loading the convs' raw weights, even with strict=False, would compute another function)."""
    stats = [k for k in incompatible_keys.unexpected_keys
             if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
    if stats:
        raise RuntimeError(
            f"fastconv: this converted model has its BatchNorm layers folded into the convs, and the state dict "
            f"holds BatchNorm statistics ({stats[0]}, ...): it is a checkpoint of the model before conversion. "
            "Load it into that model and convert it again (fastconv.convert(model))")


class _InputCast(nn.Module):
    """Casts incoming activations to the converted model's dtype / memory format: every floating
    tensor among the arguments (keyword arguments and lists, tuples and dicts of tensors too). Its
    state dict is the model's own (no "model." prefix), so a checkpoint of a converted model loads
    whatever dtype and layout options either conversion was given."""

    def __init__(self, model: nn.Module, dtype: Optional[torch.dtype], channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.dtype, self.channels_last = dtype, channels_last
        self._register_state_dict_hook(_drop_wrapper_prefix)
        self._register_load_state_dict_pre_hook(_add_wrapper_prefix)

    def _apply(self, fn, *args, **kwargs):
        # .float(), .half(), .to(dtype) on the converted model: the inputs follow the weights' new dtype
        result = super()._apply(fn, *args, **kwargs)
        if self.dtype is not None:
            first = next((t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()), None)
            if first is not None:
                self.dtype = first.dtype
        return result

    def _cast(self, x):
        if not isinstance(x, torch.Tensor):
            return x
        if self.dtype is not None and x.is_floating_point():
            x = x.to(self.dtype)
        if self.channels_last and x.dim() == 4:
            x = _checks.as_layout(x, torch.channels_last)  # (a one-channel NCHW image too)
        return x

    def forward(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):  # model(x): no container walk
            return self.model(self._cast(args[0]))
        args, kwargs = pytree.tree_map(self._cast, (args, kwargs))
        return self.model(*args, **kwargs)


def convert(model: nn.Module, *, dtype: Optional[torch.dtype] = None, channels_last: Optional[bool] = None,
            inplace: bool = False, example_input: Optional[torch.Tensor] = None, cuda_graph: bool = False,
            graph_fallback: str = "eager", graph_tune_by: str = "wall") -> nn.Module:
    """An inference module computing what ``model.eval()`` computes, on fastconv's fused ops.

    BatchNorm is folded into the preceding conv, conv+bias(+residual)+ReLU fused, max-pooling and
    concatenation run on fastconv kernels; plain ``nn.Linear`` layers stay ``F.linear`` but cache
    their weight's cast under ``torch.autocast`` (``fused.FusedLinear``). ``dtype`` casts the weights (folding is done in
    float64 first) and the incoming activations; ``channels_last=True`` makes incoming
    activations channels_last (fastconv keeps the layout through the network), ``False`` keeps
    the layout it is given, and the default ``None`` runs CPU activations channels_last (faster
    with oneDNN and fastconv's CPU kernels) while a 4-D output comes back in the input's layout;
    on a GPU ``None`` keeps the given layout (pass ``channels_last=True`` there). The original
    model is left untouched unless ``inplace=True``; then its modules are converted (and cast to
    ``dtype``) where they are, and the module to call is still the one returned (with ``dtype`` or
    ``channels_last=True``, a wrapper that casts the inputs).

    ``example_input``: tune the ``auto`` backend's tactics for this input now (``fastconv.tune``,
    with a progress line) instead of on the first call. ``cuda_graph=True`` (needs a CUDA
    ``example_input``) returns a ``CUDAGraphModel``: the eval forward captured once and replayed for
    inputs of that shape; the returned tensor is a static buffer **overwritten by the next call**.
    Inputs of another shape run the eager converted forward (``graph_fallback="eager"``) or raise
    (``graph_fallback="raise"``). On a machine without CUDA ``cuda_graph=True`` raises RuntimeError.
    ``graph_tune_by="gpu"`` tunes the captured model's tactics by GPU time alone instead of eager
    wall time (``CUDAGraphModel``'s ``tune_by``; not yet checked on a GPU, hence not the default).
    """
    if graph_tune_by not in ("wall", "gpu"):
        raise ValueError(f"fastconv.convert: graph_tune_by must be 'wall' or 'gpu', got {graph_tune_by!r}")
    if graph_fallback not in ("eager", "raise"):
        raise ValueError(f"fastconv.convert: graph_fallback must be 'eager' or 'raise', got {graph_fallback!r}")
    if cuda_graph:
        if not torch.cuda.is_available():
            raise RuntimeError("fastconv.convert(cuda_graph=True): CUDA graphs need a CUDA device, and none is "
                               "available (torch.cuda.is_available() is False)")
        if example_input is None:
            raise ValueError("fastconv.convert(cuda_graph=True) needs example_input (the shape to capture)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastconv.convert: model must be an nn.Module, got {type(model).__name__}")
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"fastconv.convert: dtype must be a floating dtype, got {dtype}")
    if channels_last is not None and not isinstance(channels_last, bool):
        raise TypeError(f"fastconv.convert: channels_last must be True, False or None, got {channels_last!r}")
    # Normal tensors even when called under inference_mode: the CPU kernels cache transformed
    # weights by version counter, which inference tensors lack (fastconv/ops/_weight_cache.py).
    with torch.inference_mode(False):
        target = model if inplace else copy.deepcopy(model)
        if isinstance(target, _InputCast):
            # converting a converted model: one input cast, the settings given now over the earlier ones
            dtype = target.dtype if dtype is None else dtype
            channels_last = True if channels_last is None and target.channels_last else channels_last
            target = target.model
        target.eval()
        converted = _convert(target, dtype)
        if dtype is not None:
            converted.to(dtype)
        converted.eval()
        for p in converted.parameters():
            p.requires_grad_(False)
        if channels_last is not False:
            _layout.conv_weights_channels_last(converted)
    if channels_last is None:
        _layout.add_cpu_channels_last_hooks(converted)
    if not any(h is _refuse_unconverted_checkpoint for h in converted._load_state_dict_post_hooks.values()):
        converted.register_load_state_dict_post_hook(_refuse_unconverted_checkpoint)
    if dtype is not None or channels_last:
        converted = _InputCast(converted, dtype, bool(channels_last)).eval()
    if cuda_graph:
        from ._graphs import CUDAGraphModel

        return CUDAGraphModel(converted, example_input, fallback=graph_fallback, tune_by=graph_tune_by).eval()
    if example_input is not None:
        from ._autotune import tune

        tune(converted, example_input)
    return converted
