"""fastconv.conv1x1: the 1x1 bottleneck conv as a GEMM over channels, with a fused prologue and epilogue.

    y = relu?( W · x'[:, :, ::s0, ::s1] + bias + residual ),   x' = relu?(x * in_scale + in_shift)

The prologue (DenseNet's BN-ReLU pre-activation) is applied to the operand as it is loaded and never
written to memory. Three public ops are defined with torch.library (they exist without the C++
extension): ``fastconv::conv1x1`` (functional), ``fastconv::conv1x1_out`` (writes into ``out``, which
may be a channel slice of a larger NCHW or NHWC buffer), and ``fastconv::conv1x1_multi_out``, the
grouped form: one GEMM with a concatenated weight [sum C_out_j, C_in] whose rows are split over
several outputs in order (GoogLeNet's three 1x1s reading the same x), so models can cache the
concatenation. Every backend kernel has one contract, writing into a list of outs:
``fn(x, weight2d, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs) -> None``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from .. import _autotune
from . import _autocast, _checks, _torch_tactic, _vmap, reference

OP = "conv1x1"
OP_MULTI = "conv1x1_multi"


# ---------------------------------------------------------------------------------------------
# argument checks

def check_args(op, x, weight, bias, residual, in_scale, in_shift, stride) -> List[int]:
    """Validate normalized arguments; return the output shape [N, C_out, OH, OW]."""
    _checks.check_tensor(op, x, "x", ndims=(4,))
    _checks.check_tensor(op, weight, "weight", ndims=(2, 4))
    _checks.check_like(op, weight, "weight", x)
    for name, t in (("bias", bias), ("residual", residual), ("in_scale", in_scale), ("in_shift", in_shift)):
        _checks.check_like(op, t, name, x)
    if weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"fastconv.{op}: weight must be [C_out, C_in] or [C_out, C_in, 1, 1], got {tuple(weight.shape)}")
    if len(stride) != 2 or any(s <= 0 for s in stride):
        raise ValueError(f"fastconv.{op}: stride must be two positive ints, got {stride}")
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    if weight.shape[1] != c_in:
        raise ValueError(
            f"fastconv.{op}: weight of shape {tuple(weight.shape)} expects {weight.shape[1]} input channels, "
            f"but x has {c_in} (x shape {tuple(x.shape)})"
        )
    if c_out == 0:
        raise ValueError(f"fastconv.{op}: weight must have at least one output channel, got {tuple(weight.shape)}")
    _checks.check_shape(op, bias, "bias", [c_out])
    _checks.check_shape(op, in_scale, "in_scale", [c_in])
    _checks.check_shape(op, in_shift, "in_shift", [c_in])
    shape = [n, c_out, (h - 1) // stride[0] + 1 if h else 0, (w - 1) // stride[1] + 1 if w else 0]
    _checks.check_shape(op, residual, "residual", shape)
    return shape


def _inputs(x, weight, bias, residual, in_scale, in_shift):
    return [("x", x), ("weight", weight), ("bias", bias), ("residual", residual),
            ("in_scale", in_scale), ("in_shift", in_shift)]


def check_outs(op, outs, shape, x, inputs, overlap=True) -> None:
    """``outs``: tensors [N, C_j, OH, OW] with sum C_j == shape[1], sharing no memory with the inputs
    or with each other (``overlap=False``: skip that, for fake tensors, which have no memory)."""
    if not isinstance(outs, (list, tuple)) or len(outs) == 0:
        raise ValueError(f"fastconv.{op}: outs must be a non-empty list of tensors, got {outs!r}")
    total = 0
    for j, o in enumerate(outs):
        name = f"outs[{j}]"
        _checks.check_tensor(op, o, name, ndims=(4,))
        _checks.check_like(op, o, name, x)
        if (o.shape[0], o.shape[2], o.shape[3]) != (shape[0], shape[2], shape[3]):
            raise ValueError(
                f"fastconv.{op}: {name} must have shape ({shape[0]}, C, {shape[2]}, {shape[3]}), got {tuple(o.shape)}"
            )
        total += o.shape[1]
    if total != shape[1]:
        raise ValueError(
            f"fastconv.{op}: the channel counts of outs {[o.shape[1] for o in outs]} sum to {total}, "
            f"but weight has {shape[1]} output channels (rows)"
        )
    for j, o in enumerate(outs if overlap else ()):
        _checks.check_no_overlap(op, o, list(inputs) + [(f"outs[{k}]", outs[k]) for k in range(j)], f"outs[{j}]")


# ---------------------------------------------------------------------------------------------
# backend kernels: fn(x, weight2d, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs) -> None

def _reference_kernel(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    y = reference.conv1x1(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu)
    c0 = 0
    for o in outs:
        o.copy_(y[:, c0:c0 + o.shape[1]])
        c0 += o.shape[1]


def _cpu_kernel(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    torch.ops.fastconv._conv1x1_cpu(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs)


def _triton_kernel(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    from .triton import conv1x1 as triton_conv1x1  # imported lazily: Triton is optional on the CPU

    triton_conv1x1.conv1x1(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs)


def _cuda_kernel(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    torch.ops.fastconv._conv1x1_cuda(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs)


def _torch_kernel(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    w4 = weight.reshape(weight.shape[0], weight.shape[1], 1, 1)
    _torch_tactic.conv(x, w4, bias, residual, stride, [0, 0, 0, 0], [1, 1], 1, relu, outs,
                       in_scale=in_scale, in_shift=in_shift, in_relu=in_relu)


KERNELS = {"reference": _reference_kernel, "cpu": _cpu_kernel, "cuda": _cuda_kernel, "triton": _triton_kernel,
           "torch": _torch_kernel}


def _run(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs) -> None:
    outs = [o for o in outs]
    if all(o.numel() == 0 for o in outs):
        return
    if weight.shape[1] == 0:  # no input channels: no GEMM (the prologue has nothing to act on)
        from .conv2d_relu import fill_without_reduction  # (here: conv2d_relu's import chain leads back to this module)

        c0 = 0
        for o in outs:
            fill_without_reduction(o, bias, residual, relu, slice(c0, c0 + o.shape[1]))
            c0 += o.shape[1]
        return
    w2d = weight.reshape(weight.shape[0], weight.shape[1])  # a view for [C_out, C_in, 1, 1] weights
    args = (x, w2d, bias, residual, in_scale, in_shift, in_relu, list(stride), relu, outs)
    _autotune.dispatch(OP, x.device, KERNELS, args, *_signature(*args),
                       lambda: 2 * sum(o.numel() for o in outs) * w2d.shape[1])


def _signature(x, w2d, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    """The tensors and flags ``auto`` keys its choice by (kernel arguments: ``w2d`` 2-D, ``outs`` a list)."""
    return (x, w2d, bias, residual, in_scale, in_shift, outs), (in_relu, stride, relu)


def planned_kernel(x, w2d, bias, residual, in_scale, in_shift, in_relu, stride, relu, outs):
    """The kernel every later call with these kernel arguments' signature runs, or None while
    ``auto`` has yet to tune it (for the fused modules' fast path, fastconv/_fastpath.py)."""
    tactic = _autotune.final_tactic(OP, x.device, *_signature(x, w2d, bias, residual, in_scale, in_shift, in_relu,
                                                               stride, relu, outs))
    return None if tactic is None else KERNELS[tactic]


def _empty_out(x, shape):
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_checks.output_layout(x))


