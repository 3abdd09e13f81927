"""Inference modules with folded weights, built from trained layers by ``fastconv.convert``.

Each fused module holds its folded weights as buffers (BatchNorm folded into the conv in
float64, then cast once) and runs only fastconv ops in its forward. They are eval-only: their
buffers are copies, so gradients do not reach the layers they were built from.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _fastpath, ops
from .ops.conv1x1 import planned_kernel as conv1x1_planned_kernel
from .nn.layers import Conv2dReLU, MaxPool2d


def _as_dtype(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return t.detach().to(dtype or t.dtype).clone()


class _InferenceOnly(nn.Module):
    """A fused module: folded weights held as buffers, eval-mode BatchNorm statistics baked in."""

    def train(self, mode: bool = True):
        if mode:
            warnings.warn(f"fastconv: {type(self).__name__} (from fastconv.convert) is inference-only: its BatchNorm "
                          "is folded with the running statistics and its weights are buffers, so train mode changes "
                          "nothing in it and no gradient reaches its weights; train the original model and convert "
                          "it again", stacklevel=2)
        return super().train(mode)


class NotFusable(ValueError):
    """A block whose layers cannot be folded (e.g. a norm layer other than BatchNorm2d with
    running statistics); ``convert`` then converts its convs one by one instead."""


def has_hooks(m: nn.Module) -> bool:
    """Hooks on the module itself: replacing or folding it would silently drop them (a pre-hook
    that changes the input, a hook that reads or changes the output), so such a module stays."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def conv_relu_kind(m: nn.Module) -> Optional[bool]:
    """For a conv a fused conv may replace: whether it applies a ReLU itself (False for nn.Conv2d,
    the ``relu`` flag for fastconv.nn.Conv2dReLU); None for any other module, a Conv2d subclass
    with its own forward included (it may not compute what nn.Conv2d computes: left as it is),
    a conv with hooks, and the padding modes the fused conv does not take."""
    if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros" or has_hooks(m):
        return None
    if isinstance(m, Conv2dReLU) and type(m).forward is Conv2dReLU.forward:
        return bool(m.relu)
    if type(m).forward is nn.Conv2d.forward and type(m)._conv_forward is nn.Conv2d._conv_forward:
        return False
    return None


def require_plain_conv(m: nn.Module, where: str) -> nn.Conv2d:
    """A block's conv slot must hold what nn.Conv2d computes for the block to be folded whole."""
    if conv_relu_kind(m) is not False:
        raise NotFusable(f"fastconv: {where} is {type(m).__name__} ({m}), not a plain nn.Conv2d with zero padding")
    return m


def is_plain_relu(m: nn.Module) -> bool:
    """nn.ReLU itself: what a fused conv's epilogue computes (a subclass may have a forward of its
    own), without hooks."""
    return type(m) is nn.ReLU and not has_hooks(m)


def is_plain_bn(m: nn.Module) -> bool:
    """A BatchNorm2d computing what BatchNorm2d's forward computes (a subclass with a forward of its
    own, timm's BatchNormAct2d with an activation inside, does not), or torchvision's
    FrozenBatchNorm2d (what its detection and segmentation builders put in a pretrained backbone:
    the same eval-mode affine map from buffers), without hooks."""
    return ((isinstance(m, nn.BatchNorm2d) and type(m).forward is nn.BatchNorm2d.forward) or _is_frozen_bn(m)) \
        and not has_hooks(m)


def _is_frozen_bn(m: nn.Module) -> bool:
    return runs_forward_of(m, "torchvision.ops.misc", "FrozenBatchNorm2d")


def runs_forward_of(m: nn.Module, module: str, name: str) -> bool:
    """Whether ``m`` is an instance of class ``module.name`` (or a subclass) that runs that class's
    own forward. Looked up by name, so torchvision need not be imported."""
    for cls in type(m).__mro__:
        if cls.__name__ == name and cls.__module__ == module:
            return type(m).forward is cls.forward
    return False


def is_plain_max_pool(m: nn.Module) -> bool:
    """A max-pool fastconv's pool may stand in for: nn.MaxPool2d's own forward (not a subclass's,
    e.g. a "same"-padding pool) or fastconv.nn.MaxPool2d, values only (no return_indices), no hooks."""
    return (type(m) is MaxPool2d or (isinstance(m, nn.MaxPool2d) and type(m).forward is nn.MaxPool2d.forward)) \
        and not m.return_indices and not has_hooks(m)


