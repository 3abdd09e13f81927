"""convert() and fastconv.models meet a user's code: subclasses with their own forward, hooks,
forwards that .view() a feature map, several inputs. Each case computes what the model computes
in eval mode (or fails as eager fails); each failed on the code before these checks (silently
wrong, or a crash where eager runs)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import fastconv

from tests.models.test_models import TOL, image, randomize_bn, tv_model
from tests.utils import rel_err


def _bn(c, seed=0):
    bn = nn.BatchNorm2d(c)
    randomize_bn(bn, seed)
    return bn


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's pattern: a BatchNorm2d subclass that applies its activation in its own forward."""

    def __init__(self, num_features, *args, **kwargs):
        super().__init__(num_features, *args, **kwargs)

    def forward(self, x):
        return F.relu(super().forward(x))


class MaxPool2dSame(nn.MaxPool2d):
    """timm's "same"-padding pool: pads in its own forward, so the output is larger than the plain pool's."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size, self.stride
        ph, pw = max((-(-ih // s) - 1) * s + k - ih, 0), max((-(-iw // s) - 1) * s + k - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, 0, self.dilation, self.ceil_mode)


class ConvBNTwice(nn.Sequential):
    """A Sequential subclass whose forward is not a chain."""

    def forward(self, x):
        return self[1](self[0](x)) + self[0](x)


def _check(model, x, **kwargs):
    model = model.eval()
    with torch.no_grad():
        want = model(x)
        converted = fastconv.convert(model, **kwargs)
        for _ in range(2):  # the full path, then the fast path's replay
            got = converted(x)
            assert got.shape == want.shape
            assert rel_err(got, want) <= TOL
    return converted


def test_batchnorm_subclass_with_its_own_forward_is_not_folded():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 12, 12)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8), nn.Conv2d(8, 8, 3, padding=1))
    randomize_bn(seq)
    converted = _check(seq, x)
    assert isinstance(converted[1], BatchNormAct2d)


def test_max_pool_subclass_with_its_own_forward_is_not_replaced():
    torch.manual_seed(0)
    converted = _check(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), MaxPool2dSame(3, 2)), torch.randn(1, 3, 31, 31))
    assert isinstance(converted[1], MaxPool2dSame)


def test_resnet_with_a_batchnorm_act_norm_layer():
    """torchvision's norm_layer argument with an activating BN: the fused blocks folded it as a
    plain BN (0.55 off), in convert() and in fastconv.models' eval path alike."""
    ref = tv_model("resnet18", norm_layer=BatchNormAct2d)
    own = fastconv.models.resnet18(norm_layer=BatchNormAct2d)
    own.load_state_dict(ref.state_dict())
    own.eval()
    x = image(n=1, size=64, seed=3)
    with torch.no_grad():
        want = ref(x)
        for model in (fastconv.convert(ref), own):
            assert rel_err(model(x), want) <= TOL


def test_sequential_subclass_with_its_own_forward_is_not_fused_as_a_chain():
    torch.manual_seed(0)
    _check(ConvBNTwice(nn.Conv2d(3, 3, 3, padding=1), _bn(3)), torch.randn(1, 3, 10, 10))


def test_batchnorm_that_does_not_match_the_conv_fails_as_in_eager():
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(1)).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match="running_mean"):
        seq(x)
    with pytest.raises(RuntimeError, match="running_mean"):
        fastconv.convert(seq)(x)


# ---------------------------------------------------------------------------------------------
# hooks: a module with hooks is kept (a fused replacement would silently drop them)


def test_hooks_that_change_values_still_apply():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), _bn(8, 1),
                        nn.ReLU(), nn.MaxPool2d(2))
    seq[0].register_forward_pre_hook(lambda m, args: (args[0].clamp(-0.5, 0.5),))
    seq[4].register_forward_hook(lambda m, args, out: out * 3)
    seq[6].register_forward_hook(lambda m, args, out: out - 1)
    _check(seq, torch.randn(1, 3, 12, 12))


def test_hooks_on_torchvision_blocks_and_their_layers_fire():
    ref = tv_model("resnet18")
    names = ["conv1", "bn1", "maxpool", "layer1.0", "layer4.1.bn2", "layer4.1", "layer4", "avgpool"]
    fired = []
    for name in names:
        ref.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: fired.append(name))
    x = image(n=1, size=64, seed=5)
    with torch.no_grad():
        want = ref(x)
        expected = list(fired)
        converted = fastconv.convert(ref)
        fired.clear()
        got = converted(x)
    assert sorted(fired) == sorted(expected) == sorted(names)
    assert rel_err(got, want) <= TOL