# ---------------------------------------------------------------------------------------------
# the public torch.library ops

@torch.library.custom_op("fastconv::conv1x1", mutates_args=())
def conv1x1_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    in_scale: Optional[torch.Tensor],
    in_shift: Optional[torch.Tensor],
    in_relu: bool,
    stride: List[int],
    relu: bool,
) -> torch.Tensor:
    shape = check_args(OP, x, weight, bias, residual, in_scale, in_shift, stride)
    out = _empty_out(x, shape)
    _run(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, [out])
    return out


@conv1x1_op.register_fake
def _(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu):
    return _empty_out(x, check_args(OP, x, weight, bias, residual, in_scale, in_shift, stride))


@torch.library.custom_op("fastconv::conv1x1_out", mutates_args=("out",))
def conv1x1_out_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    in_scale: Optional[torch.Tensor],
    in_shift: Optional[torch.Tensor],
    in_relu: bool,
    stride: List[int],
    relu: bool,
    out: torch.Tensor,
) -> None:
    shape = check_args(OP, x, weight, bias, residual, in_scale, in_shift, stride)
    _checks.check_out(OP, out, shape, x, _inputs(x, weight, bias, residual, in_scale, in_shift))
    _run(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, [out])


@conv1x1_out_op.register_fake
def _(x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu, out):
    shape = check_args(OP, x, weight, bias, residual, in_scale, in_shift, stride)
    _checks.check_out(OP, out, shape, x, ())  # device too: a meta out with real inputs lands here


