"""The fused modules' eager fast path (fastconv/_fastpath.py): after one full call per call
layout, a converted model runs its kernels directly — and still computes the same thing, checks
overlapping outs, follows backend switches and retuning, replays under autocast on the tensors the
op's autocast rule would cast, and leaves autograd and tracing to the full op path."""
from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

import fastconv
from fastconv import _fastpath, fused
from tests.utils import assert_close_rel

conv2d_mod = sys.modules["fastconv.ops.conv2d_relu"]
pool_mod = sys.modules["fastconv.ops.max_pool2d"]


def _net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                      nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2, padding=1))
    with torch.no_grad():
        m[1].running_mean.normal_(0, 0.1)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def _full_path_forbidden(monkeypatch):
    """Make every public functional raise: only the fast path can then run the model."""
    def boom(*args, **kwargs):
        raise AssertionError("the full op path ran")

    for name in ("conv2d_relu", "conv1x1", "conv1x1_multi", "max_pool2d"):
        monkeypatch.setattr(fastconv.ops, name, boom)


@pytest.mark.parametrize("backend", ["cpu", "torch", "auto"])
def test_replay_matches_eager_on_fresh_inputs(backend, monkeypatch):
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    eager = _net()
    fast = fastconv.convert(eager)
    with torch.inference_mode(), fastconv.use_backend(backend):
        fast(torch.randn(2, 4, 12, 12))  # full path once (tunes under auto)
        fast(torch.randn(2, 4, 12, 12))  # after tuning: the plans are final
        _full_path_forbidden(monkeypatch)
        for seed in range(3):
            x = torch.randn(2, 4, 12, 12, generator=torch.Generator().manual_seed(seed))
            assert_close_rel(fast(x), eager(x), torch.float32, f"replay {seed}", tol=1e-4)


def test_new_layout_takes_the_full_path_once():
    fast = fastconv.convert(_net(), channels_last=False)  # the input's layout reaches the convs
    x = torch.randn(2, 4, 12, 12)
    with torch.inference_mode(), fastconv.use_backend("torch"):
        fast(x)
        conv = next(m for m in fast.modules() if isinstance(m, fused.FusedConv))
        assert len(conv.__dict__["_fastpath_plans"]) == 1
        y_cl = fast(x.contiguous(memory_format=torch.channels_last))  # other strides: another plan
        assert len(conv.__dict__["_fastpath_plans"]) == 2
        assert_close_rel(y_cl, fast(x), torch.float32, "channels_last replay")
    assert "_fastpath_plans" not in conv.state_dict()


def test_backend_switch_is_followed(monkeypatch):
    fast = fastconv.convert(_net())
    x = torch.randn(1, 4, 10, 10)
    calls = []
    reference_kernel = conv2d_mod.KERNELS["reference"]
    monkeypatch.setitem(conv2d_mod.KERNELS, "reference", lambda *a: (calls.append(1), reference_kernel(*a)))
    with torch.inference_mode():
        with fastconv.use_backend("torch"):
            fast(x)
            fast(x)
        assert not calls
        with fastconv.use_backend("reference"):
            fast(x)
            fast(x)
    assert len(calls) == 4  # two 3x3 convs, twice: the reference kernel, not the remembered torch one


def test_retuning_invalidates_plans(monkeypatch):
    fast = fastconv.convert(_net())
    x = torch.randn(1, 4, 10, 10)
    with torch.inference_mode(), fastconv.use_backend("auto"):
        fast(x)
        fast(x)
        before = fastconv._autotune.generation
        fastconv.clear_cache()
        assert fastconv._autotune.generation != before
        seen = []
        real = conv2d_mod.planned_kernel
        monkeypatch.setattr(_fastpath, "conv2d_planned_kernel", lambda *a: (seen.append(1), real(*a))[1])
        fast(x)  # plans keyed by the old generation are not used: planned again
        fast(x)
    assert seen


def test_overlapping_out_is_still_rejected():
    conv = fused.FusedConv(torch.randn(8, 8, 3, 3), torch.randn(8), padding=1)
    buf = torch.randn(1, 16, 6, 6)
    with torch.inference_mode(), fastconv.use_backend("torch"):
        conv(buf[:, :8], out=buf[:, 8:])  # disjoint channel slices of one buffer: allowed
        conv(buf[:, :8], out=buf[:, 8:])  # replayed
        with pytest.raises(RuntimeError, match="overlaps"):
            conv(buf[:, 8:], out=buf[:, 8:])  # same layout key, but reads the channels it writes


