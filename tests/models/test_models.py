"""fastconv.models against torchvision: identical state dicts, eval outputs within 1e-4, the same
training-mode behaviour, and an eval forward that runs on fastconv ops only."""
import os

import pytest
import torch
import torchvision

import fastconv

from tests.utils import rel_err

FAST = ["alexnet", "vgg11", "vgg11_bn", "googlenet", "resnet18", "resnet50", "densenet121", "resnext50_32x4d"]
SLOW = ["vgg13", "vgg16", "vgg19", "vgg13_bn", "vgg16_bn", "vgg19_bn", "resnet34", "resnet101", "resnet152",
        "densenet161", "densenet169", "densenet201", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
        "wide_resnet101_2"]
BUILDERS = FAST + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW]
TOL = 1e-4


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Random BatchNorm statistics and affine parameters, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) - 0.5)


def tv_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "googlenet":
        kwargs.setdefault("init_weights", True)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    randomize_bn(model)
    return model.eval()


def image(n=2, size=112, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", BUILDERS)
def test_builder_loads_torchvision_state_dict_and_matches(name):
    ref = tv_model(name)
    kwargs = {"init_weights": False} if name == "googlenet" else {}
    model = getattr(fastconv.models, name)(**kwargs)
    assert list(model.state_dict().keys()) == list(ref.state_dict().keys())
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    x = image()
    with torch.inference_mode():
        expected = ref(x)
        got = model(x)
    assert got.shape == expected.shape
    err = rel_err(got, expected)
    assert err <= TOL, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("transform_input", [False, True])
@pytest.mark.parametrize("aux_logits", [False, True])
def test_googlenet_variants(transform_input, aux_logits):
    ref = tv_model("googlenet", transform_input=transform_input, aux_logits=aux_logits)
    model = fastconv.models.googlenet(transform_input=transform_input, aux_logits=aux_logits, init_weights=False)
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    x = image(seed=2)
    with torch.inference_mode():
        assert rel_err(model(x), ref(x)) <= TOL


def test_googlenet_training_outputs_match_torchvision():
    ref = tv_model("googlenet", aux_logits=True)
    model = fastconv.models.googlenet(aux_logits=True, init_weights=False)
    model.load_state_dict(ref.state_dict(), strict=True)
    ref.train()
    model.train()
    x = image(n=2, size=96, seed=3)
    torch.manual_seed(5)
    expected = ref(x)
    torch.manual_seed(5)  # the same dropout masks
    got = model(x)
    assert type(got).__name__ == "GoogLeNetOutputs" and len(got) == 3
    for g, e in zip(got, expected):
        assert rel_err(g, e) <= TOL


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "densenet121"])
def test_training_mode_matches_torchvision(name):
    """train(): batch statistics, updated running stats, dropout: what torchvision computes."""
    ref = tv_model(name)
    model = getattr(fastconv.models, name)()
    model.load_state_dict(ref.state_dict(), strict=True)
    ref.train()
    model.train()
    x = image(n=2, size=64 if name != "vgg11_bn" else 32, seed=4)
    torch.manual_seed(7)
    expected = ref(x)
    torch.manual_seed(7)
    got = model(x)
    assert rel_err(got, expected) <= TOL
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        if "running" in k:
            assert rel_err(a, b) <= 1e-5, k
    got.sum().backward()  # gradients flow through fastconv's autograd
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_eval_output_follows_parameter_changes():
    """Folded weights are recomputed after load_state_dict, an in-place update and .to(dtype)."""
    ref = tv_model("resnet18")
    model = fastconv.models.resnet18()
    model.load_state_dict(ref.state_dict())
    model.eval()
    x = image(n=1, size=64, seed=6)
    with torch.no_grad():
        first = model(x)
        assert rel_err(first, ref(x)) <= TOL
        # an in-place change (as an optimizer step makes) to a BN's statistics and a conv weight
        ref.layer1[0].bn1.running_mean.add_(0.3)
        ref.layer2[0].conv1.weight.mul_(1.5)
        model.layer1[0].bn1.running_mean.add_(0.3)
        model.layer2[0].conv1.weight.mul_(1.5)
        second = model(x)
        assert rel_err(second, first) > 1e-3
        assert rel_err(second, ref(x)) <= TOL
        # load_state_dict of another model
        other = tv_model("resnet18")
        randomize_bn(other, seed=9)
        model.load_state_dict(other.state_dict())
        assert rel_err(model(x), other(x)) <= TOL
        # .to(float64)
        model.to(torch.float64)
        other.to(torch.float64)
        out64 = model(x.double())
        assert out64.dtype == torch.float64 and rel_err(out64, other(x.double())) <= 1e-10