@torch.library.custom_op("fastconv::conv1x1_multi_out", mutates_args=("outs",))
def conv1x1_multi_out_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    in_scale: Optional[torch.Tensor],
    in_shift: Optional[torch.Tensor],
    in_relu: bool,
    stride: List[int],
    relu: bool,
    outs: List[torch.Tensor],
) -> None:
    shape = check_args(OP_MULTI, x, weight, bias, None, in_scale, in_shift, stride)
    check_outs(OP_MULTI, outs, shape, x, _inputs(x, weight, bias, None, in_scale, in_shift))
    _run(x, weight, bias, None, in_scale, in_shift, in_relu, stride, relu, outs)


@conv1x1_multi_out_op.register_fake
def _(x, weight, bias, in_scale, in_shift, in_relu, stride, relu, outs):
    shape = check_args(OP_MULTI, x, weight, bias, None, in_scale, in_shift, stride)
    check_outs(OP_MULTI, outs, shape, x, (), overlap=False)


# ---------------------------------------------------------------------------------------------
# autograd: the reference formula differentiated by PyTorch (recomputed in backward; fastconv is an
# inference library first, and this keeps the prologue's gradient exact without a second kernel)

def _setup_context(ctx, inputs, output):
    x, weight, bias, residual, in_scale, in_shift, in_relu, stride, relu = inputs
    ctx.save_for_backward(x, weight, bias, residual, in_scale, in_shift)
    ctx.flags = (in_relu, stride, relu)


def _backward(ctx, grad):
    """The reference's gradient, recomputed. Under create_graph (grad mode on in here: a gradient
    penalty, double backward) from the saved tensors themselves, so that the gradient returned is
    differentiable in them and in ``grad``; otherwise from detached copies (nothing recorded)."""
    tensors = ctx.saved_tensors
    in_relu, stride, relu = ctx.flags
    needs = ctx.needs_input_grad[:6]
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        if create:
            leaves = [t if t is None or need else t.detach() for t, need in zip(tensors, needs)]
        else:
            leaves = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(tensors, needs)]
        y = reference.conv1x1(*leaves, in_relu, stride, relu)
        wanted = [t for t, need in zip(leaves, needs) if t is not None and need]
        found = iter(torch.autograd.grad(y, wanted, grad, allow_unused=True, create_graph=create) if wanted else ())
    grads = [next(found) if t is not None and need else None for t, need in zip(leaves, needs)]
    # an input the recomputation did not reach (x with no channels) gets zeros, as the conv's own
    # backward gives, not None (which would leave its .grad unset)
    grads = [torch.zeros_like(t) if g is None and t is not None and need else g
             for g, t, need in zip(grads, tensors, needs)]
    return (*grads, None, None, None)


torch.library.register_autograd("fastconv::conv1x1", _backward, setup_context=_setup_context)
# x, residual | weight, bias, in_scale, in_shift
_vmap.register_batch_folding("conv1x1", per_image=(0, 3), per_channel=(1, 2, 4, 5))


# ---------------------------------------------------------------------------------------------
# the Python API

