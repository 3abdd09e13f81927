"""Autocast: fastconv layers, ops and converted models under torch.autocast("cpu", dtype=bfloat16)
run in the autocast dtype (fp32 weights with bf16 activations included) instead of failing on
mixed dtypes, and stay close to the float32 result."""
import pytest
import torch
import torch.nn as nn

import fastconv
from fastconv import nn as fnn

from tests.utils import rel_err

HAS_EXT = "cpu" in fastconv.available_backends()
BACKENDS = ["reference"] + (["cpu"] if HAS_EXT else [])
BF16_TOL = 2e-2  # a network's worth of bfloat16 roundings (8 mantissa bits) against float32


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        fnn.Conv2dReLU(3, 16, 3, padding=1), fnn.MaxPool2d(3, 2, 1), fnn.Conv1x1(16, 24), fnn.Conv2dReLU(24, 8, 3),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layers_under_autocast(backend, dtype):
    net = _net()
    x = torch.randn(2, 3, 16, 16)
    with fastconv.use_backend(backend):
        ref = net(x)
        with torch.autocast("cpu", dtype=dtype):
            y = net(x)  # float32 weights and input: each conv runs in the autocast dtype
            y2 = net(x.to(dtype))  # low-precision activations with float32 weights
    assert ref.dtype == torch.float32
    assert y.dtype == dtype and y2.dtype == dtype
    assert rel_err(y, ref) < BF16_TOL and rel_err(y2, ref) < BF16_TOL
    # outside the region everything is float32 again
    assert net(x).dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_under_autocast(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    w, w1, b = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 1, 1, generator=g), torch.randn(6, generator=g)
    with fastconv.use_backend(backend):
        ref = fastconv.conv2d_relu(x, w, b, padding=1, residual=torch.ones(2, 6, 8, 8))
        ref1 = fastconv.conv1x1(x, w1, b, in_scale=torch.ones(4), in_relu=True)
        ref_multi = fastconv.conv1x1(x, w1, b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            # mixed: bf16 activations, fp32 weights, fp32 residual
            y = fastconv.conv2d_relu(x.bfloat16(), w, b, padding=1, residual=torch.ones(2, 6, 8, 8))
            y1 = fastconv.conv1x1(x.bfloat16(), w1, b, in_scale=torch.ones(4), in_relu=True)
            # out= variants: the inputs are cast to out's dtype, out written in place
            buf = torch.full((2, 14, 8, 8), float("nan"), dtype=torch.bfloat16)
            r = fastconv.conv2d_relu(x, w, b, padding=1, residual=torch.ones(2, 6, 8, 8), out=buf[:, :6])
            assert r.data_ptr() == buf.data_ptr()
            fastconv.conv1x1(x, w1, b, in_scale=torch.ones(4), in_relu=True, out=buf[:, 6:12])
            outs = fastconv.ops.conv1x1_multi(x, [w1[:2], w1[2:]], [b[:2], b[2:]], outs=[buf[:, 12:14], None])
            out32 = torch.empty(2, 6, 8, 8)  # a float32 out: computed in float32
            fastconv.conv2d_relu(x.bfloat16(), w, b, padding=1, out=out32)
            # max_pool2d keeps its input dtype (as F.max_pool2d under autocast)
            assert fastconv.max_pool2d(x, 2).dtype == torch.float32
            assert fastconv.max_pool2d(x.bfloat16(), 2).dtype == torch.bfloat16
            # dense_concat promotes (as torch.cat under autocast)
            cat = fastconv.dense_concat([x.bfloat16(), x])
            assert cat.dtype == torch.float32 and torch.equal(cat, torch.cat([x.bfloat16().float(), x], 1))
            cat_out = torch.empty(2, 8, 8, 8, dtype=torch.bfloat16)
            fastconv.dense_concat([x, x.bfloat16()], out=cat_out)
            assert torch.equal(cat_out, torch.cat([x, x], 1).bfloat16())
    assert y.dtype == y1.dtype == torch.bfloat16
    assert rel_err(y, ref) < BF16_TOL and rel_err(y1, ref1) < BF16_TOL
    assert rel_err(buf[:, :6], ref) < BF16_TOL and rel_err(buf[:, 6:12], ref1) < BF16_TOL
    assert outs[0].data_ptr() == buf[:, 12:14].data_ptr() and outs[1].dtype == torch.bfloat16
    assert rel_err(torch.cat([buf[:, 12:14], outs[1]], 1), ref_multi) < BF16_TOL
    assert not buf.isnan().any()
    assert rel_err(out32, fastconv.conv2d_relu(x.bfloat16().float(), w, b, padding=1)) < 1e-6


def test_autocast_autograd():
    """The casts sit above fastconv's autograd formulas: training under autocast works."""
    net = _net()
    x = torch.randn(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(x).float().square().mean()
    loss.backward()
    ref_net = _net()
    ref_net(x).square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), ref_net.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert rel_err(p.grad, q.grad) < 0.1, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_casts_are_cached_while_no_gradient_flows(backend):
    """Under autocast a weight is cast once (as PyTorch caches its parameter casts), not on every
    call; an in-place update of the weight is seen (the cache keys on its version); a weight that
    requires grad under grad mode is cast per call, so its gradient still arrives."""
    from fastconv.ops import _autocast, _weight_cache

    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 4, 8, 8, generator=g), torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = _autocast.cast_param(w, "cpu", torch.bfloat16)
        assert first.dtype == torch.bfloat16 and _autocast.cast_param(w, "cpu", torch.bfloat16) is first
        assert _autocast.cast_param(w, "cpu", torch.float16) is not first  # one form per dtype
        with fastconv.use_backend(backend):
            y = fastconv.conv2d_relu(x, w, b, padding=1)
            w.mul_(-1)  # in place: the cached cast is stale now
            y_neg = fastconv.conv2d_relu(x, w, b, padding=1)
        assert _autocast.cast_param(w, "cpu", torch.bfloat16) is not first
        with torch.inference_mode():  # a cast made there is a normal tensor: autograd may save it later
            assert not _autocast.cast_param(w, "cpu", torch.bfloat16).is_inference()
        # requires grad under grad mode: a per-call cast, inside the graph
        p = torch.nn.Parameter(w.clone())
        c1, c2 = _autocast.cast_param(p, "cpu", torch.bfloat16), _autocast.cast_param(p, "cpu", torch.bfloat16)
        assert c1 is not c2 and c1.grad_fn is not None
        with torch.no_grad():
            assert _autocast.cast_param(p, "cpu", torch.bfloat16) is _autocast.cast_param(p, "cpu", torch.bfloat16)
        with fastconv.use_backend(backend):
            fastconv.conv2d_relu(x, p, b, padding=1).float().sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # as PyTorch: a cast per call
        q = torch.randn(6, 4, 3, 3)
        assert _autocast.cast_param(q, "cpu", torch.bfloat16) is not _autocast.cast_param(q, "cpu", torch.bfloat16)
        assert "_fastconv_forms" not in q.__dict__
    # a module cast to the autocast dtype: its weights' casts of the old memory are released
    # (they pin that memory) the next time the weight meets autocast, not kept for its lifetime
    layer = fastconv.nn.Conv2dReLU(4, 6, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
        assert "_fastconv_forms" in layer.weight.__dict__
        layer.bfloat16()
        layer(x)
    assert "_fastconv_forms" not in layer.weight.__dict__
    w.mul_(-1)
    with fastconv.use_backend(backend):
        ref, ref_neg = fastconv.conv2d_relu(x, w, b, padding=1), fastconv.conv2d_relu(x, -w, b, padding=1)
    assert rel_err(y, ref) < BF16_TOL and rel_err(y_neg, ref_neg) < BF16_TOL
    _weight_cache.clear()


def test_torch_ops_direct_under_autocast():
    """The rules are on the dispatcher: torch.ops.fastconv.* calls get them too."""
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.ops.fastconv.conv2d_relu(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True)
        out = torch.empty(1, 3, 3, 3, dtype=torch.bfloat16)
        torch.ops.fastconv.conv2d_relu_out(x, w, None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, True, out)
        d = torch.randn(1, 2, 5, 5, dtype=torch.float64)  # float64 is left alone, as autocast does
        assert torch.ops.fastconv.conv2d_relu(d, w.double(), None, None, [1, 1], [0, 0, 0, 0], [1, 1], 1,
                                              True).dtype == torch.float64
    assert y.dtype == torch.bfloat16 and torch.equal(y, out)


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "googlenet"])
def test_converted_model_under_autocast(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    kwargs = dict(aux_logits=False, init_weights=True) if name == "googlenet" else {}
    tv = getattr(torchvision.models, name)(num_classes=10, **kwargs).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = fastconv.convert(tv)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
    assert ref.dtype == torch.float32 and y.dtype == torch.bfloat16
    err = rel_err(y, ref)
    assert err < 5e-2, f"{name}: bf16 autocast vs float32: relative error {err:.2e}"
    # fastconv.models' own eval path (fused copy) too
    if name == "resnet18":
        fm = fastconv.models.resnet18(num_classes=10).eval()
        fm.load_state_dict(tv.state_dict())
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y2 = fm(x)
        assert y2.dtype == torch.bfloat16 and rel_err(y2, ref) < 5e-2


def test_converted_linear_caches_its_weight_cast():
    """convert() turns a plain nn.Linear into FusedLinear: F.linear as before, but under autocast its
    weight's cast is cached (PyTorch recasts a Linear's weight on every call: AlexNet's and VGG's
    classifiers cost most of an autocast forward in those casts). Same values as nn.Linear under
    autocast, bit for bit; plain float32 outside it; a Linear with hooks or its own forward stays."""
    from fastconv import fused

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    converted = fastconv.convert(model)
    assert [type(m) for m in converted if isinstance(m, fused.FusedLinear)] == [fused.FusedLinear] * 2
    x = torch.randn(4, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                want, got = model(x), converted(x)
                again = converted(x)
                cast = converted[1]._parameters["weight"].__dict__["_fastconv_forms"]
            assert want.dtype == got.dtype == dtype and torch.equal(got, want) and torch.equal(again, want)
            assert any(v.dtype == dtype for v in cast.values.values())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
            assert converted(x).dtype == torch.float32

    hooked = nn.Sequential(nn.Linear(4, 4))
    hooked[0].register_forward_hook(lambda *a: None)
    assert type(fastconv.convert(hooked.eval())[0]) is nn.Linear
    # a parametrized Linear (other state-dict keys) stays; a bias-free one keeps its keys
    normed = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)), nn.Linear(4, 2, bias=False))
    conv_normed = fastconv.convert(normed.eval())
    assert type(conv_normed[0]) is type(normed[0]) and type(conv_normed[1]) is fused.FusedLinear
    assert list(conv_normed.state_dict()) == list(normed.state_dict())
    # frozen Parameters on the Linear's own memory: tied weights stay tied, parameters() still answers
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).eval()
    tied[2].weight = tied[0].weight
    conv_tied = fastconv.convert(tied)
    assert conv_tied[0].weight.data_ptr() == conv_tied[2].weight.data_ptr()
    assert not next(conv_tied.parameters()).requires_grad
    with torch.no_grad():
        torch.testing.assert_close(conv_tied(x[:, 0, 0]), tied(x[:, 0, 0]), rtol=0, atol=0)


