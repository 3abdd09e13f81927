"""Autograd: the formulas registered on the functional ops (torch.library.register_autograd).

gradcheck (fast mode: the Jacobian checked along random directions, which any wrong formula
fails, at a fraction of the cost on a 2-core CI machine) runs in float64 on every backend that runs float64 here: `reference` and `cpu`. The
Triton backend is not gradchecked: Triton (compiled or interpreted) has no float64 path in
fastconv's kernels (they reject float64 with a TypeError), and gradcheck's finite differences
are meaningless in float32. Its forward is covered by the op tests; its backward is the same
registered formula, which does not depend on the backend.
"""
import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

import fastconv
from fastconv import nn as fnn

GRAD_BACKENDS = ["reference", "cpu"]


def _rand(*shape, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_(requires_grad)


def _away_from_kinks(t, gap=0.05):
    """Nudge values off 0 so the ReLU's kink sits outside gradcheck's finite-difference step."""
    with torch.no_grad():
        t.add_(torch.where(t >= 0, gap, -gap))
    return t


CONV_CASES = [
    # (x shape, weight shape, kwargs)
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(padding=1)),
    ((1, 4, 8, 7), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((2, 2, 6, 6), (3, 2, 2, 2), dict(padding="same")),  # asymmetric padding: the padded-copy branch
    ((1, 3, 9, 9), (2, 3, 5, 5), dict(stride=2, padding=2, relu=False)),
]


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("with_residual", [False, True])
def test_gradcheck_conv2d_relu(backend, case, with_residual):
    xs, ws, kw = CONV_CASES[case]
    x, w, b = _rand(*xs, seed=1), _rand(*ws, seed=2), _rand(ws[0], seed=3)
    with torch.no_grad():
        out_shape = fastconv.conv2d_relu(x, w, b, **kw).shape
    r = _rand(*out_shape, seed=4) if with_residual else None
    args = (x, w, b) + ((r,) if with_residual else ())

    def f(x, w, b, r=None):
        return fastconv.conv2d_relu(x, w, b, residual=r, **kw)

    with fastconv.use_backend(backend):
        assert f(*args).dtype == torch.float64
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_gradcheck_conv1x1(backend, stride, prologue, with_residual):
    x = _away_from_kinks(_rand(2, 5, 6, 5, seed=5)) if prologue else _rand(2, 5, 6, 5, seed=5)
    w, b = _rand(4, 5, 1, 1, seed=6), _rand(4, seed=7)
    scale = _rand(5, seed=8) if prologue else None
    shift = _rand(5, seed=9) if prologue else None
    oh, ow = (6 - 1) // stride + 1, (5 - 1) // stride + 1
    r = _rand(2, 4, oh, ow, seed=10) if with_residual else None

    def f(x, w, b, r, scale, shift):
        return fastconv.conv1x1(x, w, b, stride, residual=r, in_scale=scale, in_shift=shift, in_relu=prologue)

    args = (x, w, b, r, scale, shift)
    with fastconv.use_backend(backend):
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2), dict(kernel_size=(2, 3), stride=1, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True)])
def test_gradcheck_max_pool2d(backend, kw):
    # distinct values (a permutation) so the argmax of every window is unique and stable under eps
    g = torch.Generator().manual_seed(11)
    x = (torch.randperm(2 * 3 * 9 * 8, generator=g).double().reshape(2, 3, 9, 8) / 10).requires_grad_()
    with fastconv.use_backend(backend):
        assert torch.autograd.gradcheck(lambda x: fastconv.max_pool2d(x, **kw), (x,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_triton_rejects_float64():
    """Why triton is not gradchecked: it has no float64 kernels (TRITON_INTERPRET on the CPU)."""
    if "triton" not in fastconv.available_backends():
        pytest.skip("triton is not available here")
    x, w = _rand(1, 2, 5, 5), _rand(3, 2, 3, 3)
    with fastconv.use_backend("triton"), pytest.raises(TypeError, match="float64"):
        fastconv.conv2d_relu(x, w)


def test_out_variant_is_not_differentiable():
    """out= with an input requiring grad is an error (as for PyTorch's out= functions), never a
    silently detached result."""
    x, w = _rand(1, 2, 5, 5), _rand(3, 2, 3, 3)
    out = torch.empty(1, 3, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="out=.*automatic differentiation"):
        fastconv.conv2d_relu(x, w, out=out)
    with pytest.raises(RuntimeError, match="out=.*automatic differentiation"):
        fastconv.conv2d_relu(x, w.detach(), out=out)  # only x requires grad
    with pytest.raises(RuntimeError, match="out=.*automatic differentiation"):
        fastconv.conv1x1(x, _rand(3, 2, 1, 1, requires_grad=False), out=torch.empty(1, 3, 5, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="conv1x1_multi is not differentiable"):
        fastconv.ops.conv1x1_multi(x, [_rand(3, 2, requires_grad=False)], outs=[torch.empty(1, 3, 5, 5, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match="out=.*automatic differentiation"):
        fastconv.max_pool2d(x, 2, out=torch.empty(1, 2, 2, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="out=.*automatic differentiation"):
        fastconv.dense_concat([x, x.detach()], out=torch.empty(1, 4, 5, 5, dtype=torch.float64))
    with torch.no_grad():  # fine without grad mode
        fastconv.conv2d_relu(x, w, out=out)
    torch.testing.assert_close(out, torch.relu(torch.nn.functional.conv2d(x, w)).detach())


# ---------------------------------------------------------------------------------------------
# a small CNN built from fastconv.nn layers trains like the same network in torch layers

class SmallCNN(nn.Module):
    def __init__(self, fast: bool):
        super().__init__()
        self.fast = fast
        if fast:
            self.conv1 = fnn.Conv2dReLU(3, 8, 3, padding=1)
            self.pool = fnn.MaxPool2d(3, stride=2, padding=1)
            self.conv2 = fnn.Conv2dReLU(8, 8, 3, padding=1)  # + residual (the pooled input)
            self.proj = fnn.Conv1x1(8, 12, stride=2)
        else:
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.MaxPool2d(3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
            self.proj = nn.Conv2d(8, 12, 1, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        if self.fast:
            y = self.pool(self.conv1(x))
            y = self.conv2(y, residual=y)
            y = self.proj(y, in_scale=self.bn.weight, in_shift=self.bn.bias, in_relu=True)
        else:
            y = self.pool(torch.relu(self.conv1(x)))
            y = torch.relu(self.conv2(y) + y)
            y = torch.relu(self.proj(torch.relu(y * self.bn.weight.view(1, -1, 1, 1)
                                                + self.bn.bias.view(1, -1, 1, 1))))
        return self.fc(y.mean((2, 3)))


def _train(model, batches, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for i in range(steps):
        x, t = batches[i % len(batches)]
        loss = nn.functional.cross_entropy(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_small_cnn_trains_like_torch(backend):
    torch.manual_seed(0)
    fast = SmallCNN(fast=True).double()
    plain = SmallCNN(fast=False).double()
    with torch.no_grad():
        nn.init.uniform_(fast.bn.weight, 0.5, 1.5)
        nn.init.uniform_(fast.bn.bias, -0.2, 0.2)
    plain.load_state_dict(fast.state_dict())  # same parameter names and shapes
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 12, 12, dtype=torch.float64, generator=g), torch.randint(0, 5, (4,), generator=g))
               for _ in range(3)]
    with fastconv.use_backend(backend):
        fast_losses = _train(fast, batches, 8)
    plain_losses = _train(plain, batches, 8)
    assert fast_losses[-1] < fast_losses[0]  # it learns
    torch.testing.assert_close(torch.tensor(fast_losses), torch.tensor(plain_losses), rtol=1e-9, atol=1e-10)
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-10, msg=name)


def _backward_nodes(root):
    seen, stack, names = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack += [n for n, _ in node.next_functions]
    return names


def test_small_cnn_runs_fastconv_forward_and_backward():
    """Under use_backend("cpu") the forward runs fastconv's C++ kernels (the profiler sees the private
    ops) and the graph's backward nodes are the formulas registered on fastconv's ops."""
    torch.manual_seed(0)
    model = SmallCNN(fast=True)
    x = torch.randn(2, 3, 12, 12)
    with fastconv.use_backend("cpu"), profile(activities=[ProfilerActivity.CPU]) as prof:
        loss = model(x).square().mean()
    keys = {e.key for e in prof.key_averages()}
    for op in ("_conv2d_relu_cpu", "_max_pool2d_cpu", "_conv1x1_cpu"):
        assert f"fastconv::{op}" in keys, (op, sorted(k for k in keys if "fastconv" in k))
    assert not any(k in keys for k in ("aten::convolution", "aten::max_pool2d")), "forward fell back to aten"
    names = _backward_nodes(loss.grad_fn)
    for op in ("conv2d_relu", "max_pool2d", "conv1x1"):
        assert f"GeneratedBackwardFor_fastconv_{op}_defaultBackward" in names, (op, names)
    assert not any(n.startswith(("ConvolutionBackward", "MaxPool2DWithIndicesBackward", "ReluBackward"))
                   for n in names), names
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_dense_concat_copy_is_differentiable():
    a, b = _rand(1, 2, 3, 3, seed=1), _rand(1, 3, 3, 3, seed=2)
    with fastconv.use_backend("cpu"):
        y = fastconv.dense_concat([a, b])
        assert "fastconv_dense_concat" in type(y.grad_fn).__name__
        assert torch.autograd.gradcheck(lambda a, b: fastconv.dense_concat([a, b]), (a, b))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_conv1x1_double_backward(backend):
    """Second-order gradients (gradient penalties, Hessian-vector products) through conv1x1, its
    prologue, bias and residual: its backward detached what it recomputed, so they were lost
    (gradgradcheck False; a penalty's weight gradient silently missed conv1x1's share)."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    gen = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    x, w, b, r = leaf(2, 3, 4, 5), leaf(4, 3), leaf(4), leaf(2, 4, 2, 3)
    scale, shift = leaf(3), leaf(3)
    with fastconv.use_backend(backend):
        assert torch.autograd.gradgradcheck(
            lambda x, w, b, r, s, t: fastconv.conv1x1(x, w, b, 2, relu=False, residual=r, in_scale=s, in_shift=t),
            (x, w, b, r, scale, shift))
        assert torch.autograd.gradgradcheck(lambda x, w: fastconv.conv1x1(x, w, relu=True, in_relu=True), (x, w))