def test_autograd_takes_the_full_path(monkeypatch):
    pool = fastconv.nn.MaxPool2d(3, 2, 1)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    with fastconv.use_backend("torch"):
        pool(x.detach())
        pool(x.detach())  # a plan exists for this layout
        y = pool(x)  # but x requires grad: the op with its autograd formula runs
        y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not _fastpath.usable(x)
    with torch.inference_mode():
        assert _fastpath.usable(x.detach())


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_replays_on_the_tensors_the_op_would_see(backend, dtype, monkeypatch):
    """Under autocast the convs replay on x cast to the region's dtype and the cached weight casts
    (as the op's autocast rule casts them: the full path cost converted models 1.3x eager there),
    with autocast off below, as the rule runs the op (the reference kernel's F.conv2d was cast
    again: a float32 out= came back with bf16 error); the result equals the full path's, in the
    autocast dtype; an out= keeps its own dtype."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    eager = _net()
    fast = fastconv.convert(eager)
    conv = fused.FusedConv(torch.randn(8, 4, 3, 3), torch.randn(8), padding=1)
    x = torch.randn(2, 4, 12, 12)
    with torch.inference_mode(), fastconv.use_backend(backend):
        with torch.autocast("cpu", dtype=dtype):
            want = fast(x)  # full path once
            fast(x)
            out32 = torch.full((2, 8, 12, 12), float("nan"))
            conv(x, out=out32)
            want_conv = conv(x)
            _full_path_forbidden(monkeypatch)
            got = fast(x)
            conv(x, out=out32)
            got_conv = conv(x)
        monkeypatch.undo()
        assert got.dtype == want.dtype == got_conv.dtype == dtype and torch.equal(got, want)
        assert torch.equal(got_conv, want_conv)
        assert_close_rel(out32, conv(x), torch.float32, "out= keeps float32 under autocast (replayed)")
        assert_close_rel(got.float(), eager(x), dtype, "autocast replay vs float32 eager", tol=5e-2)


def test_traced_and_compiled_calls_see_the_ops():
    fast = fastconv.convert(_net())
    x = torch.randn(1, 4, 10, 10)
    with torch.inference_mode(), fastconv.use_backend("torch"):
        fast(x)
        fast(x)
    compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
    with fastconv.use_backend("torch"):
        with torch.no_grad():
            y = compiled(x)
    assert_close_rel(y, fast(x), torch.float32, "compiled after replay")


def test_zero_batch_is_not_remembered():
    conv = fused.FusedConv(torch.randn(8, 4, 3, 3), torch.randn(8), padding=1)
    with torch.inference_mode(), fastconv.use_backend("torch"):
        assert conv(torch.randn(0, 4, 5, 5)).shape == (0, 8, 5, 5)
        assert conv(torch.randn(0, 4, 5, 5)).shape == (0, 8, 5, 5)
    assert not conv.__dict__.get("_fastpath_plans")


def test_changed_module_settings_are_followed():
    """A user may change a layer's attributes between calls: the remembered plan must not outlive them."""
    pool = fastconv.nn.MaxPool2d(3, 2, 1)
    x = torch.randn(1, 4, 9, 9)
    with torch.inference_mode(), fastconv.use_backend("torch"):
        pool(x)
        pool(x)
        pool.kernel_size, pool.stride, pool.padding = [2, 2], [2, 2], 0  # lists too
        y = pool(x)
    torch.testing.assert_close(y, torch.nn.functional.max_pool2d(x, 2, 2))
    conv = fused.FusedConv(torch.randn(8, 4, 3, 3), torch.randn(8), padding=1)
    with torch.inference_mode(), fastconv.use_backend("torch"):
        conv(x)
        conv(x)
        conv.padding, conv.relu = 0, False
        y = conv(x)
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    assert_close_rel(y, ref, torch.float32, "changed padding/relu", tol=1e-5)


# ---------------------------------------------------------------------------------------------
# fastconv.nn's drop-in conv layers: trainable parameters, the same fast path in inference

