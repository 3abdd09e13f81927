"""fastconv.convert: torchvision models and a user's own CNN as fused inference models."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

import fastconv

from tests.models.test_models import BUILDERS, TOL, image, randomize_bn, tv_model
from tests.utils import rel_err

FAMILIES = ["alexnet", "vgg11_bn", "googlenet", "resnet50", "densenet121"]

# aten ops allowed to remain in a converted model's eval forward: pooling heads, flatten, linear,
# elementwise, and the bookkeeping (allocation, views, copies into buffers) around fastconv ops.
ALLOWED_ATEN = {
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty_strided", "aten::zeros", "aten::resize_",
    "aten::slice", "aten::narrow", "aten::as_strided", "aten::as_strided_", "aten::view", "aten::reshape", "aten::_reshape_alias",
    "aten::flatten", "aten::_unsafe_view", "aten::squeeze", "aten::unsqueeze", "aten::expand", "aten::t", "aten::transpose",
    "aten::permute", "aten::contiguous", "aten::clone", "aten::copy_", "aten::to", "aten::_to_copy",
    "aten::detach", "aten::alias", "aten::lift_fresh", "aten::select", "aten::stride", "aten::size",
    "aten::linear", "aten::addmm", "aten::mm", "aten::matmul", "aten::bmm",
    "aten::adaptive_avg_pool2d", "aten::_adaptive_avg_pool2d", "aten::avg_pool2d", "aten::mean", "aten::sum",
    "aten::relu", "aten::relu_", "aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::clamp_min",
    "aten::clamp_min_", "aten::threshold", "aten::dropout", "aten::feature_dropout", "aten::fill_",
    "aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training",
    "aten::result_type", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense",
    "aten::resolve_conj", "aten::resolve_neg", "aten::div", "aten::div_", "aten::zero_",
    # the first call's weight preparation: the Winograd form's check for NaN/Inf (isfinite's parts)
    "aten::isfinite", "aten::all", "aten::abs", "aten::eq", "aten::ne",
}


def _profile_ops(model, x):
    with fastconv.use_backend("cpu"), torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return [e.key for e in prof.key_averages()], {e.key: e.count for e in prof.key_averages()}


@pytest.mark.parametrize("name", BUILDERS)
def test_convert_torchvision_matches_eval(name):
    ref = tv_model(name)
    converted = fastconv.convert(ref)
    x = image(seed=11)
    with torch.inference_mode():
        assert rel_err(converted(x), ref(x)) <= TOL


@pytest.mark.parametrize("name", FAMILIES)
def test_converted_forward_runs_only_fastconv_kernels(name):
    converted = fastconv.convert(tv_model(name))
    keys, counts = _profile_ops(converted, image(n=1, size=64, seed=12))
    assert any(k.startswith("fastconv::") for k in keys), keys
    for banned in ("aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
                   "aten::cat", "aten::max_pool2d", "aten::max_pool2d_with_indices"):
        assert banned not in keys, f"{name}: {banned} ran in the converted forward"
    assert counts.get("aten::batch_norm", 0) == (1 if name.startswith("densenet") else 0)
    leftover = {k for k in keys if k.startswith("aten::") and k not in ALLOWED_ATEN}
    assert not leftover, f"{name}: unexpected aten ops {sorted(leftover)}"


@pytest.mark.parametrize("name", FAMILIES)
def test_fastconv_model_eval_runs_only_fastconv_kernels(name):
    ref = tv_model(name)
    model = getattr(fastconv.models, name)(**({"init_weights": False} if name == "googlenet" else {}))
    model.load_state_dict(ref.state_dict())
    x = image(n=1, size=64, seed=13)
    with torch.inference_mode():
        model.eval()(x)  # the first eval call folds the weights (a torch.cat of GoogLeNet's 1x1 weights)
    keys, counts = _profile_ops(model, x)
    assert "aten::cat" not in keys and "aten::convolution" not in keys
    assert counts.get("aten::batch_norm", 0) == (1 if name.startswith("densenet") else 0)


def test_convert_leaves_original_untouched():
    ref = tv_model("resnet18")
    before = copy.deepcopy(ref.state_dict())
    modules_before = [type(m) for m in ref.modules()]
    fastconv.convert(ref)
    assert [type(m) for m in ref.modules()] == modules_before
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k])


def test_convert_inplace_modifies_the_model():
    ref = tv_model("resnet18")
    converted = fastconv.convert(ref, inplace=True)
    assert converted is ref
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ref.modules())


def test_convert_fastconv_model():
    ref = tv_model("densenet121")
    model = fastconv.models.densenet121()
    model.load_state_dict(ref.state_dict())
    converted = fastconv.convert(model)
    x = image(n=1, size=64, seed=14)
    with torch.inference_mode():
        assert rel_err(converted(x), ref(x)) <= TOL


class UserCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32),
            nn.Sequential(nn.Conv2d(32, 24, (3, 1), padding=(1, 0), groups=8), nn.ReLU()),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def test_user_sequential_cnn_converts_and_matches():
    torch.manual_seed(0)
    model = UserCNN()
    randomize_bn(model)
    model.eval()
    converted = fastconv.convert(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d)) for m in converted.modules())
    x = torch.randn(3, 3, 33, 31)
    with torch.inference_mode():
        assert rel_err(converted(x), model(x)) <= TOL
    keys, _ = _profile_ops(converted, x)
    assert "aten::convolution" not in keys and "aten::max_pool2d" not in keys


def test_convert_dtype_and_channels_last():
    ref = tv_model("resnet18")
    converted = fastconv.convert(ref, dtype=torch.float64, channels_last=True)
    x = image(n=1, size=64, seed=15)
    with torch.inference_mode():
        y = converted(x)
        assert y.dtype == torch.float64
        assert rel_err(y, ref.double()(x.double())) <= 1e-10


@pytest.mark.parametrize("dtype,backend", [(torch.bfloat16, "torch"), (torch.bfloat16, "auto"),
                                           (torch.float16, "auto")])
@pytest.mark.parametrize("name", FAMILIES)
def test_convert_16_bit_channels_last_on_the_cpu(name, dtype, backend):
    """A user's 16-bit CPU inference: convert(dtype=..., channels_last=True) against the float32
    model, no less accurate than the same model cast to that dtype in eager PyTorch (1.5x its error,
    or 1e-2), every logit written (no NaN), argmax agreeing where the float32 logits are not nearly
    tied. On an AVX512-BF16/AMX CPU bf16 convs run on oneDNN's bf16 kernel (the ``torch`` tactic)."""
    ref = tv_model(name)
    x = image(n=2, size=64, seed=16)
    converted = fastconv.convert(ref, dtype=dtype, channels_last=True)
    eager16 = copy.deepcopy(ref).to(dtype=dtype, memory_format=torch.channels_last)
    x16 = x.to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), fastconv.use_backend(backend):
        y32, y = ref(x), converted(x16)
        eager_err = rel_err(eager16(x16), y32)
    assert y.dtype == dtype and not y.isnan().any()
    err = rel_err(y, y32)
    assert err <= max(1.5 * eager_err, 1e-2), (err, eager_err)
    top2 = y32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 4 * err * y32.abs().max(dim=1).values
    assert (y.float().argmax(1) == y32.argmax(1))[clear].all()