def test_train_then_eval_uses_updated_statistics():
    model = fastconv.models.resnet18(num_classes=10)
    ref = torchvision.models.resnet18(num_classes=10)
    ref.load_state_dict(model.state_dict())
    model.eval()
    x = image(n=2, size=64, seed=8)
    with torch.no_grad():
        model(x)  # builds the fused copy
        model.train()
        ref.train()
        model(x)
        ref(x)  # both update their running statistics
        model.eval()
        ref.eval()
        assert rel_err(model(x), ref(x)) <= TOL


def test_wrong_input_is_rejected():
    model = fastconv.models.resnet18().eval()
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.randn(3, 32, 32))


def test_state_dict_is_unchanged_by_eval():
    model = fastconv.models.densenet121().eval()
    keys = list(model.state_dict().keys())
    with torch.no_grad():
        model(image(n=1, size=64))
    assert list(model.state_dict().keys()) == keys


def test_eval_runs_channels_last_inside_on_the_cpu():
    # convert()'s default layout policy: an NCHW input runs channels_last through the fused copy
    # (where oneDNN and the Winograd kernel are faster); the model's own weights keep their layout
    model = fastconv.models.vgg11(num_classes=10).eval()
    ref = torchvision.models.vgg11(num_classes=10).eval()
    ref.load_state_dict(model.state_dict())
    layouts = []
    x = image(n=1, size=64, seed=4)
    with torch.no_grad():
        fused = model._fused_model()
        convs = [m for m in fused.modules()
                 if getattr(m, "weight", None) is not None and m.weight.dim() == 4 and m.weight.shape[1] > 3]
        assert len(convs) == 7
        convs[0].register_forward_pre_hook(
            lambda m, a: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
        y = model(x)
        assert layouts == [True]
        assert y.shape == (1, 10) and rel_err(y, ref(x)) <= TOL
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_eval_mode_with_gradients_trains_the_weights_like_torchvision(name):
    # fine-tuning with BatchNorm frozen by eval(): the loss reaches every parameter, as in
    # torchvision (the fused copy, whose folded weights are new tensors, must not run then)
    model = getattr(fastconv.models, name)(num_classes=10).eval()
    ref = tv_model(name, num_classes=10)
    model.load_state_dict(ref.state_dict())
    x = image(n=2, size=64, seed=6)
    model(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert "_fused_cache" not in model.__dict__
    for (pname, p), q in zip(model.named_parameters(), ref.parameters()):
        assert p.grad is not None, f"{name}.{pname}: no gradient in eval mode"
        assert rel_err(p.grad, q.grad) <= 1e-4, pname
    with torch.no_grad():  # no gradient wanted: the fused copy
        assert rel_err(model(x), ref(x)) <= TOL
    assert "_fused_cache" in model.__dict__


def test_the_fused_copy_runs_the_winograd_kernel_on_the_cpu():
    # its fused convs hold grad-free weights (the model's own keep requires_grad), so with the
    # activations channels_last inside, the 3x3 convs with C_in >= 16 take the Winograd kernel
    from fastconv.ops import _weight_cache

    model = fastconv.models.vgg11(num_classes=10).eval()
    _weight_cache.clear()
    with fastconv.use_backend("cpu"), torch.no_grad():
        model(image(n=1, size=64, seed=2))
    k3 = [t for t in model._fused_model().buffers() if t.dim() == 4 and t.shape[-1] == 3]
    assert len(k3) == 8 and not any(t.requires_grad for t in k3)
    assert all(p.requires_grad for p in model.parameters())
    if hasattr(torch.ops.fastconv, "_conv2d_winograd_cpu") and os.environ.get("FASTCONV_CPU_WINOGRAD", "1") != "0":
        assert _weight_cache.cached_count() == 7  # the transformed weights of the 7 convs with C_in >= 16


# ---------------------------------------------------------------------------------------------
# when the fused copy may stand in for the model (eval mode, no gradient wanted)


def _pair(name="resnet18"):
    ref = tv_model(name, num_classes=10)
    own = getattr(fastconv.models, name)(num_classes=10)
    own.load_state_dict(ref.state_dict())
    return ref, own.eval()


def test_fused_copy_follows_a_replaced_submodule_and_eval():
    """A parameter-free submodule replaced after the fused copy was built (its key held only
    parameters and buffers: the old avgpool kept running, 1.44 off), and a layer attribute changed
    in place followed by .eval()."""
    ref, own = _pair()
    x = image(n=2, size=64, seed=31)
    with torch.no_grad():
        own(x)
        ref.avgpool = own.avgpool = torch.nn.AdaptiveMaxPool2d(1)
        assert rel_err(own(x), ref(x)) <= TOL
        ref.maxpool.stride = own.maxpool.stride = 1
        own.eval()
        assert rel_err(own(x), ref(x)) <= TOL


def test_fused_copy_follows_layer_settings_changed_in_place():
    """The CIFAR-style stem edit (conv1's stride, the max-pool's kernel) after an eval call, with no
    .eval() in between: the cached fused copy kept the old stride (0.75 off torchvision)."""
    ref, own = _pair()
    x = image(n=2, size=64, seed=32)
    with torch.no_grad():
        own(x)
        for m in (ref, own):
            m.conv1.stride = (1, 1)
            m.maxpool.kernel_size, m.maxpool.stride, m.maxpool.padding = 1, 1, 0
        assert rel_err(own(x), ref(x)) <= TOL
        ref.layer1[0].bn1.eps = own.layer1[0].bn1.eps = 0.5  # folded into the conv: a setting too
        assert rel_err(own(x), ref(x)) <= TOL


def test_lazy_stem_and_torchvision_blocks():
    """A lazy stem (its input channels unknown until the first call) is not refused, and runs in
    eval; zero_init_residual zeroes torchvision's block classes too (a model built with them)."""
    from torchvision.models import resnet as tv_resnet

    torch.manual_seed(0)
    own = fastconv.models.resnet18(num_classes=5)
    own.conv1 = torch.nn.LazyConv2d(64, 7, 2, 3, bias=False)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        y = own.eval()(x)  # the first call shapes the lazy conv (the model's own layers)
        assert y.shape == (2, 5) and own.conv1.in_channels == 4
        assert rel_err(own(x), y) <= TOL  # now the fused copy
    model = fastconv.models.ResNet(tv_resnet.BasicBlock, [1, 1, 1, 1], zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, tv_resnet.BasicBlock)]
    assert blocks and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    model = fastconv.models.ResNet(tv_resnet.Bottleneck, [1, 1, 1, 1], zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, tv_resnet.Bottleneck)]
    assert blocks and all(torch.count_nonzero(b.bn3.weight) == 0 for b in blocks)


