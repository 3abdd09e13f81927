"""VGG 11/13/16/19 with and without BatchNorm, as torchvision defines them, on fastconv layers."""
from __future__ import annotations

from typing import List, Union

import torch
import torch.nn as nn

from ..nn.layers import MaxPool2d
from ._base import FusedEvalModel, builder, conv, load_weights, num_classes_from

__all__ = ["VGG", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]

# channels of the 3×3 convs, "M" a 2×2/2 max-pool (torchvision's configurations A, B, D, E)
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
cfgs = CFGS  # torchvision's name (``make_layers(cfgs["D"])``)


def make_layers(cfg: List[Union[str, int]], batch_norm: bool = False) -> nn.Sequential:
    layers: List[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(conv(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(FusedEvalModel):
    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg(cfg: str, batch_norm: bool, weights, progress: bool, **kwargs) -> VGG:
    if weights is not None:
        kwargs["init_weights"] = False
    num_classes_from(weights, kwargs)
    return load_weights(VGG(make_layers(CFGS[cfg], batch_norm), **kwargs), weights, progress)


@builder
def vgg11(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("A", False, weights, progress, **kwargs)


@builder
def vgg11_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("A", True, weights, progress, **kwargs)


@builder
def vgg13(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("B", False, weights, progress, **kwargs)


@builder
def vgg13_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("B", True, weights, progress, **kwargs)


@builder
def vgg16(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("D", False, weights, progress, **kwargs)


@builder
def vgg16_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("D", True, weights, progress, **kwargs)


@builder
def vgg19(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("E", False, weights, progress, **kwargs)


@builder
def vgg19_bn(*, weights=None, progress: bool = True, **kwargs) -> VGG:
    return _vgg("E", True, weights, progress, **kwargs)
