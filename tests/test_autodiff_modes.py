"""Differentiation modes beyond reverse mode: forward-mode AD and torch.func's transforms.

The ops define backward formulas only. PyTorch runs a custom op whose inputs carry tangents (but do
not require grad) without any autograd formula, so before these checks a jvp through fastconv came
out as zero with no error. Forward mode and torch.func's differentiating transforms are refused in
fastconv's words; torch.func.vmap computes the batched result.
"""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
import torchvision

import fastconv

from .utils import assert_close_rel

torch.manual_seed(0)


def _inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 7, 7, generator=g)
    w3 = torch.randn(6, 4, 3, 3, generator=g)
    w1 = torch.randn(6, 4, 1, 1, generator=g)
    b = torch.randn(6, generator=g)
    scale, shift = torch.rand(4, generator=g) + 0.5, torch.randn(4, generator=g)
    return x, w3, w1, b, scale, shift


def _calls():
    """(name, fastconv function of x, PyTorch function of x) for every public op."""
    _, w3, w1, b, scale, shift = _inputs()
    y = torch.randn(2, 3, 7, 7)
    return [
        ("conv2d_relu", lambda x: fastconv.conv2d_relu(x, w3, b, padding=1),
         lambda x: F.relu(F.conv2d(x, w3, b, padding=1))),
        ("conv1x1", lambda x: fastconv.conv1x1(x, w1, b, in_scale=scale, in_shift=shift, in_relu=True),
         lambda x: F.relu(F.conv2d(F.relu(x * scale[:, None, None] + shift[:, None, None]), w1, b))),
        ("conv1x1_multi", lambda x: torch.cat(fastconv.ops.conv1x1_multi(x, [w1[:2], w1[2:]], [b[:2], b[2:]]), 1),
         lambda x: F.relu(F.conv2d(x, w1, b))),
        ("max_pool2d", lambda x: fastconv.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
        ("dense_concat", lambda x: fastconv.dense_concat([x, y]), lambda x: torch.cat([x, y], 1)),
    ]


CALLS = [c[0] for c in _calls()]


def _call(name):
    return next(c for c in _calls() if c[0] == name)


@pytest.mark.parametrize("name", CALLS)
def test_jvp_is_refused(name):
    _, f, g = _call(name)
    x = _inputs()[0]
    t = torch.randn_like(x)
    _, tangent = torch.func.jvp(g, (x,), (t,))
    assert tangent.abs().sum() > 0  # the answer a silent zero would have got wrong
    with pytest.raises(NotImplementedError, match=rf"fastconv\.{name}: forward-mode AD"):
        torch.func.jvp(f, (x,), (t,))


@pytest.mark.parametrize("name", CALLS)
def test_forward_ad_dual_is_refused(name):
    _, f, _ = _call(name)
    x = _inputs()[0]
    with fwAD.dual_level():
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            f(fwAD.make_dual(x, torch.randn_like(x)))
        # a dual level alone (no tangent on fastconv's inputs) is no reason to refuse
        assert torch.equal(f(x), f(x.clone()))


@pytest.mark.parametrize("name", ["conv2d_relu", "conv1x1", "max_pool2d"])
def test_grad_transform_is_refused(name):
    _, f, _ = _call(name)
    x = _inputs()[0]
    with pytest.raises(NotImplementedError, match="torch.func's differentiating transforms"):
        torch.func.grad(lambda x: f(x).sum())(x)


def test_grad_transform_of_other_inputs_still_works():
    """torch.func.grad with respect to something fastconv's op does not see: the op runs as usual."""
    x, w3, _, b, _, _ = _inputs()
    p = torch.randn(6)
    y = fastconv.conv2d_relu(x, w3, b, padding=1)
    got = torch.func.grad(lambda p: (fastconv.conv2d_relu(x, w3, b, padding=1) * p[:, None, None]).sum())(p)
    torch.testing.assert_close(got, y.sum((0, 2, 3)))


def _count_runs(monkeypatch):
    """How many times each op's implementation ran (PyTorch's per-example vmap fallback runs it once
    per example; its warning goes to stderr from C++, not to Python's warnings)."""
    runs = {}
    for op in ("conv2d_relu", "conv1x1", "max_pool2d", "dense_concat"):
        module = sys.modules[f"fastconv.ops.{op}"]

        def counted(*args, _op=op, _run=module._run):
            runs[_op] = runs.get(_op, 0) + 1
            return _run(*args)

        monkeypatch.setattr(module, "_run", counted)
    return runs


@pytest.mark.parametrize("name", CALLS)
def test_vmap_matches_pytorch(name, monkeypatch):
    _, f, g = _call(name)
    xs = torch.randn(3, 2, 4, 7, 7)
    runs = _count_runs(monkeypatch)
    for _ in range(2):  # the second call is the one a fast-path replay would serve
        assert_close_rel(torch.func.vmap(f)(xs), torch.func.vmap(g)(xs), torch.float32, name)
    # each op has a vmap rule: one kernel run per call for the 3 examples, not one per example
    expected = {"conv1x1_multi": {"conv1x1": 4}}.get(name, {name: 2})  # (the multi form: one conv1x1 per weight)
    assert runs == expected


@pytest.mark.parametrize("backend", ["cpu", "reference", "auto"])
@pytest.mark.parametrize("op", ["conv2d_relu", "conv1x1"])
def test_vmap_rules_fold_or_loop(op, backend, monkeypatch):
    """The conv ops' vmap rules: a vmapped input and residual (anywhere, or only one of them) fold
    into the batch; a vmapped weight, bias or BN scale/shift runs per example. Both against the
    same computation written per example in PyTorch."""
    g = torch.Generator().manual_seed(3)
    B, N, C, K = 3, 2, 4, 5
    x = torch.randn(B, N, C, 6, 6, generator=g)
    r = torch.randn(N, K, 6, 6, B, generator=g)  # vmapped at its last dimension
    ws = torch.randn(B, K, C, 3 if op == "conv2d_relu" else 1, 3 if op == "conv2d_relu" else 1, generator=g)
    bs, scales, shifts = torch.randn(B, K, generator=g), torch.rand(B, C, generator=g) + 0.5, torch.randn(B, C, generator=g)
    pad = 1 if op == "conv2d_relu" else 0

    def ours(x, r, w, b, sc, sh):
        if op == "conv2d_relu":
            return fastconv.conv2d_relu(x, w, b, padding=pad, residual=r)
        return fastconv.conv1x1(x, w[:, :, 0, 0], b, residual=r, in_scale=sc, in_shift=sh, in_relu=True)

    def theirs(x, r, w, b, sc, sh):
        if op == "conv1x1":
            x = F.relu(x * sc[:, None, None] + sh[:, None, None])
        return F.relu(F.conv2d(x, w, b, padding=pad) + r)

    args = (x, r, ws, bs, scales, shifts)
    runs = _count_runs(monkeypatch)
    with fastconv.use_backend(backend):
        for in_dims, kernel_runs in [((0, 4, None, None, None, None), 1),     # folded: input and residual
                                     ((None, 4, None, None, None, None), 1),  # folded: only the residual vmapped
                                     ((0, None, 0, 0, None, None), B),        # per example: weight and bias
                                     ((0, 4, None, None, 0, 0), B if op == "conv1x1" else 1)]:  # BN scale/shift
            # an argument not vmapped is one example's (the residual's vmapped dim is its last)
            call = [a if d is not None else a.select(4 if a is r else 0, 0) for a, d in zip(args, in_dims)]
            runs.clear()
            got = torch.func.vmap(ours, in_dims=in_dims)(*call)
            assert runs == {op: kernel_runs}, in_dims
            want = torch.func.vmap(theirs, in_dims=in_dims)(*call)
            assert got.shape == want.shape == (B, N, K, 6, 6)
            assert_close_rel(got, want, torch.float32, f"{op} {in_dims}")


def test_vmap_rules_empty_batch_and_channels_last():
    xs = torch.randn(3, 0, 4, 7, 7)
    _, w3, _, b, _, _ = _inputs()
    got = torch.func.vmap(lambda x: fastconv.conv2d_relu(x, w3, b, padding=1))(xs)
    assert got.shape == (3, 0, 6, 7, 7)
    assert torch.func.vmap(lambda x: fastconv.max_pool2d(x, 3, 2))(xs).shape == (3, 0, 4, 3, 3)
    xs = torch.randn(3, 2, 4, 7, 7)
    cl = torch.stack([x.contiguous(memory_format=torch.channels_last) for x in xs])
    got = torch.func.vmap(lambda x: fastconv.conv2d_relu(x, w3, b, padding=1))(cl)
    assert_close_rel(got, F.relu(F.conv2d(xs.flatten(0, 1), w3, b, padding=1)).unflatten(0, (3, 2)), torch.float32, "cl")


def test_vmap_then_backward():
    """Reverse mode through a vmapped op (the rule's folded call keeps its autograd formula)."""
    _, w3, _, b, _, _ = _inputs()
    xs = torch.randn(3, 2, 4, 7, 7, requires_grad=True)
    w = w3.clone().requires_grad_()
    torch.func.vmap(lambda x: fastconv.conv2d_relu(x, w, b, padding=1))(xs).square().sum().backward()
    xr, wr = xs.detach().clone().requires_grad_(), w3.clone().requires_grad_()
    F.relu(F.conv2d(xr.flatten(0, 1), wr, b, padding=1)).square().sum().backward()
    assert_close_rel(xs.grad, xr.grad, torch.float32, "dx")
    assert_close_rel(w.grad, wr.grad, torch.float32, "dw")


@pytest.mark.parametrize("in_dim", [0, 2])
def test_dense_concat_vmap_rule(in_dim):
    """vmap over a list argument (PyTorch has no fallback for Tensor[]): batched and unbatched
    features mixed, the vmapped dimension anywhere."""
    xs = torch.randn(2, 3, 5, 4, 4).movedim(0, in_dim)
    y = torch.randn(3, 2, 4, 4)
    got = torch.func.vmap(lambda a: fastconv.dense_concat([y, a, a * 2]), in_dims=in_dim)(xs)
    xs0 = xs.movedim(in_dim, 0)
    want = torch.cat([y.expand(2, *y.shape), xs0, xs0 * 2], 2)
    assert torch.equal(got, want)


def _layers():
    x, w3, w1, b, _, _ = _inputs()
    conv = fastconv.nn.Conv2dReLU(4, 6, 3, padding=1)
    pw = fastconv.nn.Conv1x1(4, 6)
    pool = fastconv.nn.MaxPool2d(3, 2, 1)
    return [("conv2d_relu", conv), ("conv1x1", pw), ("max_pool2d", pool)]


@pytest.mark.parametrize("index", range(3))
def test_drop_in_layer_fast_path_does_not_replay_under_forward_ad(index):
    """A layer that has replayed its kernel in inference must not replay it for a dual input."""
    name, layer = _layers()[index]
    x = _inputs()[0]
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert torch.equal(first, second)
    assert layer.__dict__.get("_fastpath_plans"), "the layer made no plan: the test would not test the replay"
    with torch.no_grad(), fwAD.dual_level():
        with pytest.raises(NotImplementedError, match=rf"fastconv\.{name}: forward-mode AD"):
            layer(fwAD.make_dual(x, torch.randn_like(x)))


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "googlenet"])
def test_models_under_vmap_and_jvp(arch):
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    tv = getattr(torchvision.models, arch)(**kwargs).eval()
    ours = getattr(fastconv.models, arch)(**kwargs).eval()
    ours.load_state_dict(tv.state_dict())
    converted = fastconv.convert(tv)
    xs = torch.randn(2, 1, 3, 40, 40)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        want = torch.func.vmap(tv)(xs)
        for model in (converted, ours):
            model(xs[0])  # plans and the fused copy made first: vmap must not take them
            assert_close_rel(torch.func.vmap(model)(xs), want, torch.float32, arch, tol=1e-4)
    x = xs[0]
    for model in (converted, ours):
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            torch.func.jvp(model, (x,), (torch.randn_like(x),))


@pytest.mark.parametrize("name", ["conv2d_relu", "max_pool2d", "conv1x1_multi"])
def test_out_under_vmap_is_refused(name):
    """out= buffers are not batched: refused plainly (PyTorch's own error named a batching rule)."""
    _, w3, w1, _, _, _ = _inputs()
    xs = torch.randn(3, 2, 4, 7, 7)
    calls = {
        "conv2d_relu": lambda x: fastconv.conv2d_relu(x, w3, padding=1, out=torch.empty(2, 6, 7, 7)),
        "max_pool2d": lambda x: fastconv.max_pool2d(x, 3, 2, 1, out=torch.empty(2, 4, 4, 4)),
        "conv1x1_multi": lambda x: fastconv.ops.conv1x1_multi(x, [w1[:2], w1[2:]],
                                                              outs=[torch.empty(2, 2, 7, 7), None]),
    }
    with pytest.raises(NotImplementedError, match=rf"fastconv\.{name}: outs?\[?0?\]?= is not supported under"):
        torch.func.vmap(calls[name])(xs)
