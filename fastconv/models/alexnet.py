"""AlexNet as torchvision defines it (one tower; overlapping 3×3/2 max-pools), on fastconv layers."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..nn.layers import MaxPool2d
from ._base import FusedEvalModel, builder, conv, load_weights, num_classes_from

__all__ = ["AlexNet", "alexnet"]


class AlexNet(FusedEvalModel):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True), MaxPool2d(kernel_size=3, stride=2),
            conv(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True), MaxPool2d(kernel_size=3, stride=2),
            conv(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            conv(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            conv(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True), MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@builder
def alexnet(*, weights=None, progress: bool = True, **kwargs) -> AlexNet:
    """AlexNet (Krizhevsky et al., 2012), torchvision's single-tower variant."""
    num_classes_from(weights, kwargs)
    return load_weights(AlexNet(**kwargs), weights, progress)
