"""The torch tactic's cache of oneDNN-blocked conv weights (fastconv/ops/_weight_cache.py): the
results stay right when a weight changes in place, dies, or meets another input size, and the
cache holds nothing it should not."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

import fastconv
from fastconv.ops import _torch_tactic, _weight_cache, reference
from tests.utils import REL_TOL, assert_close_rel, rel_err

pytestmark = pytest.mark.skipif(not _weight_cache.onednn_prepack_enabled() or not torch.backends.mkldnn.is_available()
                                or not _torch_tactic.ONEDNN_POINTWISE,
                                reason="the torch tactic does not use oneDNN's pointwise conv on this torch")

CL = torch.channels_last


@pytest.fixture(autouse=True)
def fresh_cache():
    _weight_cache.clear()
    yield
    _weight_cache.clear()


def _conv(x, w, b, padding=1):
    with fastconv.use_backend("torch"):
        return fastconv.conv2d_relu(x, w, b, 1, padding)


def _ref(x, w, b, padding=1):
    return reference.conv2d_relu(x.double(), w.double(), b.double(), None, stride=[1, 1], padding=[padding] * 4,
                                 dilation=[1, 1], groups=1, relu=True)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_packed_once_and_reused(layout):
    x = torch.randn(2, 16, 9, 9).contiguous(memory_format=layout)
    w = (torch.randn(32, 16, 3, 3) / 12).contiguous(memory_format=layout)
    b = torch.randn(32)
    y1 = _conv(x, w, b)
    assert _weight_cache.cached_count() == 1
    y2 = _conv(torch.randn_like(x), w, b)  # same geometry: the same blocked copy
    assert _weight_cache.cached_count() == 1
    assert_close_rel(y1, _ref(x, w, b), torch.float32, "first call")
    assert torch.equal(y1, _conv(x, w, b)) and not torch.equal(y1, y2)


def test_in_place_weight_update_repacks():
    x = torch.randn(2, 16, 9, 9)
    w = torch.randn(32, 16, 3, 3) / 12
    b = torch.randn(32)
    _conv(x, w, b)
    w.mul_(-2.0)  # e.g. load_state_dict or an optimizer step: same tensor, new values
    assert_close_rel(_conv(x, w, b), _ref(x, w, b), torch.float32, "after the in-place update")
    with torch.no_grad():
        w.copy_(torch.randn_like(w))
    assert_close_rel(_conv(x, w, b), _ref(x, w, b), torch.float32, "after copy_")


def test_conv1x1_weight_view_keyed_by_its_2d_owner():
    x = torch.randn(2, 24, 7, 7).contiguous(memory_format=CL)
    w = torch.randn(40, 24) / 5
    with fastconv.use_backend("torch"):
        fastconv.conv1x1(x, w)
        assert _weight_cache.cached_count() == 1
        w[3:9].zero_()  # in place, through a view of the owner
        y = fastconv.conv1x1(x, w)
    ref = reference.conv1x1(x.double(), w.double(), None, None, None, None, in_relu=False, stride=[1, 1], relu=True)
    assert_close_rel(y, ref, torch.float32, "conv1x1 after the in-place update")
    assert (y[:, 3:9] == 0).all()


def test_entry_goes_with_the_weight():
    x = torch.randn(1, 16, 6, 6)
    w = torch.randn(16, 16, 3, 3)
    _conv(x, w, torch.zeros(16))
    assert _weight_cache.cached_count() == 1
    del w
    gc.collect()
    assert _weight_cache.cached_count() == 0


def test_input_sizes_kept_per_weight_up_to_the_limit():
    w = torch.randn(16, 16, 3, 3) / 12
    b = torch.randn(16)
    for size in (6, 7, 8, 9, 10):
        x = torch.randn(1, 16, size, size)
        assert_close_rel(_conv(x, w, b), _ref(x, w, b), torch.float32, f"{size}x{size}")
    assert _weight_cache.cached_count() == _weight_cache.MAX_PER_WEIGHT


def test_not_cached_for_inference_tensors_other_dtypes_or_when_off(monkeypatch):
    x = torch.randn(1, 16, 6, 6)
    with torch.inference_mode():
        w_inf = torch.randn(16, 16, 3, 3)
    _conv(x, w_inf, torch.zeros(16))
    # float16, and bfloat16 computed in float32, read a per-call float32 copy of the weight
    monkeypatch.setattr(_torch_tactic, "NATIVE_BF16", False)
    for dtype in (torch.float16, torch.bfloat16):
        w16 = torch.randn(16, 16, 3, 3, dtype=dtype)
        y16 = _conv(x.to(dtype), w16, torch.zeros(16, dtype=dtype))
        assert_close_rel(y16, _ref(x.to(dtype), w16, torch.zeros(16)), dtype, str(dtype), tol=REL_TOL[dtype])
    assert _weight_cache.cached_count() == 0
    monkeypatch.setenv("FASTCONV_ONEDNN_PREPACK", "0")
    _conv(x, torch.randn(16, 16, 3, 3), torch.zeros(16))
    assert _weight_cache.cached_count() == 0


def test_converted_model_reloaded_weights_take_effect():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()).eval()
    fast = fastconv.convert(model)
    x = torch.randn(2, 8, 10, 10)
    with fastconv.use_backend("torch"), torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
        other = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU()).eval()
        fast.load_state_dict(other.state_dict())
        torch.testing.assert_close(fast(x), other(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    reason="oneDNN's bfloat16 conv needs an AVX-512 (or newer) CPU")
def test_bf16_weight_cached_for_onednn_bf16(monkeypatch):
    if not _torch_tactic.ONEDNN_POINTWISE:
        pytest.skip("torch < 2.7: the tactic does not call oneDNN's op")
    monkeypatch.setattr(_torch_tactic, "NATIVE_BF16", True)
    x = torch.randn(2, 16, 7, 7, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16, 3, 3, dtype=torch.bfloat16) / 12
    b = torch.randn(16, dtype=torch.bfloat16)
    for _ in range(2):
        assert_close_rel(_conv(x, w, b), _ref(x, w, b), torch.bfloat16, "bf16")
    assert _weight_cache.cached_count() == 1
    with torch.no_grad():
        w.mul_(-1)  # the version counter moves: the prepacked form is remade
    assert_close_rel(_conv(x, w, b), _ref(x, w, b), torch.bfloat16, "bf16 after an in-place update")


@pytest.mark.parametrize("backend", ["torch", "cpu"])  # oneDNN's blocked weight; the Winograd form
def test_new_memory_behind_a_weight_remakes_its_forms(backend):
    """``param.data = new`` (torch.nn.utils.vector_to_parameters does that) and a
    ``.half().float()`` round trip give a weight other memory without bumping its version
    counter: the cached forms must not outlive that (they did: results 36 off)."""
    if backend not in fastconv.available_backends():
        pytest.skip(fastconv.backend_status()[backend])
    torch.manual_seed(0)
    layer = fastconv.nn.Conv2dReLU(16, 16, 3, padding=1).eval()
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=CL)

    def check(what):
        ref = reference.conv2d_relu(x.double(), layer.weight.double(), layer.bias.double(), None, [1, 1], [1] * 4,
                                    [1, 1], 1, True)
        assert_close_rel(layer(x), ref, torch.float32, what, tol=1e-5)

    with torch.no_grad(), fastconv.use_backend(backend):
        check("first")
        assert _weight_cache.cached_count() >= 1
        torch.nn.utils.vector_to_parameters(torch.randn(sum(p.numel() for p in layer.parameters())) / 12,
                                            layer.parameters())
        check("after vector_to_parameters")
        layer.half().float()
        check("after half().float()")
        layer.weight.data = layer.weight.data.flip(0).contiguous()
        check("after weight.data = ...")


def test_swapped_parameters_with_cached_forms():
    """With swap_tensors conversion on, module.to() and load_state_dict swap each parameter
    object's contents, which torch refuses for a tensor that has a weak reference: the cache
    holds none (it failed after one forward)."""
    prev = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        torch.manual_seed(0)
        layer = fastconv.nn.Conv2dReLU(16, 16, 3, padding=1).eval()
        other = fastconv.nn.Conv2dReLU(16, 16, 3, padding=1).eval()
        x = torch.randn(1, 16, 8, 8).contiguous(memory_format=CL)
        with torch.no_grad(), fastconv.use_backend("torch"):
            layer(x)
            assert _weight_cache.cached_count() == 1
            layer.load_state_dict(other.state_dict())
            torch.testing.assert_close(layer(x), other(x), rtol=0, atol=0)
            layer.double()
            y = layer(x.double())
        ref = reference.conv2d_relu(x.double(), other.weight.double(), other.bias.double(), None, [1, 1], [1] * 4,
                                    [1, 1], 1, True)
        assert_close_rel(y, ref, torch.float64, "after double()")
    finally:
        torch.__future__.set_swap_module_params_on_conversion(prev)


def test_copies_and_pickles_carry_no_forms(tmp_path):
    import copy

    w = torch.nn.Parameter(torch.randn(16, 16, 3, 3))
    _conv(torch.randn(1, 16, 6, 6), w, torch.zeros(16))
    assert _weight_cache.cached_count() == 1
    assert not copy.deepcopy(w).__dict__.get("_fastconv_forms")
    torch.save(w, tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    assert torch.equal(loaded, w) and not loaded.__dict__.get("_fastconv_forms")


@pytest.mark.parametrize("backend", ["cpu", "torch", "auto"])
@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.SGD])
def test_fused_optimizer_step_is_seen(backend, optimizer):
    """torch.optim's fused=True updates parameters without counting it on their version counters:
    the Winograd / oneDNN forms cached in a validation pass kept serving the old weights (4-6 off)."""
    torch.manual_seed(0)
    layer = fastconv.nn.Conv2dReLU(16, 16, 3, padding=1)
    x = torch.randn(2, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    opt = optimizer(layer.parameters(), lr=0.1, fused=True)
    with fastconv.use_backend(backend):
        with torch.no_grad():
            layer(x)
        layer(x).square().mean().backward()
        opt.step()
        with torch.no_grad():
            got = layer(x)
    want = F.relu(F.conv2d(x, layer.weight, layer.bias, padding=1))
    assert rel_err(got, want) <= 1e-5


def test_fused_optimizer_step_reaches_fastconv_models():
    from tests.models.test_models import image, tv_model

    ref = tv_model("resnet18")
    model = fastconv.models.resnet18()
    model.load_state_dict(ref.state_dict())
    model.eval()  # BatchNorm frozen, weights fine-tuned
    opt = torch.optim.SGD(model.parameters(), lr=0.5, fused=True)
    x = image(n=1, size=32, seed=2)
    with torch.no_grad():
        model(x)  # builds the fused copy
    model(x).square().mean().backward()
    opt.step()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-4


def test_batch_sizes_share_one_onednn_form():
    """The batch size was part of the key: a server taking turns over more batch sizes than
    MAX_PER_WEIGHT re-packed every weight on every call (a converted ResNet-18 ran 2x slower)."""
    _weight_cache.clear()
    w = torch.randn(16, 8, 3, 3)
    for _ in range(2):
        for n in range(1, _weight_cache.MAX_PER_WEIGHT + 3):
            x = torch.randn(n, 8, 10, 10).contiguous(memory_format=torch.channels_last)
            with fastconv.use_backend("torch"):
                assert_close_rel(fastconv.conv2d_relu(x, w, padding=1), reference.conv2d_relu(
                    x, w, None, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, True), torch.float32, f"batch {n}")
    assert _weight_cache.cached_count() == 1


def test_a_form_made_while_the_weight_changed_is_not_cached():
    """make() runs outside the lock: a weight written meanwhile (another thread's optimizer step)
    must not have the form of its old values cached as current for the new version."""
    v = torch.nn.Parameter(torch.zeros(4))

    def make():
        r = v.detach() * 10
        with torch.no_grad():
            v.add_(1)  # the write that lands while the form is made
        return r

    assert _weight_cache.derived(v, ("k",), make).tolist() == [0.0] * 4  # right for that call
    assert _weight_cache.derived(v, ("k",), lambda: v.detach() * 10).tolist() == [10.0] * 4
    _weight_cache.clear()


def test_clear_releases_the_memory_stale_forms_pin():
    w = torch.nn.Parameter(torch.randn(8, 8, 3, 3))
    _weight_cache.derived(w, ("k",), lambda: w.detach() * 2)
    w.data = torch.randn(8, 8, 3, 3)  # other memory: the form is stale and pins the old storage
    forms = w.__dict__["_fastconv_forms"]
    _weight_cache.clear()
    assert forms.storage is None and not forms.values
    assert torch.equal(_weight_cache.derived(w, ("k",), lambda: w.detach() * 2), w.detach() * 2)
    _weight_cache.clear()
