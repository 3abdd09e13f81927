"""Argument checks shared by every public op.

Every check runs before any kernel, on every backend, and raises an error that names the
offending argument: TypeError for a wrong type or dtype, ValueError for a wrong value or
shape, RuntimeError for device mismatches and memory overlap (as torch does).
"""
from __future__ import annotations

import functools

from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.fx

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

IntPair = Union[int, Sequence[int]]


def check_tensor(op: str, t, name: str, ndims: Sequence[int] = ()) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastconv.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"fastconv.{op}: {name} must be a floating tensor (float16, bfloat16, float32, float64), got {t.dtype}"
        )
    if ndims and t.dim() not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"fastconv.{op}: {name} must be {want}, got a {t.dim()}-D tensor of shape {tuple(t.shape)}")
    return t


def check_like(op: str, t: Optional[torch.Tensor], name: str, ref: torch.Tensor, ref_name: str = "x",
               dtype: Optional[torch.dtype] = None) -> None:
    """``t`` (if given) must be a floating tensor with ``ref``'s device and dtype (``dtype`` if given)."""
    if t is None:
        return
    check_tensor(op, t, name)
    if t.device != ref.device:
        raise RuntimeError(f"fastconv.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
    want = ref.dtype if dtype is None else dtype
    if t.dtype != want:
        raise TypeError(f"fastconv.{op}: {name} has dtype {t.dtype} but "
                        + (f"{ref_name} has dtype {want}" if dtype is None else f"the op computes in {want}"))


def check_shape(op: str, t: Optional[torch.Tensor], name: str, shape: Sequence[int]) -> None:
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"fastconv.{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def pair(op: str, value: IntPair, name: str) -> List[int]:
    """An int or a 1- or 2-sequence of ints, as nn.Conv2d accepts, expanded to two ints."""
    if isinstance(value, bool):
        raise TypeError(f"fastconv.{op}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, torch.SymInt):
        return [value, value]
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (1, 2) and all(
        isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in value
    ):
        return [value[0], value[0]] if len(value) == 1 else [value[0], value[1]]
    raise TypeError(f"fastconv.{op}: {name} must be an int or a pair of ints, got {value!r}")


def check_flag(op: str, value, name: str) -> bool:
    """A bool argument (the op schemas take ``bool``; checked before dispatch for a clear error)."""
    if not isinstance(value, bool):
        raise TypeError(f"fastconv.{op}: {name} must be a bool, got {value!r}")
    return value


def check_int(op: str, value, name: str) -> int:
    """An int argument (not a bool), checked before dispatch."""
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"fastconv.{op}: {name} must be an int, got {value!r}")
    return value


def output_layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format fastconv writes its outputs in: the input's, read from its strides as
    PyTorch's ``suggest_memory_format`` reads them (so an output is laid out as eager's conv lays
    it out for that input). Channel-slice views of an NHWC buffer count as channels_last; where the
    strides are ambiguous (a size-1 dimension), PyTorch's tie-breaks hold: a channels_last tensor
    with one channel stays channels_last, an NCHW [N, C, 1, 1] stays NCHW, a permuted N,W,H,C
    tensor is NCHW."""
    if x.dim() == 4 and _strides_like_channels_last(x.shape, x.stride()):
        return torch.channels_last
    return torch.contiguous_format


def as_layout(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """``x.contiguous(memory_format=...)`` whose strides also say so: a tensor with a size-1
    dimension can be contiguous in both layouts (an NCHW [N, 1, H, W] already "is" channels_last),
    and then ``contiguous`` changes nothing and the ops read it as NCHW. Such a tensor is restrided
    (same memory) to the strides the layout gives it."""
    y = x.contiguous(memory_format=memory_format)
    want_cl = memory_format == torch.channels_last
    if y.dim() == 4 and y.numel() > 0 and _strides_like_channels_last(y.shape, y.stride()) != want_cl:
        n, c, h, w = (max(d, 1) for d in y.shape)
        y = y.as_strided(y.shape, (h * w * c, 1, w * c, c) if want_cl else (c * h * w, h * w, w, 1))
    return y


def _strides_like_channels_last(sizes, strides) -> bool:
    # c10's is_channels_last_strides_2d_s4: strides non-decreasing in the order C, W, H, N
    if strides[1] == 0:
        return False
    low = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < low:
            return False
        if d == 0 and low == strides[1]:  # N111 and the like: NCHW
            return False
        low = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def _non_overlapping_and_dense(t: torch.Tensor) -> bool:
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _byte_range(t: torch.Tensor) -> Tuple[int, int]:
    start = t.data_ptr()
    span = sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)
    return start, start + (span + 1) * t.element_size()


# Budget of the search below: layouts that need more steps than this (strides that interleave two
# views in ways no slicing of one tensor produces) are treated as overlapping, never assumed apart.
_SHARE_SEARCH_STEPS = 10_000


@functools.lru_cache(maxsize=4096)
def _may_share(terms: Tuple[Tuple[int, int, int], ...], lo: int, hi: int) -> bool:
    """Whether some sum of c·v over ``terms`` (c, v_min, v_max), c > 0, largest c first, v integer,
    lies in [lo, hi]: a bounded search that places the largest stride first and keeps only the
    values the smaller strides can still reach. Cached: a model writes the same slices every call."""
    rest_min, rest_max = [0] * (len(terms) + 1), [0] * (len(terms) + 1)
    for i in range(len(terms) - 1, -1, -1):
        c, a, b = terms[i]
        rest_min[i], rest_max[i] = rest_min[i + 1] + c * a, rest_max[i + 1] + c * b
    steps = [0]

    def search(i: int, lo: int, hi: int) -> bool:
        if lo > rest_max[i] or hi < rest_min[i]:
            return False
        if i == len(terms):
            return True
        c, a, b = terms[i]
        v_lo = max(a, -((rest_max[i + 1] - lo) // c))  # ceil((lo - rest_max) / c)
        v_hi = min(b, (hi - rest_min[i + 1]) // c)
        for v in range(v_lo, v_hi + 1):
            steps[0] += 1
            if steps[0] > _SHARE_SEARCH_STEPS or search(i + 1, lo - c * v, hi - c * v):
                return True
        return False

    return search(0, lo, hi)


def _share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two strided views of one storage have a byte in common.

    Element i of ``a`` starts at byte A = a0 + sum(i_k·sa_k), element j of ``b`` at
    B = b0 + sum(j_k·sb_k); they share a byte when -size_a < A - B < size_b, i.e. when
    sum(j_k·sb_k) - sum(i_k·sa_k) lies in [a0 - b0 - size_b + 1, a0 - b0 + size_a - 1]. Terms of
    equal stride merge (i and j along one stride give every offset in between), so slices of one
    tensor, DenseNet's ``buf[:, :c]`` read and ``buf[:, c:c+g]`` written in either layout, take a
    handful of steps."""
    ea, eb = a.element_size(), b.element_size()
    merged = {}
    for t, sign, e in ((a, -1, ea), (b, 1, eb)):
        for size, stride in zip(t.shape, t.stride()):
            if size > 1 and stride != 0:
                lo, hi = (0, size - 1) if sign * stride > 0 else (-(size - 1), 0)
                old = merged.get(abs(stride) * e, (0, 0))
                merged[abs(stride) * e] = (old[0] + lo, old[1] + hi)
    terms = tuple(sorted(((c, lo, hi) for c, (lo, hi) in merged.items()), reverse=True))
    delta = a.data_ptr() - b.data_ptr()
    return _may_share(terms, delta - eb + 1, delta + ea - 1)


