"""DenseNet 121/161/169/201 as torchvision defines them, on fastconv layers.

In eval mode each dense block allocates its final buffer once: every layer reads the channel
prefix through conv1x1's BN-ReLU prologue and its 3×3 conv writes the new channels into the
buffer slice, so feature traffic grows linearly with depth, with no torch.cat anywhere."""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from ..nn.layers import MaxPool2d
from ._base import FusedEvalModel, builder, conv, load_weights, num_classes_from, state_dict_of

__all__ = ["DenseNet", "DenseBlock", "densenet121", "densenet161", "densenet169", "densenet201"]


class DenseLayer(nn.Module):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = conv(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    def forward(self, input: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        prev = [input] if isinstance(input, torch.Tensor) else input
        if self.memory_efficient and any(t.requires_grad for t in prev):
            bottleneck = cp.checkpoint(lambda *xs: self.bn_function(list(xs)), *prev, use_reentrant=False)
        else:
            bottleneck = self.bn_function(prev)
        new = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new = F.dropout(new, p=self.drop_rate, training=self.training)
        return new


class DenseBlock(nn.ModuleDict):
    """A dense block (torchvision's ``_DenseBlock`` tree: ``denselayer1`` … with norm1/conv1/norm2/conv2).

    In a fastconv model's eval mode (and after ``fastconv.convert``) it runs concat-free on one
    preallocated buffer; in training it concatenates as torchvision does.
    """

    _version = 2

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float, memory_efficient: bool = False) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(num_input_features + i * growth_rate, growth_rate,
                                                               bn_size, drop_rate, memory_efficient))

    def forward(self, init_features: torch.Tensor) -> torch.Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


# torchvision's names for the helper classes
_DenseLayer, _DenseBlock, _Transition = DenseLayer, DenseBlock, Transition


class DenseNet(FusedEvalModel):
    def __init__(self, growth_rate: int = 32, block_config: Tuple[int, int, int, int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0, num_classes: int = 1000,
                 memory_efficient: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", conv(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate, memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def _densenet(growth_rate: int, block_config, num_init_features: int, weights, progress: bool, **kwargs) -> DenseNet:
    num_classes_from(weights, kwargs)
    model = DenseNet(growth_rate, block_config, num_init_features, **kwargs)
    if weights is None:
        return model
    # torchvision's released DenseNet checkpoints (the enum's download, or that file saved) use old
    # key names ("norm.1"); renamed as torchvision does, in a copy of the state dict
    import re

    state = dict(state_dict_of(weights, progress))
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")
    for key in list(state.keys()):
        match = pattern.match(key)
        if match:
            state[match.group(1) + match.group(2)] = state.pop(key)
    return load_weights(model, state, progress)


@builder
def densenet121(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 24, 16), 64, weights, progress, **kwargs)


@builder
def densenet161(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(48, (6, 12, 36, 24), 96, weights, progress, **kwargs)


@builder
def densenet169(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 32, 32), 64, weights, progress, **kwargs)


@builder
def densenet201(*, weights=None, progress: bool = True, **kwargs) -> DenseNet:
    return _densenet(32, (6, 12, 48, 32), 64, weights, progress, **kwargs)
