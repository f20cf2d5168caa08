"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", Sec. 4.2) for 32x32 inputs.

``resnet{8,14,20,32,44,56,110}`` and ``resnet{8,32}x4`` follow RepDistiller's ``models/resnet.py``
(Tian et al. 2020, the CIFAR-100 KD standard): projection shortcuts (1x1 conv + BN, He et al.'s
option B) wherever the shape changes. ``resnet{20,32,44,56,110}_a`` are the pruning literature's
classic variant with He et al.'s parameter-free option-A shortcut (subsample + zero-pad channels).

State-dict keys match RepDistiller's, so its released CIFAR-100 teachers load unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.registry import MODELS

Shortcut = Literal["A", "B"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """He et al.'s option-A shortcut: take every other pixel and zero-pad the new channels.

    The padding is split evenly before and after the existing channels, as in the widely used
    CIFAR implementation of the pruning literature.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add shortcut, ReLU."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add and ReLU: a hook on bn2 (pre-activation features) must keep its value.
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """Three-stage CIFAR ResNet of BasicBlocks; depth = 6n + 2."""

    input_size = 32  # CIFAR-size images: what structural checks probe it with

    def __init__(
        self,
        depth: int,
        num_filters: tuple[int, int, int, int],
        num_classes: int = 100,
        shortcut: Shortcut = "B",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.shortcut = shortcut
        self.in_planes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(num_filters[1], n, stride=1)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.in_planes != planes:
            if self.shortcut == "A":
                downsample = ZeroPadShortcut(self.in_planes, planes, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv2d(self.in_planes, planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
        layers = [BasicBlock(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.shortcut == "A":
                    # The option-A reference implementation uses fan-in He init (He et al. 2015).
                    nn.init.kaiming_normal_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and self.shortcut == "A":
                nn.init.kaiming_normal_(m.weight)

    def stages(self) -> list[nn.Module]:
        """Stage modules whose outputs are the 32x32, 16x16 and 8x8 features."""
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


_NARROW = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


@MODELS.register_module("resnet8")
def resnet8(num_classes: int = 100) -> CifarResNet:
    """ResNet-8 (RepDistiller), projection shortcuts."""
    return CifarResNet(8, _NARROW, num_classes)


@MODELS.register_module("resnet14")
def resnet14(num_classes: int = 100) -> CifarResNet:
    """ResNet-14 (RepDistiller), projection shortcuts."""
    return CifarResNet(14, _NARROW, num_classes)


@MODELS.register_module("resnet20")
def resnet20(num_classes: int = 100) -> CifarResNet:
    """ResNet-20 (RepDistiller), projection shortcuts."""
    return CifarResNet(20, _NARROW, num_classes)


@MODELS.register_module("resnet32")
def resnet32(num_classes: int = 100) -> CifarResNet:
    """ResNet-32 (RepDistiller), projection shortcuts."""
    return CifarResNet(32, _NARROW, num_classes)


@MODELS.register_module("resnet44")
def resnet44(num_classes: int = 100) -> CifarResNet:
    """ResNet-44 (RepDistiller), projection shortcuts."""
    return CifarResNet(44, _NARROW, num_classes)


@MODELS.register_module("resnet56")
def resnet56(num_classes: int = 100) -> CifarResNet:
    """ResNet-56 (RepDistiller), projection shortcuts."""
    return CifarResNet(56, _NARROW, num_classes)


@MODELS.register_module("resnet110")
def resnet110(num_classes: int = 100) -> CifarResNet:
    """ResNet-110 (RepDistiller), projection shortcuts."""
    return CifarResNet(110, _NARROW, num_classes)


@MODELS.register_module("resnet20_a")
def resnet20_a(num_classes: int = 100) -> CifarResNet:
    """ResNet-20 with He et al.'s option-A (zero-pad) shortcuts."""
    return CifarResNet(20, _NARROW, num_classes, shortcut="A")


@MODELS.register_module("resnet32_a")
def resnet32_a(num_classes: int = 100) -> CifarResNet:
    """ResNet-32 with He et al.'s option-A (zero-pad) shortcuts."""
    return CifarResNet(32, _NARROW, num_classes, shortcut="A")


@MODELS.register_module("resnet44_a")
def resnet44_a(num_classes: int = 100) -> CifarResNet:
    """ResNet-44 with He et al.'s option-A (zero-pad) shortcuts."""
    return CifarResNet(44, _NARROW, num_classes, shortcut="A")


@MODELS.register_module("resnet56_a")
def resnet56_a(num_classes: int = 100) -> CifarResNet:
    """ResNet-56 with He et al.'s option-A (zero-pad) shortcuts."""
    return CifarResNet(56, _NARROW, num_classes, shortcut="A")


@MODELS.register_module("resnet110_a")
def resnet110_a(num_classes: int = 100) -> CifarResNet:
    """ResNet-110 with He et al.'s option-A (zero-pad) shortcuts."""
    return CifarResNet(110, _NARROW, num_classes, shortcut="A")


@MODELS.register_module("resnet8x4")
def resnet8x4(num_classes: int = 100) -> CifarResNet:
    """ResNet-8 with 4x wider stages (RepDistiller), projection shortcuts."""
    return CifarResNet(8, _X4, num_classes)


@MODELS.register_module("resnet32x4")
def resnet32x4(num_classes: int = 100) -> CifarResNet:
    """ResNet-32 with 4x wider stages (RepDistiller), projection shortcuts."""
    return CifarResNet(32, _X4, num_classes)