def conv1x1(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    *,
    relu: bool = True,
    residual: Optional[torch.Tensor] = None,
    in_scale: Optional[torch.Tensor] = None,
    in_shift: Optional[torch.Tensor] = None,
    in_relu: bool = False,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``relu?(conv2d(x', weight, bias, stride) + residual)`` for a 1x1 ``weight``, in one pass.

    ``weight`` is [C_out, C_in, 1, 1] or [C_out, C_in]. ``x' = x * in_scale + in_shift`` per input
    channel (either may be None), then ReLU if ``in_relu``: a BatchNorm-ReLU pre-activation applied as
    x is loaded. ``out`` (a tensor or a channel-slice view of a larger buffer, sharing no memory with
    the inputs) receives the result in place; x may itself be a channel slice of that buffer.
    3-D (unbatched) input is accepted as F.conv2d accepts it. Repeated inference calls replay
    their kernel as ``conv2d_relu``'s do (fastconv/_fastpath.py).
    """
    def full():
        return _conv1x1(x, weight, bias, stride, relu, residual, in_scale, in_shift, in_relu, out)

    if type(relu) is bool and type(in_relu) is bool and _fastpath.plain_settings(stride):
        return _fastpath.conv(_fastpath.FUNCTIONAL, full, x, weight, bias, residual, out, stride, 0, 1, 1, relu, True,
                              in_scale, in_shift, in_relu)
    return full()


def _conv1x1(x, weight, bias, stride, relu, residual, in_scale, in_shift, in_relu, out):
    """The full path of ``conv1x1``: argument checks, then the public torch.library op."""
    if _checks.is_fx_proxy(x):
        if out is not None:
            raise NotImplementedError(f"fastconv.{OP} under torch.fx tracing takes no out=")
        return torch.ops.fastconv.conv1x1(x, weight, bias, residual, in_scale, in_shift, in_relu,
                                          _checks.pair(OP, stride, "stride"), relu)
    _checks.check_tensor(OP, x, "x", ndims=(3, 4))
    _checks.check_autodiff_mode(OP, (x, weight, bias, residual, in_scale, in_shift))
    stride_ = _checks.pair(OP, stride, "stride")
    _checks.check_flag(OP, relu, "relu")
    _checks.check_flag(OP, in_relu, "in_relu")
    unbatched = x.dim() == 3
    out_view = out
    if unbatched:
        x = x.unsqueeze(0)
        residual = None if residual is None else _checks.check_tensor(OP, residual, "residual", ndims=(3,)).unsqueeze(0)
        out_view = None if out is None else _checks.check_tensor(OP, out, "out", ndims=(3,)).unsqueeze(0)
    if out_view is not None:
        # before dispatch: a meta out would reach the fake kernel; out= is not differentiable
        _checks.check_out_call(OP, out_view, x, (weight, bias, residual, in_scale, in_shift))
    if out_view is None:
        y = torch.ops.fastconv.conv1x1(x, weight, bias, residual, in_scale, in_shift, in_relu, stride_, relu)
        return y.squeeze(0) if unbatched else y
    torch.ops.fastconv.conv1x1_out(x, weight, bias, residual, in_scale, in_shift, in_relu, stride_, relu, out_view)
    return out


def conv1x1_multi(
    x: torch.Tensor,
    weights: Union[torch.Tensor, Sequence[torch.Tensor]],
    biases: Union[None, torch.Tensor, Sequence[Optional[torch.Tensor]]] = None,
    stride: Union[int, Sequence[int]] = 1,
    *,
    relu: bool = True,
    in_scale: Optional[torch.Tensor] = None,
    in_shift: Optional[torch.Tensor] = None,
    in_relu: bool = False,
    outs: Optional[Sequence[Optional[torch.Tensor]]] = None,
    split_sizes: Optional[Sequence[int]] = None,
) -> List[torch.Tensor]:
    """Several 1x1 convs of the same x as one GEMM; returns one output per weight.

    ``weights``: a list of [C_out_j, C_in(, 1, 1)] tensors, or one pre-concatenated [sum C_out_j, C_in]
    tensor (cached by the caller) with the split given by ``split_sizes`` or by ``outs``' channel
    counts. ``biases``: None, a list (entries may be None: zero bias) or one concatenated tensor.
    ``outs``: optional list of destinations (entries may be None: allocated in x's layout), e.g. a
    channel slice of a module's output buffer for one branch and fresh tensors for the others.
    """
    _checks.check_tensor(OP_MULTI, x, "x", ndims=(4,))
    given = (x, in_scale, in_shift, *(weights if isinstance(weights, (list, tuple)) else [weights]),
             *(biases if isinstance(biases, (list, tuple)) else [biases]))
    _checks.check_autodiff_mode(OP_MULTI, [t for t in given if isinstance(t, torch.Tensor)])
    stride_ = _checks.pair(OP_MULTI, stride, "stride")
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in given):
        # (it writes every output through the out variant; without this the error would name an
        # outs[0]= the caller may never have passed)
        raise RuntimeError(f"fastconv.{OP_MULTI} is not differentiable (it writes its outputs in place); an input "
                           "requires grad: call it under torch.no_grad(), or fastconv.conv1x1 once per weight")
    # under autocast the op computes in the given outs' dtype, else in autocast's (see _autocast.py):
    # the weights and biases of a list are cast to it before they are concatenated
    amp_dtype = None
    if x.is_floating_point() and x.dtype != torch.float64 and _autocast.enabled(x.device.type):
        given = [o for o in (outs if isinstance(outs, (list, tuple)) else ()) if isinstance(o, torch.Tensor)]
        amp_dtype = given[0].dtype if given and given[0].is_floating_point() else torch.get_autocast_dtype(
            x.device.type)  # (a non-floating out: its own check names it)

    def like(t, name):
        if amp_dtype is not None and _autocast.eligible(t, x.device.type):  # (float64 is not cast, as the rule)
            t = t.to(amp_dtype)
        _checks.check_like(OP_MULTI, t, name, x, dtype=amp_dtype)
        return t

    def cat(tensors):  # (not through autocast's promote policy: it refuses float16 in a bfloat16 region)
        if amp_dtype is None:
            return torch.cat(tensors)
        return _autocast.run_without_autocast(x.device.type, torch.cat, tensors)

    if isinstance(weights, torch.Tensor):
        weight = weights
        user_split = split_sizes is not None
        if split_sizes is None:
            if outs is None or any(o is None for o in outs):
                raise ValueError(f"fastconv.{OP_MULTI}: a concatenated weight needs split_sizes or a complete outs list")
            split_sizes = [o.shape[1] for o in outs]
        sizes = [int(s) for s in split_sizes]
        if any(size < 0 for size in sizes):
            raise ValueError(f"fastconv.{OP_MULTI}: split sizes must be non-negative, got {sizes}")
        if user_split and weight.dim() >= 1 and sum(sizes) != weight.shape[0]:
            raise ValueError(
                f"fastconv.{OP_MULTI}: split_sizes {sizes} sum to {sum(sizes)}, but weight has {weight.shape[0]} rows"
            )
    else:
        if not isinstance(weights, (list, tuple)) or len(weights) == 0:
            raise ValueError(f"fastconv.{OP_MULTI}: weights must be a tensor or a non-empty list of tensors")
        ws = []
        for j, w in enumerate(weights):
            _checks.check_tensor(OP_MULTI, w, f"weights[{j}]", ndims=(2, 4))
            if w.shape[1] != x.shape[1] or w.shape[2:] not in ((), (1, 1)):
                raise ValueError(
                    f"fastconv.{OP_MULTI}: weights[{j}] must be [C_out, {x.shape[1]}] or [C_out, {x.shape[1]}, 1, 1] "
                    f"for x of shape {tuple(x.shape)}, got {tuple(w.shape)}"
                )
            # (torch.cat below would promote mixed dtypes, and the op's message name a "weight")
            w = like(w, f"weights[{j}]")
            ws.append(w.reshape(w.shape[0], w.shape[1]))  # (-1 is ambiguous for a weight with 0 rows)
        weight = cat(ws)
        sizes = [w.shape[0] for w in ws]
    if biases is None or isinstance(biases, torch.Tensor):
        bias = biases
    else:
        if len(biases) != len(sizes):
            raise ValueError(f"fastconv.{OP_MULTI}: got {len(biases)} biases for {len(sizes)} weights")
        if all(b is None for b in biases):
            bias = None
        else:
            parts = []
            for j, (b, size) in enumerate(zip(biases, sizes)):
                if b is None:
                    parts.append(x.new_zeros(size, dtype=amp_dtype or x.dtype))
                else:
                    parts.append(like(b, f"biases[{j}]").reshape(-1))
            bias = cat(parts)
    if outs is not None and len(outs) != len(sizes):
        raise ValueError(f"fastconv.{OP_MULTI}: got {len(outs)} outs for {len(sizes)} weights")
    if torch.jit.is_tracing() or (outs is None and _checks.transforms_active()):
        # one conv1x1 per weight: torch.jit.trace records no op whose outputs are a list of
        # mutated tensors (the traced graph would leave the outs unwritten), and under
        # torch.func.vmap the outputs this function allocates would not be batched
        parts = bias.split(sizes) if bias is not None else [None] * len(sizes)
        return [conv1x1(x, w_, b_, stride_, relu=relu, in_scale=in_scale, in_shift=in_shift, in_relu=in_relu, out=o)
                for w_, b_, o in zip(weight.split(sizes), parts, outs if outs is not None else [None] * len(sizes))]
    n, _, h, w = x.shape
    oh = (h - 1) // stride_[0] + 1 if h and stride_[0] > 0 else 0
    ow = (w - 1) // stride_[1] + 1 if w and stride_[1] > 0 else 0
    layout = _checks.output_layout(x)
    dtype = amp_dtype or x.dtype
    result = [
        o if o is not None else torch.empty([n, size, oh, ow], dtype=dtype, device=x.device, memory_format=layout)
        for o, size in zip(outs if outs is not None else [None] * len(sizes), sizes)
    ]
    for j, o in enumerate(result):  # before dispatch, as in conv1x1 (result's fresh tensors need no grad)
        _checks.check_out_call(OP_MULTI, o, x, (weight, bias, in_scale, in_shift), f"outs[{j}]")
    torch.ops.fastconv.conv1x1_multi_out(x, weight, bias, in_scale, in_shift, in_relu, stride_, relu, result)
    return result


# imported last: fastconv._fastpath imports this module's planning helpers (a cycle that resolves
# once both are loaded; conv1x1() only reads _fastpath at call time)
from .. import _fastpath  # noqa: E402
