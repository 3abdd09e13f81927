"""What every fastconv model shares: train mode (and eval mode while a parameter's gradient is
wanted, the input's included) runs the torchvision-equivalent forward on fastconv layers; eval
mode without gradients (torch.no_grad, torch.inference_mode, or frozen parameters and an input
that does not require grad) runs a fused copy of the model
(BatchNorm folded, conv+ReLU fused, concat-free, with convert()'s default layout policy: k x k conv
weights channels_last, and on the CPU activations channels_last inside), built on the first such
call and rebuilt whenever a parameter or buffer changed (load_state_dict, an optimizer step,
``.to(dtype)``, BatchNorm statistics updated in training), a submodule is replaced or a layer's
settings change (a conv's stride, a pool's kernel size: the ``__constants__`` of its class), or
the model is put in eval mode again (``.eval()``: after changing other attributes in place). A model
whose submodules are not all in eval mode (Monte-Carlo dropout) and forwards under torch.compile
run the model's own layers. Not seen: a write through ``.data``
(``conv.weight.data.copy_(w)``), which moves neither the tensor's version counter nor its memory;
update weights under ``torch.no_grad()`` instead."""
from __future__ import annotations

import copy
import functools
import os
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .. import _layout
from ..ops import _checks


# One lock for building any model's fused copy (a one-time step per model state), made anew in a
# forked child: a fork while another thread held it would leave it held forever there.
_FUSED_LOCK = threading.RLock()


def _reset_lock_in_child() -> None:
    global _FUSED_LOCK
    _FUSED_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)