def require_relu(m: nn.Module, where: str) -> None:
    """A block's activation slot must be nn.ReLU (a block rebuilt with another activation, or a
    ReLU subclass, is converted layer by layer under its own forward instead)."""
    if not is_plain_relu(m):
        raise NotFusable(f"fastconv: {where} is {type(m).__name__}, not nn.ReLU")


def require_known(m: nn.Module, names: Tuple[str, ...], where: str) -> nn.Module:
    """A submodule a fused block rebuilds by its known forward: torchvision's or fastconv.models' class."""
    if type(m).__name__ not in names or type(m).__module__ not in KNOWN_MODULES:
        raise NotFusable(f"fastconv: {where} is {type(m).__module__}.{type(m).__name__}, not torchvision's "
                         f"{'/'.join(names)}")
    return m


# The blocks fastconv rebuilds whole, known by class: torchvision's and fastconv.models' (which
# keep torchvision's attribute names). A class of the same name defined elsewhere (a CIFAR
# BasicBlock with a ``shortcut``, or another forward) is not assumed to compute the same.
KNOWN_MODULES = frozenset(f"{pkg}.models.{family}" for pkg in ("torchvision", "fastconv")
                          for family in ("resnet", "googlenet", "densenet"))


def bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's eval-mode affine map ``y = x * scale + shift``, in float64."""
    if not is_plain_bn(bn):
        raise NotFusable(f"fastconv: cannot fold {type(bn).__name__}: only BatchNorm2d (its own forward, "
                         "no hooks) and torchvision's FrozenBatchNorm2d fold into a conv")
    if bn.running_mean is None or bn.running_var is None:
        raise NotFusable(f"fastconv: cannot fold {bn}: it has no running statistics (track_running_stats=False)")
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The weight and bias of ``bn(conv(x))`` as one conv, in float64 (bias None if neither has one)."""
    weight = conv.weight.detach().double()
    bias = None if conv.bias is None else conv.bias.detach().double()
    if bn is None:
        return weight, bias
    scale, shift = bn_scale_shift(bn)
    if scale.numel() != weight.shape[0]:  # (eager raises on such a model: fold nothing)
        raise NotFusable(f"fastconv: {bn} does not match {conv}'s {weight.shape[0]} output channels")
    weight = weight * scale.view(-1, 1, 1, 1)
    bias = shift if bias is None else bias * scale + shift
    return weight, bias


class FusedConv(_InferenceOnly):
    """relu?(conv(x) + bias + residual): a 1×1 conv runs on conv1x1's GEMM, any other on conv2d_relu."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride=1, padding=0, dilation=1,
                 groups: int = 1, relu: bool = True, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.register_buffer("weight", _as_dtype(weight, dtype))
        self.register_buffer("bias", _as_dtype(bias, dtype))
        self.stride, self.padding, self.dilation, self.groups, self.relu = stride, padding, dilation, groups, relu
        self.pointwise = (tuple(weight.shape[2:]) == (1, 1) and groups == 1
                          and _is_zero(padding) and not isinstance(padding, str))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None, relu: bool = False,
                  dtype: Optional[torch.dtype] = None) -> "FusedConv":
        if conv.padding_mode != "zeros":
            raise NotFusable(f"fastconv: cannot fuse {conv}: padding_mode={conv.padding_mode!r} is not supported")
        weight, bias = fold_conv_bn(conv, bn)
        target = dtype or conv.weight.dtype
        return cls(weight.to(target), None if bias is None else bias.to(target), conv.stride, conv.padding,
                   conv.dilation, conv.groups, relu)

    def extra_repr(self) -> str:
        kind = "1x1 GEMM" if self.pointwise else "conv"
        return (f"{kind} {tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}, "
                f"bias={self.bias is not None}, relu={self.relu}")

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
        # the full op path once per call layout, then its kernel directly (fastconv/_fastpath.py); the
        # buffers straight from their dict: self.weight goes through nn.Module.__getattr__
        w, b = self._buffers["weight"], self._buffers["bias"]
        return _fastpath.conv(self, lambda: self._full(x, residual, out), x, w, b, residual, out, self.stride,
                              self.padding, self.dilation, self.groups, self.relu, self.pointwise)

    def _full(self, x, residual, out):
        if self.pointwise:
            return ops.conv1x1(x, self.weight, self.bias, self.stride, relu=self.relu, residual=residual, out=out)
        return ops.conv2d_relu(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                               relu=self.relu, residual=residual, out=out)


def _is_zero(padding) -> bool:
    if isinstance(padding, str):
        return padding == "valid"
    if isinstance(padding, int):
        return padding == 0
    return all(p == 0 for p in padding)