def check_no_overlap(op: str, out: torch.Tensor, inputs: Iterable[Tuple[str, Optional[torch.Tensor]]],
                     out_name: str = "out") -> None:
    """Reject ``out`` sharing memory with an input.

    Follows at::assert_no_overlap (same storage and intersecting byte ranges of dense tensors),
    and for non-dense views, where ATen gives up ("too hard"), decides whether the two views
    have an element in common (``_share_memory``), so writing ``buf[:, c:c+g]`` while reading
    ``buf[:, :c]`` stays allowed and writing into anything being read does not.
    """
    if out.numel() == 0 or out.device.type == "meta":
        return
    for name, t in inputs:
        if t is None or t.numel() == 0:
            continue
        if t.untyped_storage().data_ptr() != out.untyped_storage().data_ptr():
            continue
        a0, a1 = _byte_range(out)
        b0, b1 = _byte_range(t)
        if not (a0 < b1 and b0 < a1):
            continue
        if (_non_overlapping_and_dense(out) and _non_overlapping_and_dense(t)) or _share_memory(out, t):
            raise RuntimeError(f"fastconv.{op}: {out_name} overlaps the memory of {name}; pass an {out_name} that "
                               "shares no memory with the inputs")


def check_out_call(op: str, out, x: torch.Tensor, inputs: Iterable[Optional[torch.Tensor]] = (),
                   name: str = "out") -> None:
    """What the Python wrappers check before dispatching an ``_out`` op.

    ``out`` must be a tensor on ``x``'s device: the dispatcher picks the kernel from every tensor
    argument, so an ``out`` on the meta device would send the call to the fake implementation,
    which writes nothing. And, as for PyTorch's own ``out=`` functions, the ``_out`` ops are not
    differentiable: with grad mode on and an input requiring grad, the result would silently be
    cut off from the graph, so that is an error.
    """
    check_tensor(op, out, name)
    if out.device != x.device:
        raise RuntimeError(f"fastconv.{op}: {name} is on {out.device} but x is on {x.device}")
    if not torch.compiler.is_compiling() and transforms_active():
        check_autodiff_mode(op, [out, x, *inputs])  # forward mode's error first, where it applies
        if torch._C._functorch.maybe_current_level() is not None:
            raise NotImplementedError(f"fastconv.{op}: {name}= is not supported under torch.func transforms (vmap, "
                                      f"grad, jvp): call it without {name}=")
    check_writable(op, out, name)
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in [out, x, *inputs]):
        raise RuntimeError(
            f"fastconv.{op}: functions with {name}= arguments don't support automatic differentiation, but one of "
            f"the arguments requires grad; call it without {name}= (or under torch.no_grad())")