def test_convert_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        fastconv.convert(lambda x: x)
    with pytest.raises(TypeError, match="floating dtype"):
        fastconv.convert(nn.Conv2d(3, 3, 1), dtype=torch.int8)


def test_cpu_default_layout_is_channels_last_inside_and_the_input_layout_outside():
    """channels_last=None: CPU activations run channels_last inside the converted model; a 4-D
    output comes back in the layout it was given; True/False keep their meaning."""
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1)).eval()
    randomize_bn(feats)
    x = torch.randn(2, 3, 12, 10)
    seen = []
    default = fastconv.convert(feats)
    default[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.inference_mode():
        ref = feats(x)
        y = default(x)
        assert seen == [True] and y.is_contiguous() and rel_err(y, ref) <= TOL
        y_cl = default(x.contiguous(memory_format=torch.channels_last))
        assert y_cl.is_contiguous(memory_format=torch.channels_last) and rel_err(y_cl, ref) <= TOL
        keep = fastconv.convert(feats, channels_last=False)
        keep[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
        assert keep(x).is_contiguous() and seen[-1] is False
        assert fastconv.convert(feats, channels_last=True)(x).is_contiguous(memory_format=torch.channels_last)
    # a forward that raises leaves no state behind: the next call still restores the layout
    with pytest.raises((RuntimeError, ValueError)), torch.inference_mode():
        default(torch.randn(2, 5, 12, 10))
    with torch.inference_mode():
        assert default(x).is_contiguous()
    assert "0.weight" in default.state_dict()  # hooks, not a wrapper module: the keys are the model's


def test_converted_model_pickles_and_copies_after_use():
    """The fast path's remembered plans (holding torch.memory_format, which does not pickle) are a
    cache: torch.save / deepcopy of a used model work and the copy recomputes them."""
    import io

    ref = tv_model("resnet18")
    converted = fastconv.convert(ref)
    x = image(n=1, size=64, seed=16)
    with torch.inference_mode():
        y = converted(x)
        buf = io.BytesIO()
        torch.save(converted, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        # (close, not bitwise: a copy made under inference_mode holds inference tensors, whose
        # transformed weights are not cached, so its 3x3 convs may take another kernel)
        torch.testing.assert_close(loaded(x), y, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(copy.deepcopy(converted)(x), y, rtol=1e-5, atol=1e-5)


def test_conv_weights_are_stored_channels_last_unless_layout_is_kept():
    """oneDNN reorders an NCHW weight on every call with channels_last activations: the converted
    model stores its k>1 conv weights channels_last (same values and keys); channels_last=False
    keeps them as they were."""
    ref = tv_model("resnet18")
    w_ref = ref.state_dict()
    for cl in (None, True):
        converted = fastconv.convert(ref, channels_last=cl)
        sd = (converted.model if cl else converted).state_dict()  # True: behind the input-cast wrapper
        assert sd["layer1.0.convs.0.weight"].is_contiguous(memory_format=torch.channels_last)
        assert sd["conv1.weight"].is_contiguous(memory_format=torch.channels_last)
    kept = fastconv.convert(ref, channels_last=False).state_dict()
    assert kept["conv1.weight"].is_contiguous() and not kept["conv1.weight"].is_contiguous(
        memory_format=torch.channels_last)
    x = image(n=1, size=64, seed=17)
    with torch.inference_mode():
        assert rel_err(fastconv.convert(ref)(x), ref(x)) <= TOL
    assert all(torch.equal(w_ref[k], v) for k, v in ref.state_dict().items())  # the original untouched


# ---------------------------------------------------------------------------------------------
# what convert() must not assume: a layer's ReLU, a subclass's forward, a class name


def _bn(c):
    bn = nn.BatchNorm2d(c)
    randomize_bn(bn)
    return bn


def _matches_eager(model, shape=(2, 3, 10, 10)):
    model = model.eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(x)
        converted = fastconv.convert(model)
        for _ in range(2):  # the full path, then the fast path's replay
            assert rel_err(converted(x), ref) <= TOL
    return converted


def test_convert_keeps_a_drop_in_conv2d_relu_relu():
    """fastconv.nn.Conv2dReLU applies its ReLU itself: converted, it kept relu=False (negative
    outputs); a BatchNorm after it cannot be folded (it follows the ReLU)."""
    torch.manual_seed(0)
    seq = nn.Sequential(fastconv.nn.Conv2dReLU(3, 8, 3, padding=1), _bn(8), nn.ReLU(),
                        fastconv.nn.Conv2dReLU(8, 8, 3, padding=1, relu=False), _bn(8), nn.ReLU())
    converted = _matches_eager(seq)
    fused = [m for m in converted.modules() if isinstance(m, fastconv.fused.FusedConv)]
    assert [m.relu for m in fused] == [True, True]  # the second one took its BN and ReLU in


def test_convert_leaves_conv_subclasses_with_their_own_forward():
    class ScaledConv(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x) - 1

    torch.manual_seed(0)
    converted = _matches_eager(nn.Sequential(ScaledConv(3, 8, 3, padding=1), _bn(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    assert isinstance(converted[0], ScaledConv)


class BasicBlock(nn.Module):
    """The CIFAR ResNets' block (a ``shortcut``, no ``downsample``): named like torchvision's."""

    def __init__(self, c, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn1 = _bn(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = _bn(c)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class Bottleneck(nn.Module):
    """torchvision's attribute names, another forward (no shortcut, tanh at the end)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 1, bias=False), _bn(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c)
        self.conv3, self.bn3 = nn.Conv2d(c, c, 1, bias=False), _bn(c)
        self.relu, self.downsample, self.stride = nn.ReLU(), None, 1

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return torch.tanh(self.bn3(self.conv3(self.relu(self.bn2(self.conv2(y))))))


def test_convert_does_not_match_blocks_by_class_name_alone():
    """Same-named classes from elsewhere used to be rebuilt as torchvision's blocks: a crash (no
    ``downsample``) or, with torchvision's attributes and another forward, wrong values."""
    torch.manual_seed(0)
    _matches_eager(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8), Bottleneck(8)))
    converted = fastconv.convert(__import__("torchvision").models.resnet18().eval())
    assert any(isinstance(m, fastconv.fused.FusedResidualBlock) for m in converted.modules())


@pytest.mark.parametrize("name", ["densenet121", "googlenet"])
def test_input_gradient_through_frozen_models(name):
    """A frozen eval model's input gradient (saliency maps, adversarial examples): the fused
    DenseNet and Inception blocks write into one buffer through out=, which autograd cannot
    follow; fastconv.models took that fused copy and raised, convert()'s model raised too (naming
    an out= the user never passed). Both now give torchvision's input gradient."""
    ref = tv_model(name).requires_grad_(False)
    kwargs = {"init_weights": False} if name == "googlenet" else {}
    own = getattr(fastconv.models, name)(**kwargs)
    own.load_state_dict(ref.state_dict())
    own.eval().requires_grad_(False)
    models = {"fastconv.models": own, "convert": fastconv.convert(ref)}
    x0 = image(n=1, size=64, seed=21)

    def input_grad(model):
        x = x0.clone().to(next(model.parameters(), next(model.buffers())).dtype).requires_grad_()
        model(x)[0, :7].sum().backward()
        return x.grad

    # against float64; GoogLeNet's gradient (~1e-14 at this init) is 1.4% off in torchvision's own
    # float32, so the bound is a multiple of that
    want = input_grad(copy.deepcopy(ref).double())
    bound = max(1e-4, 3 * rel_err(input_grad(ref), want))
    for what, model in models.items():
        for _ in range(2):  # the replayed calls too
            assert rel_err(input_grad(model), want) <= bound, what
        with torch.no_grad():
            assert rel_err(model(x0), ref(x0)) <= TOL, what


# ---------------------------------------------------------------------------------------------
# a torchvision model edited by its user: the fused blocks take only what they can fold

class StdConv2d(nn.Conv2d):
    """A weight-standardized conv: a Conv2d subclass with its own forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def _std_conv(conv: nn.Conv2d) -> StdConv2d:
    new = StdConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    new.load_state_dict(conv.state_dict())
    return new


def _edit(name, edit):
    model = tv_model(name)
    edit(model)
    return model


def _reflect_stem(m):
    m.conv1.padding_mode = "reflect"


def _avg_branch4(m):
    m.inception3a.branch4[0] = nn.AvgPool2d(3, 1, 1)


EDITS = {
    "resnet18 block relu=SiLU": ("resnet18", lambda m: setattr(m.layer1[0], "relu", nn.SiLU())),
    "resnet18 stem relu=SiLU": ("resnet18", lambda m: setattr(m, "relu", nn.SiLU())),
    "resnet18 block StdConv2d": ("resnet18", lambda m: setattr(m.layer1[0], "conv2", _std_conv(m.layer1[0].conv2))),
    "resnet18 stem StdConv2d": ("resnet18", lambda m: setattr(m, "conv1", _std_conv(m.conv1))),
    "resnet18 downsample StdConv2d": ("resnet18", lambda m: m.layer2[0].downsample.__setitem__(
        0, _std_conv(m.layer2[0].downsample[0]))),
    "resnet18 stem reflect padding": ("resnet18", _reflect_stem),
    "densenet121 relu1=SiLU": ("densenet121", lambda m: setattr(m.features.denseblock1.denselayer1, "relu1", nn.SiLU())),
    "densenet121 transition relu=SiLU": ("densenet121", lambda m: setattr(m.features.transition1, "relu", nn.SiLU())),
    "densenet121 conv2 StdConv2d": ("densenet121", lambda m: setattr(
        m.features.denseblock1.denselayer2, "conv2", _std_conv(m.features.denseblock1.denselayer2.conv2))),
    "googlenet branch4 AvgPool2d": ("googlenet", _avg_branch4),
    "googlenet BasicConv2d StdConv2d": ("googlenet", lambda m: setattr(
        m.inception3a.branch2[1], "conv", _std_conv(m.inception3a.branch2[1].conv))),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_torchvision_model_converts_to_its_own_function(edit):
    """An activation, conv or pool a user swapped into a torchvision block: the fused blocks
    assumed nn.ReLU and nn.Conv2d (SiLU ignored: 0.33 off; a weight-standardized conv folded as
    a plain one: 0.9 off) or raised (a reflect-padded stem, an AvgPool2d branch). The block is
    now converted layer by layer under its own forward; fastconv.models' eval path alike."""
    name, change = EDITS[edit]
    ref = _edit(name, change)
    x = image(n=1, size=64, seed=4)
    kwargs = {"init_weights": False} if name == "googlenet" else {}
    own = getattr(fastconv.models, name)(**kwargs)
    own.load_state_dict(tv_model(name).state_dict())
    change(own)
    own.load_state_dict(ref.state_dict())
    own.eval()
    with torch.no_grad():
        want = ref(x)
        converted = fastconv.convert(ref)
        for model in (converted, own):
            for _ in range(2):
                assert rel_err(model(x), want) <= TOL
        if name == "googlenet":  # (its output at this init hardly depends on one branch: the block itself)
            f = torch.randn(1, 192, 8, 8, generator=torch.Generator().manual_seed(9))
            for block in (converted.inception3a, own._fused_model().inception3a):
                assert rel_err(block(f), ref.inception3a(f)) <= TOL


def test_convert_inplace_sequential_root_is_the_same_object():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = seq(x)
        converted = fastconv.convert(seq, inplace=True)
        assert converted is seq
        assert isinstance(seq[0], fastconv.fused.FusedConv)
        assert rel_err(seq(x), want) <= TOL
        seq16 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5)).eval()
        wrapped = fastconv.convert(seq16, dtype=torch.bfloat16, inplace=True)
        # the user's Sequential holds the converted layers, all in bfloat16 (the wrapper casts the input)
        assert isinstance(seq16[0], fastconv.fused.FusedConv)
        assert {t.dtype for t in list(seq16.parameters()) + list(seq16.buffers())} == {torch.bfloat16}
        assert wrapped(x).dtype == torch.bfloat16


@pytest.mark.parametrize("first,second", [(torch.bfloat16, torch.float32), (torch.float64, torch.float32),
                                          (torch.bfloat16, None)])
def test_convert_a_converted_model_to_another_dtype(first, second):
    """The inner input cast kept the first dtype: every call of the re-converted model failed."""
    ref = tv_model("resnet18")
    x = image(n=1, size=64, seed=8)
    twice = fastconv.convert(fastconv.convert(ref, dtype=first), dtype=second)
    wrapped = fastconv.convert(nn.Sequential(fastconv.convert(ref, dtype=first)), dtype=second)
    with torch.no_grad():
        want = ref(x)
        for model in (twice, wrapped):
            y = model(x)
            assert y.dtype == (second or first)
            # (weights rounded to bfloat16 by the first conversion stay rounded)
            assert rel_err(y, want) <= (3e-2 if torch.bfloat16 in (first, second) else TOL)


def test_jit_trace_of_converted_googlenet():
    """torch.jit.trace records no op whose outputs are a list of mutated tensors: the traced
    Inception left its grouped 1×1's outputs unwritten (NaN or 1e36 off, no error)."""
    ref = tv_model("googlenet")
    converted = fastconv.convert(ref)
    x = image(n=1, size=64, seed=2)
    f = torch.randn(1, 192, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        traced = torch.jit.trace(converted, x, check_trace=False)
        block = torch.jit.trace(converted.inception3a, f, check_trace=False)
        assert rel_err(traced(x), ref(x)) <= TOL
        assert rel_err(block(f), ref.inception3a(f)) <= TOL


def test_sequential_relu_subclass_is_not_fused():
    """Sequential fusion took any nn.ReLU subclass as the epilogue's ReLU (isinstance), while the
    blocks required nn.ReLU itself: one rule now, so a subclass with its own forward runs it."""
    class ShiftedReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x) - 0.5

    torch.manual_seed(0)
    converted = _matches_eager(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _bn(8), ShiftedReLU(), nn.Conv2d(8, 4, 1)))
    assert isinstance(converted[2], ShiftedReLU)