class FusedPreActConv1x1(_InferenceOnly):
    """DenseNet's ``conv(relu(bn(x)))`` (+ a following BatchNorm folded in, + ReLU): the BN-ReLU is
    conv1x1's prologue, applied as x is read and never written to memory."""

    def __init__(self, pre_bn: nn.BatchNorm2d, conv: nn.Conv2d, post_bn: Optional[nn.BatchNorm2d], relu: bool,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if tuple(conv.kernel_size) != (1, 1) or conv.groups != 1 or not _is_zero(conv.padding):
            raise NotFusable(f"fastconv: FusedPreActConv1x1 needs a 1x1 conv, got {conv}")
        target = dtype or conv.weight.dtype
        scale, shift = bn_scale_shift(pre_bn)
        weight, bias = fold_conv_bn(conv, post_bn)
        self.register_buffer("in_scale", scale.to(target))
        self.register_buffer("in_shift", shift.to(target))
        self.register_buffer("weight", weight.to(target))
        self.register_buffer("bias", None if bias is None else bias.to(target))
        self.stride, self.relu = conv.stride, relu

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        bufs = self._buffers  # not through nn.Module.__getattr__ four times per call
        return _fastpath.conv(self, lambda: self._full(x, out), x, bufs["weight"], bufs["bias"], None, out,
                              self.stride, 0, 1, 1, self.relu, True, bufs["in_scale"], bufs["in_shift"], True)

    def _full(self, x, out):
        return ops.conv1x1(x, self.weight, self.bias, self.stride, relu=self.relu, in_scale=self.in_scale,
                           in_shift=self.in_shift, in_relu=True, out=out)


class FusedResidualBlock(_InferenceOnly):
    """ResNet's BasicBlock / Bottleneck: every BN folded; the last conv adds the shortcut and
    applies ReLU in its epilogue; the projection shortcut is a (strided) 1×1 GEMM."""

    def __init__(self, block: nn.Module, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        names = ["conv1", "conv2", "conv3"] if hasattr(block, "conv3") else ["conv1", "conv2"]
        require_relu(block.relu, "the block's relu")
        convs = [FusedConv.from_conv(require_plain_conv(getattr(block, n), n), getattr(block, "bn" + n[-1]),
                                     relu=True, dtype=dtype) for n in names]
        self.convs = nn.ModuleList(convs)
        ds = block.downsample
        self.downsample = None
        if ds is not None:
            if not (type(ds) is nn.Sequential and len(ds) == 2 and is_plain_bn(ds[1])):
                raise NotFusable(f"fastconv: unsupported ResNet downsample {ds}")
            self.downsample = FusedConv.from_conv(require_plain_conv(ds[0], "downsample[0]"), ds[1], relu=False,
                                                  dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = x
        for conv in self.convs[:-1]:
            y = conv(y)
        return self.convs[-1](y, residual=identity)


def _input_grad_wanted(x: torch.Tensor) -> bool:
    """A forward recording autograd for its input (a saliency map, an adversarial example): the
    blocks that write into one preallocated buffer through out= (which is not differentiable) take
    their differentiable form instead. The folded weights are buffers, so no weight gradient.
    So does a forward under forward-mode AD or a torch.func transform: vmap batches no out=
    buffer, and forward mode is refused by the functionals in fastconv's words; and torch.fx
    tracing, whose graph records the functionals' ops without out=."""
    return (ops._checks.is_fx_proxy(x) or (torch.is_grad_enabled() and x.requires_grad)
            or ops._checks.transforms_active())


def _basic_conv(m: nn.Module, dtype) -> FusedConv:
    """GoogLeNet's BasicConv2d (conv, bn, then ReLU in its forward) as one fused conv."""
    require_known(m, ("BasicConv2d",), "a GoogLeNet conv")
    return FusedConv.from_conv(require_plain_conv(m.conv, "BasicConv2d.conv"), m.bn, relu=True, dtype=dtype)


class FusedInception(_InferenceOnly):
    """GoogLeNet's Inception module without torch.cat: the output is allocated once and each
    branch writes its channels into its slice. The three 1×1s that read the module's input run
    as one grouped GEMM (branch1 into the output slice, the two reductions into their own buffers)."""

    def __init__(self, m: nn.Module, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        for name in ("branch2", "branch3", "branch4"):
            branch = getattr(m, name)
            if type(branch) is not nn.Sequential or len(branch) != 2:
                raise NotFusable(f"fastconv: Inception.{name} is not torchvision's two-module nn.Sequential")
        if not is_plain_max_pool(m.branch4[0]):
            raise NotFusable(f"fastconv: Inception.branch4[0] is {m.branch4[0]}, not an nn.MaxPool2d")
        b1, b2red, b3red = _basic_conv(m.branch1, dtype), _basic_conv(m.branch2[0], dtype), _basic_conv(m.branch3[0], dtype)
        self.splits = [b1.weight.shape[0], b2red.weight.shape[0], b3red.weight.shape[0]]
        self.register_buffer("reduce_weight", torch.cat([b1.weight, b2red.weight, b3red.weight]).flatten(1))
        self.register_buffer("reduce_bias", torch.cat([b1.bias, b2red.bias, b3red.bias]))
        self.branch2 = _basic_conv(m.branch2[1], dtype)
        self.branch3 = _basic_conv(m.branch3[1], dtype)
        pool = m.branch4[0]
        self.pool = MaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)
        self.branch4 = _basic_conv(m.branch4[1], dtype)
        self.out_channels = [self.splits[0], self.branch2.weight.shape[0], self.branch3.weight.shape[0],
                             self.branch4.weight.shape[0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _input_grad_wanted(x):
            return self._differentiable(x)
        n, _, h, w = x.shape
        fmt = ops._checks.output_layout(x)
        out = torch.empty(n, sum(self.out_channels), h, w, dtype=x.dtype, device=x.device, memory_format=fmt)
        c1, c2, c3, c4 = self.out_channels
        red2 = torch.empty(n, self.splits[1], h, w, dtype=x.dtype, device=x.device, memory_format=fmt)
        red3 = torch.empty(n, self.splits[2], h, w, dtype=x.dtype, device=x.device, memory_format=fmt)
        self._reduce(x, [out[:, :c1], red2, red3])
        self.branch2(red2, out=out[:, c1:c1 + c2])
        self.branch3(red3, out=out[:, c1 + c2:c1 + c2 + c3])
        pooled = self.pool(x)
        self.branch4(pooled, out=out[:, c1 + c2 + c3:])
        return out

    def _differentiable(self, x: torch.Tensor) -> torch.Tensor:
        """The same values through the differentiable functionals (no out= buffers) and one cat."""
        weights, biases = self.reduce_weight.split(self.splits), self.reduce_bias.split(self.splits)
        b1, red2, red3 = (ops.conv1x1(x, w_, b_) for w_, b_ in zip(weights, biases))
        return torch.cat([b1, self.branch2(red2), self.branch3(red3), self.branch4(self.pool(x))], 1)

    def _reduce(self, x, outs):
        """The three 1×1s as one GEMM; outs are this module's fresh buffers (no overlap to check)."""
        def full():
            return ops.conv1x1_multi(x, self.reduce_weight, self.reduce_bias, relu=True, outs=outs)

        if not _fastpath.usable(x) or x.numel() == 0:
            return full()
        x_, w, b, run = x, self.reduce_weight, self.reduce_bias, _call_kernel
        if torch.is_autocast_enabled(x.device.type):  # as conv1x1_multi_out's autocast rule: to outs' dtype
            x_, w, b, *_ = _fastpath.autocast_conv_args(x, w, b, None, outs[0], None, None)
            run = _fastpath.replayed(x.device.type, _call_kernel)

        def args(o):  # conv1x1's kernel arguments (weight 2-D, stride [1, 1], ReLU, no prologue)
            return x_, w, b, None, None, None, False, [1, 1], True, o

        _fastpath.call(self, (x_, w, b, *outs), (), full,
                       lambda result: conv1x1_planned_kernel(*args(result)), lambda kernel: run(kernel, args(outs)))


def _call_kernel(kernel, args):
    return kernel(*args)


class FusedLinear(_InferenceOnly):
    """A plain ``nn.Linear`` in a converted model: the same ``F.linear`` (its weight and bias frozen
    Parameters, the same state-dict keys), except under autocast, where its weight's cast is cached
    (``ops._autocast.cast_param``) instead of made on every call.
    PyTorch's autocast casts a Linear's weight on every call (its cast cache lives for one region):
    AlexNet's and VGG's classifiers (58M and 120M parameters) cost most of their autocast forward
    in those casts. Outside autocast it is ``F.linear`` on the weight as it was."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        # frozen Parameters (a converted classifier keeps ``next(model.parameters())``) on the
        # Linear's own memory where no cast is asked for: tied weights stay tied, and a
        # fastconv.models eval copy holds no second classifier. Not an inference tensor's memory
        # (a model built under inference_mode): its autocast casts could not be cached (no
        # version counter), so it is copied into a normal tensor (the copy is made outside
        # inference mode: convert() and the models' fused copy both build there)
        def frozen(t):
            if t is None:
                return None
            shared = dtype in (None, t.dtype) and not t.is_inference()
            return nn.Parameter(t.detach() if shared else _as_dtype(t, dtype), requires_grad=False)

        self.register_parameter("weight", frozen(weight))
        self.register_parameter("bias", frozen(bias))  # (None registered too: state-dict keys as nn.Linear's)
        self.in_features, self.out_features = self.weight.shape[1], self.weight.shape[0]

    @classmethod
    def from_linear(cls, m: nn.Linear, dtype: Optional[torch.dtype] = None) -> "FusedLinear":
        return cls(m.weight, m.bias, dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._parameters["weight"], self._parameters["bias"]
        if ops._checks.is_fx_proxy(x) or torch.compiler.is_compiling() or ops._checks.transforms_active():
            return F.linear(x, w, b)  # (traced or transformed: autocast's own handling, if any)
        device = x.device.type
        if not ops._autocast.enabled(device):
            return F.linear(x, w, b)
        # what autocast's rule for linear does (every eligible argument to the region's dtype, then
        # the op below autocast), the weights' casts cached
        args = ops._autocast.cast_args((x, w, b), device, torch.get_autocast_dtype(device), (1, 2))
        return ops._autocast.run_without_autocast(device, F.linear, *args)


def is_plain_linear(m: nn.Module) -> bool:
    """nn.Linear itself (or the subclass nn.MultiheadAttention holds, the same layer), holding only
    its own weight and bias, without hooks or parametrizations: FusedLinear may replace it
    (a subclass may carry more state, a parametrization has other state-dict keys)."""
    return (type(m) is nn.Linear or type(m) is nn.modules.linear.NonDynamicallyQuantizableLinear) and \
        set(m._parameters) <= {"weight", "bias"} and not m._buffers and not has_hooks(m) and \
        not (m._state_dict_hooks or m._state_dict_pre_hooks or m._load_state_dict_pre_hooks
             or m._load_state_dict_post_hooks) and \
        not isinstance(m.weight, nn.parameter.UninitializedParameter)


class FusedDenseBlock(_InferenceOnly):
    """DenseNet's dense block on one preallocated buffer: each layer reads the channel prefix
    through conv1x1's BN-ReLU prologue (norm1/relu1 never materialized; norm2 folded into that
    1×1, relu2 fused), and its 3×3 conv writes the new channels straight into the buffer slice."""

    def __init__(self, block: nn.Module, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        layers = list(block.values()) if isinstance(block, nn.ModuleDict) else list(block.children())
        for i, l in enumerate(layers):
            require_known(l, ("_DenseLayer", "DenseLayer"), f"dense layer {i}")
            require_relu(l.relu1, f"dense layer {i}'s relu1")
            require_relu(l.relu2, f"dense layer {i}'s relu2")
            require_plain_conv(l.conv1, f"dense layer {i}'s conv1")
            require_plain_conv(l.conv2, f"dense layer {i}'s conv2")
        self.bottlenecks = nn.ModuleList(
            [FusedPreActConv1x1(l.norm1, l.conv1, l.norm2, relu=True, dtype=dtype) for l in layers])
        self.convs = nn.ModuleList([FusedConv.from_conv(l.conv2, None, relu=False, dtype=dtype) for l in layers])
        self.growth = [c.weight.shape[0] for c in self.convs]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _input_grad_wanted(x):  # the same values, differentiable: each layer's output concatenated
            features = [x]
            for bottleneck, conv in zip(self.bottlenecks, self.convs):
                features.append(conv(bottleneck(torch.cat(features, 1))))
            return torch.cat(features, 1)
        n, c, h, w = x.shape
        buf = torch.empty(n, c + sum(self.growth), h, w, dtype=x.dtype, device=x.device,
                          memory_format=ops._checks.output_layout(x))
        buf[:, :c].copy_(x)  # the block input, once; every later channel is written in place
        for bottleneck, conv, g in zip(self.bottlenecks, self.convs, self.growth):
            conv(bottleneck(buf[:, :c]), out=buf[:, c:c + g])
            c += g
        return buf


class FusedTransition(_InferenceOnly):
    """DenseNet's transition: BN-ReLU as conv1x1's prologue, then 2×2 average pooling."""

    def __init__(self, t: nn.Module, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        require_relu(t.relu, "the transition's relu")
        require_plain_conv(t.conv, "the transition's conv")
        self.conv = FusedPreActConv1x1(t.norm, t.conv, None, relu=False, dtype=dtype)
        self.pool = t.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))