def _reference_conv(layer, x, residual=None, in_scale=None, in_shift=None, in_relu=False):
    """relu?(conv(prologue(x)) + residual) in float64, from the layer's own settings and parameters."""
    x = x.double()
    if in_scale is not None:
        x = x * in_scale.double().view(1, -1, 1, 1) + in_shift.double().view(1, -1, 1, 1)
    if in_relu:
        x = x.relu()
    w, b = layer.weight.detach().double(), None if layer.bias is None else layer.bias.detach().double()
    padding, dilation, groups = getattr(layer, "padding", 0), getattr(layer, "dilation", 1), getattr(layer, "groups", 1)
    y = torch.nn.functional.conv2d(x, w, b, layer.stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual.double()
    return y.relu() if layer.relu else y


@pytest.mark.parametrize("backend", ["cpu", "torch", "auto"])
@pytest.mark.parametrize("grad_off", [torch.no_grad, torch.inference_mode])
def test_drop_in_conv2d_relu_replays_in_inference(backend, grad_off, monkeypatch):
    """A trainable Conv2dReLU called with autograd off remembers its kernel like a converted layer:
    the replay computes what the functional computes, bit for bit (the cpu tactic's Winograd kernel
    included: the replay marks the trainable weight grad-free as the functional does), on fresh
    inputs into a channel slice of a poisoned buffer, and follows an in-place update of the weight."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    torch.manual_seed(0)
    layer = fastconv.nn.Conv2dReLU(16, 16, 3, padding=1)
    cl = torch.channels_last

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 16, 9, 9, generator=gen).contiguous(memory_format=cl)
        res = torch.randn(2, 16, 9, 9, generator=gen).contiguous(memory_format=cl)
        buf = torch.full((2, 24, 9, 9), float("nan")).contiguous(memory_format=cl)
        y = layer(x, residual=res, out=buf[:, 4:20])
        assert y.data_ptr() == buf[:, 4:20].data_ptr() and buf[:, :4].isnan().all() and buf[:, 20:].isnan().all()
        assert_close_rel(y, _reference_conv(layer, x, res), torch.float32, f"seed {seed}", tol=1e-5)
        return x, res, y

    with grad_off(), fastconv.use_backend(backend):
        run(0)  # the full path (tunes under auto) ...
        run(1)  # ... and after tuning: the plan is final
        assert layer.__dict__["_fastpath_plans"], "no plan remembered"
        x, res, y = run(2)
        # the same call signature (a slice of the same buffer shape), so auto has nothing new to tune
        buf = torch.empty(2, 24, 9, 9).contiguous(memory_format=cl)
        functional = fastconv.conv2d_relu(x, layer.weight, layer.bias, padding=1, residual=res, out=buf[:, 4:20])
        torch.testing.assert_close(y, functional, rtol=0, atol=0)
        _full_path_forbidden(monkeypatch)
        run(3)
    with torch.no_grad():
        layer.weight.mul_(-0.5)  # an optimizer step, say: derived weight forms are remade
    with grad_off(), fastconv.use_backend(backend):
        run(4)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_drop_in_conv1x1_with_prologue_replays_in_inference(backend, monkeypatch):
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    torch.manual_seed(0)
    layer = fastconv.nn.Conv1x1(16, 8, stride=2)
    scale, shift = torch.rand(16) + 0.5, torch.randn(16)
    with torch.inference_mode(), fastconv.use_backend(backend):
        for seed in range(4):
            if seed == 2:
                _full_path_forbidden(monkeypatch)
            x = torch.randn(2, 16, 9, 9, generator=torch.Generator().manual_seed(seed))
            y = layer(x, in_scale=scale, in_shift=shift, in_relu=True)
            ref = _reference_conv(layer, x, in_scale=scale, in_shift=shift, in_relu=True)
            assert_close_rel(y, ref, torch.float32, f"seed {seed}", tol=1e-5)


def test_drop_in_layers_in_training_take_the_full_path():
    layer = fastconv.nn.Conv2dReLU(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    with fastconv.use_backend("cpu"):
        layer(x).sum().backward()
        layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert not layer.__dict__.get("_fastpath_plans")


def test_drop_in_conv2d_relu_with_a_parametrized_weight():
    """weight_norm turns the layer's weight into a property computed per call: still read as the
    layer's weight, on the full path and the replay alike."""
    torch.manual_seed(0)
    layer = torch.nn.utils.parametrizations.weight_norm(fastconv.nn.Conv2dReLU(4, 8, 3, padding=1))
    with torch.no_grad():
        layer.parametrizations.weight.original0.mul_(3.0)  # the norms: the weight is not what it was
    with torch.inference_mode(), fastconv.use_backend("cpu"):
        for seed in range(3):
            x = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(seed))
            assert_close_rel(layer(x), _reference_conv(layer, x), torch.float32, f"seed {seed}", tol=1e-5)


