"""torch.utils.flop_counter.FlopCounterMode counts fastconv's ops as PyTorch counts its own: a
converted model reports its torchvision twin's FLOPs, including after the fast path has made
its plans (fastconv/ops/_flops.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import fastconv


def _flops(fn, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def _cases():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 9, 9, generator=g)
    w = torch.randn(6, 4, 3, 3, generator=g)  # groups 2
    w1 = torch.randn(5, 8, generator=g)
    b = torch.randn(6, generator=g)
    buf = torch.empty(2, 16, 5, 5)
    return [
        ("conv2d_relu", lambda: fastconv.conv2d_relu(x, w, b, stride=2, padding=1, groups=2),
         lambda: F.relu(F.conv2d(x, w, b, stride=2, padding=1, groups=2))),
        ("conv2d_relu out=", lambda: fastconv.conv2d_relu(x, w, b, stride=2, padding=1, groups=2, out=buf[:, 3:9]),
         lambda: F.conv2d(x, w, b, stride=2, padding=1, groups=2)),
        ("conv1x1", lambda: fastconv.conv1x1(x, w1, stride=2, in_scale=x[0, :, 0, 0], in_shift=x[1, :, 0, 0]),
         lambda: F.conv2d(x, w1[:, :, None, None], stride=2)),
        ("conv1x1 out=", lambda: fastconv.conv1x1(x, w1, stride=2, out=buf[:, :5]),
         lambda: F.conv2d(x, w1[:, :, None, None], stride=2)),
        ("conv1x1_multi", lambda: fastconv.ops.conv1x1_multi(x, [w1[:2], w1[2:]], outs=[buf[:, 10:12], None], stride=2),
         lambda: F.conv2d(x, w1[:, :, None, None], stride=2)),
        ("max_pool2d", lambda: fastconv.max_pool2d(x, 3, 2), lambda: F.max_pool2d(x, 3, 2)),
        ("dense_concat", lambda: fastconv.dense_concat([x, x[:, :3] + 1]), lambda: torch.cat([x, x[:, :3] + 1], 1)),
    ]


@pytest.mark.parametrize("index", range(len(_cases())))
def test_op_counts_as_pytorch(index):
    name, ours, theirs = _cases()[index]
    want = _flops(theirs)
    assert _flops(ours) == want, name
    ours(), ours()  # plans made: a replay must not hide the op from the counter
    assert _flops(ours) == want, name + " (after the fast path's plan)"


def test_conv_counts_are_not_zero():
    """The formulas are what counts: without them the counter reports 0 for these ops."""
    assert _flops(_cases()[0][1]) == 2 * 2 * 6 * 5 * 5 * 4 * 3 * 3


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "googlenet", "alexnet"])
def test_converted_model_counts_its_twins_flops(arch):
    kwargs = {"aux_logits": False, "init_weights": True} if arch == "googlenet" else {}
    tv = getattr(torchvision.models, arch)(**kwargs).eval()
    ours = getattr(fastconv.models, arch)(**kwargs).eval()
    converted = fastconv.convert(tv)
    x = torch.randn(1, 3, 64, 64)
    want = _flops(tv, x)
    for model in (converted, ours):
        with torch.no_grad():
            model(x), model(x)
        assert _flops(model, x) == want


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dispatch_mode_sees_the_public_op_after_plans():
    layer = fastconv.nn.Conv2dReLU(4, 6, 3, padding=1).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        layer(x), layer(x)
        assert layer.__dict__.get("_fastpath_plans")
        with _Recorder() as recorder:
            layer(x)
    assert "fastconv.conv2d_relu.default" in recorder.ops, recorder.ops
    assert not any(op.startswith("fastconv._") for op in recorder.ops), recorder.ops
