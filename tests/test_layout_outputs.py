"""convert()'s CPU layout policy (channels_last=None) on models that return containers: every 4-D
tensor in a dict, list, tuple or namedtuple output (nested too) comes back in the input's layout,
in a container of the same type, with the model's values."""
import collections

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models._utils import IntermediateLayerGetter

import fastconv

from tests.models.test_models import randomize_bn

Pair = collections.namedtuple("Pair", "logits features")  # module level: the converted model pickles


class Heads(nn.Module):
    """A small CNN returning its feature maps (4-D) and logits (2-D) packed as ``kind`` says. Its
    forward takes any layout, and says so: convert()'s default runs all of it channels_last."""

    fastconv_any_layout = True

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 5)
        self.last = None

    def forward(self, x):
        c1 = self.stem(x)
        c2 = self.body(c1)
        logits = self.fc(c2.mean((2, 3)))
        out = {
            "dict": lambda: {"c1": c1, "logits": logits, "c2": c2},
            "ordereddict": lambda: collections.OrderedDict([("c2", c2), ("c1", c1)]),
            "list": lambda: [c1, logits, c2],
            "tuple": lambda: (logits, c2),
            "namedtuple": lambda: Pair(logits, c2),
            "nested": lambda: {"maps": [c1, (c2, {"deep": c2})], "pair": Pair(logits, [c1]), "n": 3, "tag": "x"},
            "no_4d": lambda: (logits, "x"),
        }[self.kind]()
        self.last = out  # what the model itself returned, to check the hook leaves it alone
        return out


def _leaves(obj, path=()):
    """(path, value) for every non-container value, in order."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in _leaves(v, path + (k,))]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in _leaves(v, path + (i,))]
    return [(path, obj)]


def _same_structure(a, b):
    """The same container types (namedtuple and dict subclasses included) and keys in order."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same_structure(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _same_structure(u, v)


def _check(converted, ref, x, channels_last_in):
    with torch.inference_mode():
        expected = ref(x)
        got = converted(x)
    _same_structure(got, expected)
    n4 = 0
    for (path, g), (_, e) in zip(_leaves(got), _leaves(expected)):
        if not isinstance(g, torch.Tensor):
            assert g == e, path
            continue
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"{path}: {m}")
        if g.dim() == 4:
            n4 += 1
            if channels_last_in:
                assert g.is_contiguous(memory_format=torch.channels_last), path
            else:
                assert g.is_contiguous(), path
    return got, n4


KINDS = ["dict", "ordereddict", "list", "tuple", "namedtuple", "nested"]


@pytest.mark.parametrize("kind", KINDS)
def test_container_outputs_come_back_in_the_input_layout(kind):
    torch.manual_seed(0)
    ref = Heads(kind).eval()
    randomize_bn(ref)
    converted = fastconv.convert(ref)
    x = torch.randn(2, 3, 12, 10)
    got, n4 = _check(converted, ref, x, channels_last_in=False)
    assert n4 >= 1
    # the model ran channels_last inside: what it returned itself is untouched (the hook rebuilds
    # the containers, it does not write into them), and the caller gets a new container
    inner = [v for _, v in _leaves(converted.last) if isinstance(v, torch.Tensor) and v.dim() == 4]
    assert any(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in inner)
    assert got is not converted.last
    # a channels_last input gets channels_last outputs back
    _check(converted, ref, x.contiguous(memory_format=torch.channels_last), channels_last_in=True)


def test_output_without_4d_tensors_is_returned_as_is():
    """Nothing to restore: the hook returns None and the caller gets the model's own object."""
    ref = Heads("no_4d").eval()
    converted = fastconv.convert(ref)
    x = torch.randn(2, 3, 12, 10)
    got, n4 = _check(converted, ref, x, channels_last_in=False)
    assert n4 == 0 and got is converted.last


def test_intermediate_layer_getter_resnet18():
    """torchvision's backbone wrapper returns an OrderedDict of feature maps (the reported case:
    ``y["c5"].view(1, -1)`` failed on a channels_last c5)."""
    torch.manual_seed(0)
    ref = IntermediateLayerGetter(torchvision.models.resnet18().eval(), {"layer2": "c3", "layer4": "c5"}).eval()
    converted = fastconv.convert(ref)
    x = torch.randn(1, 3, 64, 64)
    got, n4 = _check(converted, ref, x, channels_last_in=False)
    assert type(got) is collections.OrderedDict and list(got) == ["c3", "c5"] and n4 == 2
    assert got["c5"].view(1, -1).shape == (1, 512 * 2 * 2)
    _check(converted, ref, x.contiguous(memory_format=torch.channels_last), channels_last_in=True)


def test_a_model_that_does_not_say_so_runs_its_own_forward_in_the_given_layout():
    """Without fastconv_any_layout a model's own forward (which may .view() a feature map) meets
    the input's layout; its Sequentials of torch.nn layers with two or more convs run channels_last."""
    class Plain(Heads):
        fastconv_any_layout = False

    torch.manual_seed(0)
    ref = Plain("tuple").eval()
    ref.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    randomize_bn(ref)
    converted = fastconv.convert(ref)
    seen = {}
    converted.stem.register_forward_hook(lambda m, a, o: seen.update(stem=o))
    converted.body[2].register_forward_pre_hook(lambda m, a: seen.update(body=a[0]))
    _check(converted, ref, torch.randn(2, 3, 12, 10), channels_last_in=False)
    assert seen["stem"].is_contiguous()  # one conv: not worth two layout copies
    assert seen["body"].is_contiguous(memory_format=torch.channels_last) and not seen["body"].is_contiguous()


@pytest.mark.parametrize("channels_last", [None, True])
def test_one_channel_images_run_channels_last_inside(channels_last):
    """An NCHW [N, 1, H, W] image is already channels_last-"contiguous", so .contiguous() left its
    strides NCHW and the whole converted model ran NCHW: it is restrided (same memory) on the way in,
    and the output comes back as eager's would."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1)).eval()
    randomize_bn(model)
    converted = fastconv.convert(model, channels_last=channels_last)
    inner = converted.model if channels_last else converted
    seen = []
    inner[3].register_forward_pre_hook(
        lambda m, a: seen.append(torch._prims_common.suggest_memory_format(a[0]) == torch.channels_last))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        y, want = converted(x), model(x)
    assert seen == [True]
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-5)
    if channels_last is None:  # handed back in the layout it was given, as eager's strides say
        assert torch._prims_common.suggest_memory_format(y) == torch._prims_common.suggest_memory_format(want)