def test_meta_device_forward_takes_the_full_path():
    """Shape inference on the meta device (deferred initialization, FLOP counting): converted models
    and drop-in layers compute output shapes there as the full op path does (the fast path has no
    kernels to replay on meta; it used to fail asking autocast about the meta device)."""
    fast = fastconv.convert(_net()).to("meta")
    drop_in = fastconv.nn.Conv2dReLU(4, 8, 3, padding=1).to("meta")
    pointwise = fastconv.nn.Conv1x1(4, 8).to("meta")
    x = torch.empty(2, 4, 12, 12, device="meta")
    with torch.no_grad():
        for _ in range(2):
            assert fast(x).shape == (2, 8, 3, 3) and fast(x).device.type == "meta"
            assert drop_in(x).shape == (2, 8, 12, 12)
            assert pointwise(x).shape == (2, 8, 12, 12)


# ---------------------------------------------------------------------------------------------
# the public functionals called directly (fastconv.conv2d_relu / conv1x1): one process-wide table

conv1x1_mod = sys.modules["fastconv.ops.conv1x1"]


def _functional_full_forbidden(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the functional's full path ran")

    monkeypatch.setattr(conv2d_mod, "_conv2d_relu", boom)
    monkeypatch.setattr(conv1x1_mod, "_conv1x1", boom)


@pytest.mark.parametrize("backend", ["cpu", "torch", "auto", "reference"])
def test_functional_replays_bit_exact(backend, monkeypatch):
    """Repeated inference calls of the functionals replay the kernel the first call resolved to:
    the same values bit for bit as the full path, on fresh inputs (grad mode on with nothing
    requiring grad counts as inference), into a channel slice of a poisoned buffer."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    cl = torch.channels_last
    gen = torch.Generator().manual_seed(0)
    w3, b3 = torch.randn(16, 8, 3, 3, generator=gen) / 8, torch.randn(16, generator=gen)
    w1, scale, shift = torch.randn(12, 8, generator=gen) / 3, torch.rand(8, generator=gen) + 0.5, torch.randn(8, generator=gen)

    def calls(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 8, 9, 9, generator=g).contiguous(memory_format=cl)
        res = torch.randn(2, 16, 9, 9, generator=g).contiguous(memory_format=cl)
        buf = torch.full((2, 20, 9, 9), float("nan")).contiguous(memory_format=cl)
        y3 = fastconv.conv2d_relu(x, w3, b3, 1, 1, residual=res, out=buf[:, 2:18])
        assert buf[:, :2].isnan().all() and buf[:, 18:].isnan().all()
        y1 = fastconv.conv1x1(x, w1, None, 2, in_scale=scale, in_shift=shift, in_relu=True, relu=False)
        return x, res, y3.clone(), y1

    with fastconv.use_backend(backend):
        calls(0)  # full path (tunes under auto) ...
        calls(1)  # ... the plans are final
        assert _fastpath.FUNCTIONAL._fastpath_plans  # (auto's tuning leaves stale-generation plans too)
        with monkeypatch.context() as m:
            _functional_full_forbidden(m)
            x, res, y3, y1 = calls(2)
        buf = torch.empty(2, 20, 9, 9).contiguous(memory_format=cl)
        full3 = conv2d_mod._conv2d_relu(x, w3, b3, 1, 1, 1, 1, True, res, buf[:, 2:18])
        full1 = conv1x1_mod._conv1x1(x, w1, None, 2, False, None, scale, shift, True, None)
    torch.testing.assert_close(y3, full3, rtol=0, atol=0)
    torch.testing.assert_close(y1, full1, rtol=0, atol=0)
    ref = torch.nn.functional.conv2d(x.double(), w3.double(), b3.double(), 1, 1) + res.double()
    assert_close_rel(y3, ref.relu(), torch.float32, "conv2d_relu replay", tol=1e-5)


def test_functional_replay_keeps_the_checks_that_depend_on_values():
    """What a plan cannot vouch for is checked on the full path: an out overlapping an input, an
    input requiring grad under grad mode, and argument values that hash like valid ones (1.0, True)."""
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    buf = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        for _ in range(2):
            fastconv.conv2d_relu(buf[:, :4], w, None, 1, 1, out=buf[:, 4:])  # the DenseNet pattern: allowed
        with pytest.raises(RuntimeError, match="overlap"):
            fastconv.conv2d_relu(buf[:, :4], w, None, 1, 1, out=buf[:, 2:6])
        for _ in range(2):
            fastconv.conv2d_relu(x, w, None, 1, 1, 1, 1)
        with pytest.raises(TypeError, match="groups"):
            fastconv.conv2d_relu(x, w, None, 1, 1, 1, True)
        with pytest.raises(TypeError, match="stride"):
            fastconv.conv2d_relu(x, w, None, 1.0, 1, 1, 1)
        with pytest.raises(TypeError, match="relu"):
            fastconv.conv2d_relu(x, w, None, 1, 1, 1, 1, relu=1)
        with pytest.raises(TypeError, match="in_relu"):
            fastconv.conv1x1(x, w[:, :, 0, 0], in_relu=0)
    wg = w.clone().requires_grad_()
    y = fastconv.conv2d_relu(x, wg, None, 1, 1)  # the full path: autograd records it
    y.sum().backward()
    assert wg.grad is not None and wg.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="automatic differentiation"):
        fastconv.conv2d_relu(x, wg, None, 1, 1, out=torch.empty(1, 4, 6, 6))


def test_functional_plan_table_is_bounded():
    table = _fastpath.FUNCTIONAL._fastpath_plans
    w = torch.randn(2, 1, 1, 1)
    with torch.no_grad(), fastconv.use_backend("reference"):
        for width in range(1, table.limit + 3):
            fastconv.conv2d_relu(torch.randn(1, 1, 1, width), w)
    assert 0 < len(table) <= table.limit


@pytest.mark.parametrize("backend", ["cpu", "torch", "auto", "reference"])
def test_functional_max_pool2d_replays_exactly(backend, monkeypatch):
    """fastconv.max_pool2d called directly replays its kernel too: PyTorch's values bit for bit on
    fresh inputs, into a channel slice of a poisoned NHWC buffer; ceil_mode=1 still raises."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    cl = torch.channels_last
    with fastconv.use_backend(backend), torch.inference_mode():
        for seed in range(4):
            if seed == 2:
                monkeypatch.setattr(pool_mod, "_max_pool2d", lambda *a: pytest.fail("the full path ran"))
            x = torch.randn(2, 6, 11, 11, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=cl)
            buf = torch.full((2, 9, 6, 6), float("nan")).contiguous(memory_format=cl)
            y = fastconv.max_pool2d(x, 3, 2, 1, out=buf[:, 1:7])
            assert buf[:, :1].isnan().all() and buf[:, 7:].isnan().all()
            torch.testing.assert_close(y, torch.nn.functional.max_pool2d(x, 3, 2, 1), rtol=0, atol=0)
            z = fastconv.max_pool2d(x, (2, 3), None, ceil_mode=True)
            torch.testing.assert_close(z, torch.nn.functional.max_pool2d(x, (2, 3), None, ceil_mode=True), rtol=0, atol=0)
        monkeypatch.undo()
        with pytest.raises(TypeError, match="ceil_mode"):
            fastconv.max_pool2d(x, (2, 3), None, ceil_mode=1)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_inception_reduce_replays_under_autocast(backend):
    """A converted Inception block's grouped 1x1 reduce replayed its kernel on uncast tensors with
    autocast on: from the second call a bfloat16 input met float32 weights (the cpu kernel raised)
    and a float32 input came back with bf16 error on the reference kernel."""
    import importlib

    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    googlenet = importlib.import_module("torchvision.models.googlenet")
    torch.manual_seed(0)
    block = fastconv.convert(googlenet.Inception(16, 8, 8, 16, 4, 8, 8).eval())
    with torch.inference_mode(), fastconv.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        for x in (torch.randn(2, 16, 9, 9), torch.randn(2, 16, 9, 9).bfloat16()):
            first = block(x)
            for _ in range(2):
                torch.testing.assert_close(block(x), first, rtol=0, atol=0)
