"""VGG with batch norm for 32x32 inputs (Simonyan & Zisserman 2015, CIFAR form).

``vgg{8,11,13,16}`` follow RepDistiller's ``models/vgg.py`` ``*_bn`` variants (Tian et al. 2020):
five conv blocks, max-pools after blocks 0-2 (and after block 3 only for 64-px inputs, so at
32x32 block 4 runs at 4x4), global average pool and one ``Linear(512, C)``.

``vgg16_5pool`` is the classic CIFAR VGG-16 of the pruning literature (Li et al. 2017, "Pruning
Filters for Efficient ConvNets"): a max-pool after blocks 0-3, so block 4 runs at 2x2, then the
same global average pool (the original's ``AvgPool2d(2)``, identical at 2x2) and head.
``vgg16_5pool_fc2`` has that paper's two-layer head Linear(512, 512)-BN-ReLU-Linear(512, C).

RepDistiller drops each block's last ReLU and applies ``F.relu`` in forward; here that ReLU stays
the last module of the block (one ``nn.ReLU`` per call site). Parameter keys are unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from kdbench.benchmarks.registry import MODELS

Head = Literal["linear", "fc2"]

CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def normal_fan_out_init_(model: nn.Module, linear_std: float | None = 0.01) -> None:
    """RepDistiller's (Wei Yang's) init: conv W ~ N(0, 2/(k*k*out)), BN (1, 0), zero biases.

    Linear weights are drawn from N(0, ``linear_std``) or left at PyTorch's default if ``None``.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def _make_block(channels: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for v in channels:
        conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(v), nn.ReLU()]
        in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Five-block VGG-BN; ``pool_every_block`` selects the classic 5-pool CIFAR layout."""

    input_size = 32  # CIFAR-size images: what structural checks probe it with

    def __init__(
        self,
        cfg: list[list[int]],
        num_classes: int = 100,
        pool_every_block: bool = False,
        head: Head = "linear",
    ) -> None:
        super().__init__()
        self.pool_every_block = pool_every_block
        self.block0 = _make_block(cfg[0], 3)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        width = cfg[4][-1]
        self.classifier: nn.Module
        if head == "linear":
            self.classifier = nn.Linear(width, num_classes)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(width, 512),
                nn.BatchNorm1d(512),
                nn.ReLU(),
                nn.Linear(512, num_classes),
            )
        normal_fan_out_init_(self)

    def stages(self) -> list[nn.Module]:
        """The five conv blocks, each ending in its BN + ReLU (features before the pools)."""
        return [self.block0, self.block1, self.block2, self.block3, self.block4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        # RepDistiller keeps block 4 at 4x4 for 32-px inputs and pools only 64-px ones.
        if self.pool_every_block or height == 64:
            x = self.pool3(x)
        x = self.pool4(self.block4(x))
        return self.classifier(torch.flatten(x, 1))


@MODELS.register_module("vgg8")
def vgg8(num_classes: int = 100) -> VGG:
    """VGG-8-BN, configuration "S" (RepDistiller ``vgg8_bn``)."""
    return VGG(CFGS["S"], num_classes)


@MODELS.register_module("vgg11")
def vgg11(num_classes: int = 100) -> VGG:
    """VGG-11-BN, configuration "A" (RepDistiller ``vgg11_bn``)."""
    return VGG(CFGS["A"], num_classes)


@MODELS.register_module("vgg13")
def vgg13(num_classes: int = 100) -> VGG:
    """VGG-13-BN, configuration "B" (RepDistiller ``vgg13_bn``)."""
    return VGG(CFGS["B"], num_classes)


@MODELS.register_module("vgg16")
def vgg16(num_classes: int = 100) -> VGG:
    """VGG-16-BN, configuration "D" (RepDistiller ``vgg16_bn``)."""
    return VGG(CFGS["D"], num_classes)


@MODELS.register_module("vgg16_5pool")
def vgg16_5pool(num_classes: int = 100) -> VGG:
    """Classic 5-pool CIFAR VGG-16-BN (block 4 at 2x2) with a single linear head."""
    return VGG(CFGS["D"], num_classes, pool_every_block=True)


@MODELS.register_module("vgg16_5pool_fc2")
def vgg16_5pool_fc2(num_classes: int = 100) -> VGG:
    """Classic 5-pool CIFAR VGG-16-BN with Li et al.'s Linear-BN-ReLU-Linear head."""
    return VGG(CFGS["D"], num_classes, pool_every_block=True, head="fc2")