def test_fake_or_transformed_calls_leave_no_cached_cast():
    """A pass under FakeTensorMode (shape inference) or a torch.func transform inside an autocast
    region must not cache its fake or wrapped cast for the real calls after it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()
    converted = fastconv.convert(model)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with FakeTensorMode(allow_non_fake_inputs=True):
            converted(torch.empty(2, 3, 4, 4))
        y = converted(x)
        assert type(y) is torch.Tensor
        torch.testing.assert_close(y.float(), model(x).float(), rtol=2e-2, atol=2e-2)
        xs = torch.randn(3, 2, 64)
        assert torch.equal(torch.func.vmap(converted[3])(xs), torch.func.vmap(model[3])(xs))  # as nn.Linear
        # a mode that sees real tensors (FlopCounterMode) keeps the cache
        from fastconv.ops import _autocast
        from torch.utils.flop_counter import FlopCounterMode

        w = torch.randn(4, 4)
        with FlopCounterMode(display=False):
            assert _autocast.cast_param(w, "cpu", torch.bfloat16) is _autocast.cast_param(w, "cpu", torch.bfloat16)


def test_linear_of_a_model_built_under_inference_mode_gets_a_normal_weight():
    """A Linear made under inference_mode holds inference tensors, which have no version counter:
    FusedLinear copies it into a normal tensor (else its autocast cast is made on every call)."""
    from fastconv import fused
    from fastconv.ops import _autocast

    with torch.inference_mode():
        lin = nn.Linear(8, 4)
    fl = fused.FusedLinear.from_linear(lin)
    assert not fl.weight.is_inference() and torch.equal(fl.weight, lin.weight)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _autocast.cast_param(fl.weight, "cpu", torch.bfloat16) is _autocast.cast_param(
            fl.weight, "cpu", torch.bfloat16)
