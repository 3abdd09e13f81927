"""What each family's design choice saves, counted on the model itself: the parameter arithmetic
of the seed notes (DESIGN.md; 3×3 stacks against one larger kernel, 1×1 reductions and
bottlenecks, the fully connected layers' share) as lines under ``python -m fastconv summary``.

Every count is of conv weights (biases and BatchNorm left out), taken from the layers the model
really has; the alternative is the same layers without the design choice.
"""
from __future__ import annotations

from typing import List

import torch.nn as nn


def _w(conv: nn.Conv2d) -> int:
    return conv.weight.numel()


def _ratio(have: int, without: int) -> str:
    return f"{have:,} conv weights against {without:,} ({have / without:.0%})"


def _vgg_stacks(model: nn.Module) -> List[str]:
    """Each stage's run of 3×3 convs between pools against one conv seeing the same field."""
    stages, run = [], []
    for m in list(model.features) + [None]:
        if isinstance(m, nn.Conv2d):
            run.append(m)
        elif (m is None or isinstance(m, nn.MaxPool2d)) and run:
            stages.append(run)
            run = []
    have = sum(_w(c) for s in stages for c in s)
    without = sum((2 * len(s) + 1) ** 2 * s[0].in_channels * s[-1].out_channels for s in stages)
    return [f"3×3 stacks: n stacked 3×3 convs see a (2n+1)×(2n+1) field; the {len(stages)} stages hold "
            f"{_ratio(have, without)} for one conv of that field per stage"]


def _fc_share(model: nn.Module) -> List[str]:
    fc = sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return [f"fully connected layers: {fc:,} of the {total:,} parameters ({fc / total:.0%})"]


def _inception_reductions(model: nn.Module) -> List[str]:
    have = without = paper_5x5 = tv_3x3 = 0
    modules = [m for m in model.modules() if type(m).__name__ == "Inception"]
    for inc in modules:
        for branch in (inc.branch2, inc.branch3):
            reduce, conv = branch[0].conv, branch[1].conv
            have += _w(reduce) + _w(conv)
            kh, kw = conv.kernel_size
            without += kh * kw * reduce.in_channels * conv.out_channels
        r = inc.branch3[1].conv
        tv_3x3 += _w(r)
        paper_5x5 += 25 * r.in_channels * r.out_channels
    return [f"1×1 reductions: the {2 * len(modules)} reduce→3×3 branches of the {len(modules)} Inception modules "
            f"hold {_ratio(have, without)} for the same 3×3 convs on each module's input",
            f"torchvision's GoogLeNet has 3×3 where the paper's branch 3 has 5×5: {tv_3x3:,} weights "
            f"instead of {paper_5x5:,}"]


def _bottlenecks(model: nn.Module) -> List[str]:
    blocks = [m for m in model.modules() if type(m).__name__ == "Bottleneck"]
    if not blocks:
        return []
    have = sum(_w(b.conv1) + _w(b.conv2) + _w(b.conv3) for b in blocks)
    without = sum(2 * 9 * b.conv3.out_channels ** 2 for b in blocks)
    return [f"bottlenecks: the {len(blocks)} blocks' 1×1→3×3→1×1 hold {_ratio(have, without)} "
            "for two 3×3 convs at each block's output width"]


def _dense_bottlenecks(model: nn.Module) -> List[str]:
    layers = [m for m in model.modules() if type(m).__name__ in ("_DenseLayer", "DenseLayer")]  # torchvision, fastconv.models
    have = sum(_w(lay.conv1) + _w(lay.conv2) for lay in layers)
    without = sum(9 * lay.conv1.in_channels * lay.conv2.out_channels for lay in layers)
    return [f"dense-layer bottlenecks: the {len(layers)} layers' 1×1 (to 4k) → 3×3 (to k) hold "
            f"{_ratio(have, without)} for a 3×3 on all the concatenated channels"]


def design_notes(name: str, model: nn.Module) -> List[str]:
    """The lines for model ``name`` (torchvision's layer tree)."""
    if name == "alexnet":
        return _fc_share(model)
    if name.startswith("vgg"):
        return _vgg_stacks(model) + _fc_share(model)
    if name == "googlenet":
        return _inception_reductions(model)
    if name.startswith("densenet"):
        return _dense_bottlenecks(model)
    return _bottlenecks(model)  # ResNet-50 and up, ResNeXt, Wide ResNet (BasicBlock models: none)