def test_torchvision_helper_names():
    from fastconv.models import densenet, vgg

    assert vgg.cfgs["D"] == torchvision.models.vgg.cfgs["D"]
    assert (densenet._DenseLayer, densenet._DenseBlock, densenet._Transition) == \
        (densenet.DenseLayer, densenet.DenseBlock, densenet.Transition)


def test_submodules_left_in_train_mode_are_honoured():
    """eval() then some submodules back in train mode (Monte-Carlo dropout, BatchNorm on batch
    statistics): the folded, all-eval fused copy computed something else, silently."""
    ref, own = _pair("alexnet")
    for m in own.modules():
        if isinstance(m, torch.nn.Dropout):
            m.train()
    x = image(n=2, size=64, seed=32)
    with torch.no_grad():
        assert not torch.equal(own(x), own(x))  # two dropout samples
    ref, own = _pair("resnet18")
    ref.layer1.train()
    own.layer1.train()
    with torch.no_grad():
        assert rel_err(own(x), ref(x)) <= TOL


def test_compiled_eval_model_under_no_grad():
    """torch.compile(fullgraph=True) of an eval model under no_grad traced into the lazily built
    fused copy (a lock, data-pointer comparisons) and failed; it traces the model's layers now."""
    ref, own = _pair()
    x = image(n=1, size=32, seed=33)
    compiled = torch.compile(own, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        own(x)
        assert rel_err(compiled(x), ref(x)) <= TOL


def test_googlenet_builder_drops_aux_heads_by_default_with_weights(tmp_path):
    """torchvision's rule: with weights, aux heads only when asked for (they were kept), and an
    aux-free state dict loads (it failed on the missing aux keys)."""
    full = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "googlenet.pth"
    torch.save(full, path)
    for weights in (full, str(path)):
        model = fastconv.models.googlenet(weights=weights)
        assert model.aux1 is None and model.aux2 is None and not model.aux_logits
        kept = fastconv.models.googlenet(weights=weights, aux_logits=True)
        assert kept.aux1 is not None
    no_aux = {k: v for k, v in full.items() if not k.startswith(("aux1.", "aux2."))}
    model = fastconv.models.googlenet(weights=no_aux)
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    assert set(model.state_dict()) == set(tv.state_dict())
    with pytest.raises(RuntimeError, match="Missing key"):
        fastconv.models.googlenet(weights=no_aux, aux_logits=True)


def test_eval_forward_runs_submodule_hooks():
    """The fused copy has modules of its own: a hook on a block or conv never ran, and a pre-hook
    that changes its input was ignored (0.66 off). Hooks send the forward through the model's
    own layers."""
    ref = tv_model("resnet18")
    model = fastconv.models.resnet18()
    model.load_state_dict(ref.state_dict())
    model.eval()
    x = image(n=1, size=64, seed=3)
    calls = []
    for m in (ref, model):
        m.layer4[1].register_forward_hook(lambda mod, i, o: calls.append(o.shape))
        m.conv1.register_forward_pre_hook(lambda mod, i: (i[0] * 0.5,))
    with torch.no_grad():
        want = ref(x)
        for _ in range(2):
            assert rel_err(model(x), want) <= TOL
    assert len(calls) == 3


def test_eval_forward_with_parametrized_submodule():
    """copy.copy of a parametrized module raises: fastconv.models' eval forward crashed."""
    from torch.nn.utils import parametrizations

    ref = tv_model("resnet18")
    model = fastconv.models.resnet18()
    model.load_state_dict(ref.state_dict())
    for m in (ref, model):
        parametrizations.weight_norm(m.layer1[0].conv1)
    model.load_state_dict(ref.state_dict())
    model.eval()
    x = image(n=1, size=64, seed=6)
    with torch.no_grad():
        want = ref(x)
        for _ in range(2):
            assert rel_err(model(x), want) <= TOL


def test_weights_names_and_enums_follow_torchvision(tmp_path):
    """A weights string that is not a file named the enum member for torchvision (weights="DEFAULT")
    and was opened as a path here (FileNotFoundError); another model's enum started a download
    before failing. Resolution only: nothing is downloaded."""
    from fastconv.models._base import resolve_weights

    assert resolve_weights("DEFAULT", "resnet50") is torchvision.models.ResNet50_Weights.DEFAULT
    assert resolve_weights("IMAGENET1K_V1", "resnet50") is torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert resolve_weights("ResNet50_Weights.DEFAULT", "resnet50") is torchvision.models.ResNet50_Weights.DEFAULT
    with pytest.raises(ValueError, match="neither a file nor a name of ResNet50_Weights"):
        fastconv.models.resnet50(weights="IMAGENET")
    with pytest.raises(TypeError, match="ResNet18_Weights"):
        fastconv.models.resnet18(weights=torchvision.models.VGG11_Weights.DEFAULT)
    path = tmp_path / "DEFAULT"  # a file of that name is a file
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    assert resolve_weights(str(path), "alexnet") == str(path)
    fastconv.models.alexnet(weights=str(path))


def test_googlenet_state_dict_keeps_the_input_transform_it_is_built_with():
    """torchvision turns transform_input on for its ImageNet enum; a state dict of one's own
    (trained without it) silently got it too (0.56 off)."""
    ref = tv_model("googlenet")  # transform_input=False, torchvision's default
    model = fastconv.models.googlenet(weights=ref.state_dict())
    assert not model.transform_input
    model.eval()
    x = image(n=1, size=64, seed=4)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= TOL
    assert fastconv.models.googlenet(weights=ref.state_dict(), transform_input=True).transform_input


def test_densenet_checkpoint_with_old_key_names_loads_from_a_file_or_dict(tmp_path):
    """torchvision's released DenseNet files name keys "norm.1"; renamed only for the enum before."""
    import re

    ref = tv_model("densenet121")
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in ref.state_dict().items()}
    assert any(".norm.1." in k for k in old)
    path = tmp_path / "densenet121-old.pth"
    torch.save(old, path)
    for weights in (old, str(path)):
        model = fastconv.models.densenet121(weights=weights)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert any(".norm.1." in k for k in old)  # the caller's dict is not renamed in place


@pytest.mark.parametrize("name", ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
                                  "wide_resnet101_2"])
def test_resnext_and_wide_resnet_builders_fix_their_arguments(name):
    fixed = {"groups": 2} if name.startswith("resnext") else {"width_per_group": 16}
    with pytest.raises(ValueError, match="expected value"):
        getattr(fastconv.models, name)(**fixed)
    with pytest.raises(ValueError, match="expected value"):
        getattr(torchvision.models, name)(**fixed)


def test_deprecated_pretrained_argument(monkeypatch):
    """torchvision still takes pretrained=True/False (the ImageNet V1 weights, with a warning): it
    was handed to the model's constructor ("unexpected keyword argument 'pretrained'")."""
    from torchvision.models import _api

    fetched = []
    state = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", lambda self, *a, **k: fetched.append(self) or state)
    with pytest.warns(UserWarning, match="'pretrained' is deprecated"):
        model = fastconv.models.resnet18(pretrained=True)
    assert fetched == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))
    with pytest.warns(UserWarning, match="'pretrained' is deprecated"):
        fastconv.models.resnet18(pretrained=False)
    with pytest.raises(TypeError, match="not both"):
        fastconv.models.resnet18(weights="DEFAULT", pretrained=True)