def _shallow_tree_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors."""
    # (not copy.copy: a parametrized module, torch.nn.utils.parametrize, refuses to be copied
    # except through its state dict; its class and attributes are all the clone needs)
    clone = module.__class__.__new__(module.__class__)
    clone.__dict__.update(module.__dict__)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: None if child is None else _shallow_tree_copy(child)
                      for name, child in module._modules.items()}
    clone.__dict__.pop("_fused_cache", None)
    return clone


_PLAIN = (int, float, bool, str, tuple, type(None))


def _settings(module: nn.Module) -> tuple:
    """A module's configuration as its class declares it (``__constants__``: a conv's stride,
    padding, dilation and groups, a pool's kernel size and ceil_mode, a BatchNorm's eps), plain
    values only."""
    values = (getattr(module, name, None) for name in getattr(type(module), "__constants__", ()))
    return tuple(v if isinstance(v, _PLAIN) else None for v in values)


class FusedEvalModel(nn.Module):
    """Base of the fastconv.models classes; subclasses implement ``_forward_impl``."""

    _fastconv_fused = False  # True on the fused copy, which runs _forward_impl over fused blocks

    def forward(self, x: torch.Tensor):
        if self._fastconv_fused or _checks.is_fx_proxy(x):  # (torch.fx: the model's own layers, traced)
            return self._forward_impl(x)
        self._check_input(x)  # in train mode too: the same clear error whatever the mode
        if (self.training or self._needs_grads(x) or torch.compiler.is_compiling() or _checks.transforms_active()
                or self._submodules_want_own_layers()):
            # the model's own layers: differentiable in its parameters (fine-tuning with BatchNorm
            # frozen by eval() trains the weights as torchvision's model would; the fused copy's
            # folded weights are new tensors that gradients would never reach) and in its input
            # (a frozen model's saliency map: the fused DenseNet and Inception blocks write into
            # one buffer through out=, which autograd cannot follow); under torch.compile, which
            # traces the layers (the fused copy is built and cached by Python it cannot trace);
            # and with a submodule put back in train mode (Monte-Carlo dropout, BatchNorm on batch
            # statistics), which the fused copy, folded and all in eval mode, would not honour, or
            # with forward hooks on a submodule, which the fused copy's modules do not carry; and
            # under forward-mode AD or a torch.func transform (see fastconv/fused.py's _input_grad_wanted)
            return self._forward_impl(x)
        return self._fused_model()(x)

    def _submodules_want_own_layers(self) -> bool:
        """A submodule in train mode, or one with forward hooks of its own (the fused copy has
        other modules: the hooks would never run, and a pre-hook that changes its input would
        silently not apply), or a lazy one not yet shaped (nn.LazyConv2d: its first call makes
        its parameters, and a lazy module's forward pre-hook does so), sends the forward through
        the model's own layers."""
        return any(m.training or ((m._forward_hooks or m._forward_pre_hooks) and m is not self)
                   or (isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params())
                   for m in self.modules())

    def train(self, mode: bool = True):
        # a fresh fused copy at the next eval call: .eval() after changing a layer's attributes
        # (a stride, a padding) in place makes them seen, as the module swaps in _state_key are
        self.__dict__.pop("_fused_cache", None)
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        # a fresh fused copy at the next eval call, whatever the key below can see: parameters made
        # under torch.inference_mode have no version counter, so a load in place into them (same
        # memory, same shape) would not change it
        self.__dict__.pop("_fused_cache", None)
        return super().load_state_dict(*args, **kwargs)

    def _needs_grads(self, x: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a tensor, got {type(x).__name__}")
        want = self._in_channels()
        if x.dim() != 4 or (want is not None and x.shape[1] != want):
            raise ValueError(f"{type(self).__name__}: expected input of shape [N, {want if want is not None else 'C'}"
                             f", H, W], got {tuple(x.shape)}")

    def _in_channels(self):
        """The first conv's input channels; None for a lazy one (nn.LazyConv2d: its first call sets them)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                return None if isinstance(m, nn.modules.lazy.LazyModuleMixin) else m.in_channels
        raise AssertionError("model without a conv")

    def _state_key(self):
        """What the fused copy was built from: every parameter and buffer (memory, version, dtype,
        shape), the module tree itself (a submodule replaced, ``model.avgpool = ...``, has nothing
        of the former's in the copy) and each module's settings (a conv's stride or a pool's
        kernel size changed in place: a CIFAR-style stem edit after an eval call). One walk of the
        tree and its dicts: ``self.parameters()`` and ``self.buffers()`` walk it twice more, with
        de-duplication, and cost ResNet-50 twice this key."""
        modules = tuple(self.modules())
        tensors = [t for m in modules for d in (m._parameters, m._buffers) for t in d.values() if t is not None]
        # (an inference tensor, a model built or loaded under torch.inference_mode, has no version
        # counter: its memory, dtype and shape are the key; a write into it in place inside
        # inference mode other than load_state_dict is not seen: call .eval() after one)
        return (tuple((t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device, t.shape)
                      for t in tensors),
                tuple(map(id, modules)),
                tuple(_settings(m) for m in modules))

    def _fused_model(self) -> nn.Module:
        from ..convert import _convert

        key = self._state_key()
        cache = self.__dict__.get("_fused_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        lock = _FUSED_LOCK
        # (normal tensors even when called under inference_mode: the CPU kernels cache transformed
        # weights by version counter, which inference tensors lack; fastconv/ops/_weight_cache.py)
        with lock, torch.no_grad(), torch.inference_mode(False):
            cache = self.__dict__.get("_fused_cache")
            if cache is None or cache[0] != key:
                clone = _shallow_tree_copy(self)
                clone._fastconv_fused = True
                fused = _convert(clone, None).eval()
                # convert()'s default layout policy: k x k conv weights stored channels_last (in
                # the copy's own parameter/buffer dicts; the model's tensors are untouched), and on
                # the CPU activations channels_last inside, the input's layout outside
                _layout.conv_weights_channels_last(fused)
                _layout.add_cpu_channels_last_hooks(fused)
                cache = (key, fused)
                self.__dict__["_fused_cache"] = cache
        return cache[1]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_fused_cache", None)
        state.pop("_fused_lock", None)  # (pickles of an earlier fastconv carried one)
        return state

    def __deepcopy__(self, memo):
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for k, v in self.__getstate__().items():
            clone.__dict__[k] = copy.deepcopy(v, memo)
        return clone


def resolve_weights(weights: Any, model_name: str) -> Any:
    """torchvision's rules for a builder's ``weights``, where torchvision is installed: a weights
    enum of another model is a TypeError (before any download), and a string that is not a file
    names a member of the model's enum (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
    ``"ResNet50_Weights.DEFAULT"``). State dicts and paths pass through."""
    if weights is None or isinstance(weights, Mapping) or isinstance(weights, os.PathLike):
        return weights
    if isinstance(weights, str) and os.path.exists(weights):
        return weights
    try:
        from torchvision.models import get_model_weights

        enum = get_model_weights(model_name)
    except (ImportError, ValueError):  # no torchvision (or a model it does not know)
        return weights
    if isinstance(weights, str):
        try:
            return enum.verify(weights)
        except (KeyError, ValueError):
            raise ValueError(f"{model_name}: weights={weights!r} is neither a file nor a name of "
                             f"{enum.__name__} ({', '.join(enum.__members__)})") from None
    if hasattr(weights, "get_state_dict"):
        return enum.verify(weights)  # (torchvision's TypeError for another model's weights)
    return weights


_BUILDER_DOC = """

Arguments as torchvision's ``torchvision.models.{name}`` (the same layer tree and state-dict keys,
so ``load_state_dict(torchvision_model.state_dict())`` works with ``strict=True``):

- ``weights``: None (random initialization), a state dict, a path to one (``torch.load`` with
  ``weights_only=True``), or torchvision's weights enum of this model or a member's name such as
  ``"DEFAULT"`` or ``"IMAGENET1K_V1"`` (the enum downloads the file, as torchvision does). The
  deprecated ``pretrained=True`` means ``weights="IMAGENET1K_V1"``, with torchvision's warning.
- ``progress``: show the download's progress bar.
- ``**kwargs``: passed to the model class as torchvision's builder passes them (``num_classes`` ...).

In training mode, or whenever a parameter's gradient is wanted, the model runs its own layers and
trains as torchvision's would; in ``eval()`` under ``torch.no_grad()`` / ``torch.inference_mode()``
it runs a fused copy (BatchNorm folded, conv+ReLU fused, concat-free), as ``fastconv.convert`` makes.
"""


def builder(fn):
    """A model builder taking torchvision's ``weights`` (see ``resolve_weights``), and its
    deprecated ``pretrained=True/False`` (the ImageNet weights torchvision maps it to, with its warning).
    The builder's docstring gains the arguments' description (``help(fastconv.models.resnet50)``)."""
    fn.__doc__ = (fn.__doc__ or f"{fn.__name__}: torchvision's model on fastconv's fused ops.").rstrip() \
        + _BUILDER_DOC.format(name=fn.__name__)

    @functools.wraps(fn)
    def build(*, weights=None, progress: bool = True, **kwargs):
        if "pretrained" in kwargs:
            pretrained = kwargs.pop("pretrained")
            if weights is not None:
                raise TypeError(f"{fn.__name__}: pass weights= or the deprecated pretrained=, not both")
            weights = "IMAGENET1K_V1" if pretrained else None
            warnings.warn(f"The parameter 'pretrained' is deprecated, please use 'weights' instead "
                          f"(pretrained={pretrained!r} is weights={weights!r})", UserWarning, stacklevel=2)
        return fn(weights=resolve_weights(weights, fn.__name__), progress=progress, **kwargs)

    return build


def set_builder_param(kwargs: dict, name: str, value) -> None:
    """torchvision's rule for a builder's fixed argument (resnext's groups): set it, refuse another value."""
    if kwargs.get(name, value) != value:
        raise ValueError(f"The parameter '{name}' expected value {value} but got {kwargs[name]} instead.")
    kwargs[name] = value


def state_dict_of(weights: Any, progress: bool = True) -> Mapping:
    """``weights`` as a state dict: a state dict, a path to one, or a torchvision weights enum
    (anything with ``get_state_dict(progress=...)``: that downloads, so it needs network access)."""
    if isinstance(weights, Mapping):
        return weights
    if isinstance(weights, (str, os.PathLike)):
        return torch.load(weights, map_location="cpu", weights_only=True)
    if hasattr(weights, "get_state_dict"):
        return weights.get_state_dict(progress=progress, check_hash=True)
    raise TypeError(f"weights must be a state dict, a path or a torchvision weights enum, got {type(weights).__name__}")


def load_weights(model: nn.Module, weights: Any, progress: bool = True) -> nn.Module:
    """Load ``weights`` (see ``state_dict_of``) into ``model``, strictly."""
    if weights is None:
        return model
    model.load_state_dict(state_dict_of(weights, progress), strict=True)
    return model


def num_classes_from(weights: Any, kwargs: dict) -> None:
    """torchvision's rule: weights with a category list fix num_classes."""
    meta = getattr(weights, "meta", None)
    if isinstance(meta, Mapping) and "categories" in meta:
        n = len(meta["categories"])
        if kwargs.get("num_classes", n) != n:
            raise ValueError(f"num_classes={kwargs['num_classes']} does not match the weights' {n} categories")
        kwargs["num_classes"] = n


def conv(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, groups: int = 1,
         dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    """The conv layer of every fastconv model: nn.Conv2d's parameters, fastconv's kernel."""
    from ..nn.layers import Conv2dReLU

    return Conv2dReLU(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                      dilation=dilation, bias=bias, relu=False)