def test_hooked_blocks_are_converted_layer_by_layer():
    """The hooked block stays itself (its hook runs), the blocks around it are fused whole."""
    ref = tv_model("resnet18")
    ref.layer2[0].register_forward_pre_hook(lambda m, args: (args[0] * 0.5,))
    x = image(n=1, size=64, seed=6)
    with torch.no_grad():
        want = ref(x)
        converted = fastconv.convert(ref)
        assert rel_err(converted(x), want) <= TOL
    assert type(converted.layer2[0]) is torchvision.models.resnet.BasicBlock
    assert isinstance(converted.layer2[0].conv1, fastconv.fused.FusedConv)
    assert isinstance(converted.layer2[1], fastconv.fused.FusedResidualBlock)


# ---------------------------------------------------------------------------------------------
# the default layout policy meets a forward that .view()s a feature map


class ViewNet(nn.Module):
    """Tutorial style: features, then x.view(N, -1), which needs contiguous NCHW."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.conv = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.conv(self.features(x))
        return self.fc(x.view(x.size(0), 16 * 4 * 4))


class StdConv2dView(nn.Conv2d):
    """BiT's weight-standardized conv: reshapes its weight with .view()."""

    def forward(self, x):
        w = self.weight.view(self.out_channels, -1)
        w = ((w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-5)).view_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_forward_that_views_a_feature_map_runs_under_the_default_layout():
    torch.manual_seed(0)
    model = ViewNet()
    converted = _check(model, torch.randn(2, 3, 16, 16))
    # the Sequential of torch.nn layers still runs channels_last inside; the model's own forward
    # meets the layout it would meet without fastconv
    layouts = []
    converted.features[3].register_forward_hook(
        lambda m, a, o: layouts.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        converted(torch.randn(2, 3, 16, 16))
    assert layouts == [True]


def test_modules_left_alone_keep_their_weight_layout():
    torch.manual_seed(0)
    model = nn.Sequential(StdConv2dView(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    converted = _check(model, torch.randn(1, 3, 10, 10))
    assert converted[0].weight.is_contiguous()
    assert converted[2].weight.is_contiguous(memory_format=torch.channels_last)  # a fused conv's: OHWI


# ---------------------------------------------------------------------------------------------
# convert(dtype=...) casts every floating tensor argument


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, img, other=None):
        if isinstance(img, (list, tuple)):
            img, other = img
        return self.a(img) + self.b(other)


@pytest.mark.parametrize("call", ["keywords", "positional", "list"])
def test_input_cast_takes_keywords_lists_and_several_tensors(call):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    converted = fastconv.convert(model, dtype=torch.float64, channels_last=True)
    with torch.no_grad():
        want = model.double()(x.double(), y.double())
        got = {"keywords": lambda: converted(img=x, other=y), "positional": lambda: converted(x, y),
               "list": lambda: converted([x, y])}[call]()
    assert got.dtype == torch.float64
    assert rel_err(got, want) <= 1e-10


def test_convert_rejects_a_channels_last_that_is_not_a_bool():
    with pytest.raises(TypeError, match="channels_last must be True, False or None"):
        fastconv.convert(nn.Conv2d(3, 4, 3), channels_last="yes")


def test_integer_max_pool_after_convert():
    """nn.MaxPool2d pools integer maps (masks); the drop-in layer and a converted pool do too."""
    mask = torch.randint(0, 5, (1, 2, 9, 9))
    want = F.max_pool2d(mask, 3, 2)
    assert torch.equal(fastconv.nn.MaxPool2d(3, 2)(mask), want)
    assert torch.equal(fastconv.convert(nn.Sequential(nn.MaxPool2d(3, 2)))(mask), want)


# ---------------------------------------------------------------------------------------------
# the converted model's lifecycle


def test_converted_model_cast_back_to_float_takes_float_inputs():
    """convert(dtype=bf16) then .float(): the input cast stayed bf16 against fp32 weights."""
    ref = tv_model("resnet18")
    converted = fastconv.convert(ref, dtype=torch.bfloat16).float()
    x = image(n=1, size=32, seed=3)
    with torch.no_grad():
        y = converted(x)
    assert y.dtype == torch.float32
    assert rel_err(y, ref(x)) <= 3e-2  # (weights rounded to bfloat16 by the first conversion stay rounded)
    assert converted.to(torch.float64)(x).dtype == torch.float64


@pytest.mark.parametrize("build", ["fastconv.models", "convert"])
def test_googlenet_on_the_meta_device(build):
    """Shape inference on meta: the grouped 1×1 asked torch.is_autocast_enabled("meta"), which raises."""
    with torch.device("meta"):
        model = (fastconv.models.googlenet(init_weights=False) if build == "fastconv.models"
                 else fastconv.convert(torchvision.models.googlenet(init_weights=False, aux_logits=False).eval()))
    model.eval()
    with torch.no_grad():
        y = model(torch.empty(2, 3, 64, 64, device="meta"))
    assert y.shape == (2, 1000) and y.device.type == "meta"


def test_converted_model_warns_in_train_mode():
    """A converted model put in train mode computed neither mode's function, silently (BatchNorm
    folded, Dropout on) and its conv weights, buffers, never train: said now."""
    converted = fastconv.convert(tv_model("vgg11_bn"))
    with pytest.warns(UserWarning, match="inference-only: its BatchNorm is folded"):
        converted.train()
    converted.eval()  # (no warning: eval is what it is for)


class XceptionBlock(nn.Module):
    """A block of its own whose body opens with an in-place ReLU before its skip adds the input."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1), _bn(4), nn.ReLU(),
                                  nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, x):
        return self.body(x) + x


def test_in_place_first_layer_of_a_channels_last_part_still_reaches_the_caller():
    """The layout hook handed `body` a channels_last copy of x: its in-place ReLU changed the copy,
    and the skip added the raw x (0.25 off)."""
    torch.manual_seed(0)
    _check(XceptionBlock(), torch.randn(2, 4, 8, 8))


def test_module_list_parts_run_channels_last():
    """A ModuleList is never called: the layout hooks went on it and never ran."""
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                                      nn.Conv2d(4, 4, 3, padding=1)) for _ in range(2))

        def forward(self, x):
            for block in self.blocks:
                x = block(x).view(x.shape)
            return x

    torch.manual_seed(0)
    converted = _check(Blocks(), torch.randn(1, 4, 6, 6))
    seen = []
    for block in converted.blocks:
        block[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        converted(torch.randn(1, 4, 6, 6))
    assert seen == [True, True]


def test_fastconv_model_inside_a_model_of_ones_own():
    """convert() marked only a root fastconv.models model as fused: nested, its input check looked
    for an nn.Conv2d the conversion had replaced ("model without a conv")."""
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = fastconv.models.resnet18(num_classes=8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.backbone(x))

    torch.manual_seed(0)
    _check(Wrapper(), image(n=1, size=32, seed=1))


def test_fastconv_model_built_and_loaded_under_inference_mode():
    """Parameters made under torch.inference_mode (the serving pattern: build or torch.load in
    the block) have no version counter: every eval call raised; then, keyed without it, a
    load_state_dict into them (same memory) kept the fused copy of the old weights (0.6 off)."""
    a, b = tv_model("resnet18"), torchvision.models.resnet18()
    randomize_bn(b, seed=3)
    b.eval()
    x = image(n=1, size=32, seed=4)
    with torch.inference_mode():
        model = fastconv.models.resnet18()
        model.load_state_dict(a.state_dict())
        model.eval()
        assert rel_err(model(x), a(x)) <= TOL
        model.load_state_dict(b.state_dict())
        assert rel_err(model(x), b(x)) <= TOL
    with torch.no_grad():
        assert rel_err(model(x), b(x)) <= TOL


def test_converted_checkpoints_load_whatever_the_options():
    """convert(dtype=...) / channels_last=True wrapped the model and prefixed every key with
    "model.": a checkpoint of convert(m) did not load into convert(m, dtype=...), and back."""
    ref = tv_model("resnet18")
    plain, wrapped = fastconv.convert(ref), fastconv.convert(ref, dtype=torch.float64, channels_last=True)
    assert list(plain.state_dict()) == list(wrapped.state_dict())
    other_tv = tv_model("resnet18")
    randomize_bn(other_tv, seed=7)
    other = fastconv.convert(other_tv)
    wrapped.load_state_dict(other.state_dict())
    x = image(n=1, size=32, seed=1)
    with torch.no_grad():
        assert rel_err(wrapped(x), other(x)) <= 1e-6
    plain.load_state_dict(wrapped.state_dict())
    import io

    buffer = io.BytesIO()
    torch.save(wrapped, buffer)  # (the state-dict hooks pickle with the model)
    buffer.seek(0)
    assert list(torch.load(buffer, weights_only=False).state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("strict", [True, False])
def test_loading_an_unconverted_checkpoint_into_a_converted_model_is_refused(strict):
    """A torchvision checkpoint into a converted ResNet: PyTorch's 4,455-character key list, and
    with strict=False the raw conv weights loaded into the folded ones silently (2.4 off)."""
    converted = fastconv.convert(tv_model("resnet18"))
    with pytest.raises(RuntimeError, match="BatchNorm layers folded into the convs.*convert it again"):
        converted.load_state_dict(torchvision.models.resnet18().state_dict(), strict=strict)


def _randomize_frozen_bn(model, seed=0):
    from torchvision.ops.misc import FrozenBatchNorm2d

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                for name, lo in (("running_mean", -0.5), ("running_var", 0.5), ("weight", 0.5), ("bias", -0.5)):
                    buf = getattr(m, name)
                    buf.copy_(torch.rand(buf.shape, generator=gen) + lo)
    return model


def _count(model, name):
    return sum(type(m).__name__ == name for m in model.modules())


def test_frozen_batchnorm_folds():
    """torchvision's detection and segmentation builders put FrozenBatchNorm2d in a pretrained
    backbone: it folds as BatchNorm2d does (it was kept, and no ResNet block fused)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = _randomize_frozen_bn(torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)).eval()
    converted = fastconv.convert(model)
    assert _count(converted, "FrozenBatchNorm2d") == 0 and _count(converted, "FusedResidualBlock") == 8
    x = image(1, 48)
    with torch.no_grad():
        assert rel_err(converted(x), model(x)) < TOL


def test_frozen_batchnorm_detection_backbone():
    """A detection backbone (ResNet + FPN, dict of feature maps out) with FrozenBatchNorm2d."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = _randomize_frozen_bn(resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                                     norm_layer=FrozenBatchNorm2d, trainable_layers=3)).eval()
    converted = fastconv.convert(model)
    assert _count(converted, "FrozenBatchNorm2d") == 0
    _same_feature_maps(model, converted)


def _same_feature_maps(model, converted):
    """A backbone's dict of feature maps: the same keys in order, each within TOL."""
    x = image(1, 64)
    with torch.no_grad():
        want, got = model(x), converted(x)
    assert list(got) == list(want)
    for k in want:
        assert rel_err(got[k], want[k]) < TOL, k


def test_frozen_batchnorm_subclass_with_its_own_forward_is_kept():
    from torchvision.ops.misc import FrozenBatchNorm2d

    class FrozenBNAct(FrozenBatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 1.0

    model = _randomize_frozen_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), FrozenBNAct(8), nn.ReLU(),
                                               nn.Conv2d(8, 8, 3), FrozenBatchNorm2d(8))).eval()
    converted = fastconv.convert(model)
    assert _count(converted, "FrozenBNAct") == 1 and _count(converted, "FrozenBatchNorm2d") == 0
    x = image(2, 12)
    with torch.no_grad():
        assert rel_err(converted(x), model(x)) < TOL


@pytest.mark.parametrize("returned", [{"relu": "r", "layer2": "x"}, {"bn1": "b", "layer1": "x"},
                                      {"conv1": "c", "maxpool": "m"}, {"conv1": "c", "bn1": "b", "relu": "r"}])
def test_intermediate_layer_getter_chain_keeps_returned_outputs(returned):
    """torchvision's IntermediateLayerGetter runs its children as a chain: conv→BN→ReLU fuse there
    too, but never across a child whose output it hands out."""
    from torchvision.models._utils import IntermediateLayerGetter

    model = tv_model("resnet18")
    getter = IntermediateLayerGetter(model, return_layers=dict(returned)).eval()
    converted = fastconv.convert(getter)
    fused_stem = "conv1" not in returned and "bn1" not in returned
    assert (_count(converted, "BatchNorm2d") == 0) == ("conv1" not in returned)
    assert (type(converted.relu).__name__ == "Identity") == fused_stem
    _same_feature_maps(getter, converted)