def is_fx_proxy(x) -> bool:
    """torch.fx symbolic tracing (``symbolic_trace``, torchvision's ``create_feature_extractor``):
    the functionals then record their torch.library op in the graph, unchecked (the traced graph
    runs the op, and its checks, on real tensors)."""
    return isinstance(x, torch.fx.Proxy)


def traced_shape(t):
    """The shape of ``t`` under torch.fx tracing: a tensor's own, or that of the module attribute
    a get_attr proxy stands for (a layer's weight); None when unknown (a computed proxy)."""
    if isinstance(t, torch.Tensor):
        return tuple(t.shape)
    node = getattr(t, "node", None)
    if node is None or node.op != "get_attr":
        return None
    # (through the modules' own dicts: while tracing, nn.Module attribute reads return proxies)
    *path, name = node.target.split(".")
    module = t.tracer.root
    for part in path:
        module = module._modules.get(part) if isinstance(module, torch.nn.Module) else None
    if not isinstance(module, torch.nn.Module):
        return None
    value = module._parameters.get(name, module._buffers.get(name, module.__dict__.get(name)))
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def has_real_storage(tensors) -> bool:
    """Whether every tensor has real memory to compare addresses of (not meta, not a FakeTensor,
    nor a tensor of make_fx's tracing, whose storage has no data pointer)."""
    from torch._subclasses.fake_tensor import FakeTensor

    for t in tensors:
        if t.device.type == "meta" or isinstance(t, FakeTensor):
            return False
        try:
            t.untyped_storage().data_ptr()
        except RuntimeError:  # "Cannot access data pointer of Tensor" (functional / proxy tensors)
            return False
    return True


def transforms_active() -> bool:
    """Whether forward-mode AD or a torch.func transform is on (two attribute reads when neither
    is: the fast path asks on every call and leaves these calls to the full path)."""
    return _forward_ad._current_level >= 0 or torch._C._functorch.maybe_current_level() is not None


def check_autodiff_mode(op: str, tensors: Iterable[Optional[torch.Tensor]]) -> None:
    """Differentiation the fastconv ops cannot take, refused in fastconv's words.

    Forward mode (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``): the ops have
    backward formulas only, and PyTorch runs a custom op whose inputs carry tangents but do not
    require grad without its autograd formula, so the tangent would come out as zero (or None)
    with no error. torch.func's reverse-mode transforms (``grad``, ``vjp``, ``jacrev``) reject a
    torch.library op with an error about an autograd.Function's ``setup_context``; said plainly here.
    """
    if torch.compiler.is_compiling() or not transforms_active():
        return
    if _forward_ad._current_level >= 0 and any(
            t is not None and _forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            f"fastconv.{op}: forward-mode AD (torch.func.jvp, jacfwd, torch.autograd.forward_ad) is not supported: "
            "fastconv's ops define backward formulas only, and the tangent would silently be zero. Use reverse mode "
            "(.backward(), torch.autograd.grad) or torch.nn.functional's ops for forward mode")
    if any(t is not None and torch._C._functorch.is_gradtrackingtensor(t) for t in tensors):
        raise NotImplementedError(
            f"fastconv.{op}: torch.func's differentiating transforms (grad, vjp, jacrev, jacfwd, hessian) are not "
            "supported by fastconv's ops; use .backward() or torch.autograd.grad (torch.func.vmap works)")


def check_writable(op: str, out: torch.Tensor, name: str = "out") -> None:
    """As ATen refuses for its own out= functions: an inference tensor (made under
    torch.inference_mode) is not written outside inference mode. fastconv's C++ kernels write
    through raw pointers, past the check ATen's own ops make."""
    if torch.compiler.is_compiling():  # (Dynamo cannot trace is_inference(); a graph's outs are its own)
        return
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"fastconv.{op}: {name} is an inference tensor (made under torch.inference_mode); an "
                           "in-place update to an inference tensor outside InferenceMode is not allowed")


def check_out(op: str, out, shape: Sequence[int], like: torch.Tensor,
              inputs: Iterable[Tuple[str, Optional[torch.Tensor]]], like_name: str = "x") -> torch.Tensor:
    check_tensor(op, out, "out")
    if out.device != like.device:
        raise RuntimeError(f"fastconv.{op}: out is on {out.device} but {like_name} is on {like.device}")
    if out.dtype != like.dtype:
        raise TypeError(f"fastconv.{op}: out has dtype {out.dtype} but {like_name} has dtype {like.dtype}")
    check_shape(op, out, "out", shape)
    # at::has_internal_overlap's definite case (a stride-0 dimension of size > 1, e.g. an expanded
    # tensor), tested here without dispatching an aten op
    if any(size > 1 and st == 0 for size, st in zip(out.shape, out.stride())):
        raise RuntimeError(f"fastconv.{op}: out has elements that share memory (e.g. an expanded tensor); "
                           "pass an out whose elements are distinct")
    check_no_overlap(op, out, inputs)
    return out
