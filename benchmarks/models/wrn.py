"""Wide ResNets for 32x32 inputs (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

``wrn_{depth}_{width}`` follow RepDistiller's ``models/wrn.py`` (Tian et al. 2020): pre-activation
BasicBlocks (BN-ReLU-conv), a 1x1 conv shortcut when in != out channels, depth = 6n + 4, channels
[16, 16w, 32w, 64w], final BN + ReLU, average pool 8 and a linear ``fc``. No dropout.
State-dict keys match RepDistiller's.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.benchmarks.models.vgg import normal_fan_out_init_
from kdbench.benchmarks.registry import MODELS


class BasicBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(preact))))
        # As in the reference: an identity shortcut carries the raw input, while a projection
        # shortcut sees the pre-activated input.
        if self.convShortcut is None:
            return x + out
        return self.convShortcut(preact) + out


class NetworkBlock(nn.Module):
    """A stage of ``nb_layers`` BasicBlocks; the first one changes width and stride."""

    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                for i in range(nb_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width for CIFAR (three stages at 32x32, 16x16, 8x8)."""

    input_size = 32  # CIFAR-size images: what structural checks probe it with

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(channels[3], num_classes)
        # The reference keeps PyTorch's default Linear weight init and zeroes only its bias.
        normal_fan_out_init_(self, linear_std=None)

    def stages(self) -> list[nn.Module]:
        """The three network blocks (outputs are pre-activation, before the next block's BN)."""
        return [self.block1, self.block2, self.block3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.avgpool(self.relu(self.bn1(out)))
        return self.fc(torch.flatten(out, 1))


@MODELS.register_module("wrn_16_2")
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """WRN-16-2 (RepDistiller)."""
    return WideResNet(16, 2, num_classes)


@MODELS.register_module("wrn_40_1")
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """WRN-40-1 (RepDistiller)."""
    return WideResNet(40, 1, num_classes)


@MODELS.register_module("wrn_40_2")
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """WRN-40-2 (RepDistiller)."""
    return WideResNet(40, 2, num_classes)
