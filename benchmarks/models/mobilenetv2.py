"""MobileNetV2 for 32x32 inputs (Sandler et al. 2018), as RepDistiller's ``mobile_half``.

Follows RepDistiller's ``models/mobilenetv2.py`` (Tian et al. 2020; from "Knowledge Distillation
via Route Constrained Optimization"): expand ratio T = 6, width 0.5, a stride-2 3x3 stem, and every
inverted residual has its 1x1 expansion conv, even when t = 1. The last 1x1 conv goes to 1280
channels (not scaled for width <= 1), then AvgPool(2, ceil_mode) and a linear classifier.
State-dict keys match RepDistiller's.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.benchmarks.models.vgg import normal_fan_out_init_
from kdbench.benchmarks.registry import MODELS


def _conv_bn_relu(inp: int, oup: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection, residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2; ``blocks[i]`` is the i-th (t, c, n, s) group of inverted residuals."""

    input_size = 32  # CIFAR-size images: what structural checks probe it with

    def __init__(self, expand_ratio: int, width_mult: float, num_classes: int = 100) -> None:
        super().__init__()
        if width_mult > 1.0:
            # The reference widens the last conv by a rounding rule only for width > 1.
            raise ValueError("only width_mult <= 1 is defined for the CIFAR MobileNetV2")
        t = expand_ratio
        # t, c, n, s
        self.inverted_residual_setting = [
            [1, 16, 1, 1],
            [t, 24, 2, 1],
            [t, 32, 3, 2],
            [t, 64, 4, 2],
            [t, 96, 3, 1],
            [t, 160, 3, 2],
            [t, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, input_channel, 3, 2)
        self.blocks = nn.ModuleList()
        for ratio, c, n, s in self.inverted_residual_setting:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, ratio))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = 1280
        self.conv2 = _conv_bn_relu(input_channel, self.last_channel, 1, 1)
        # Stem and three stride-2 groups take 32 px down to 2 px.
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        normal_fan_out_init_(self)

    def stages(self) -> list[nn.Module]:
        """``blocks[1], blocks[2], blocks[4], blocks[6]``: the last group at each resolution.

        At 32x32 input their outputs are 16x16, 8x8, 4x4 and 2x2 (the RepDistiller feature points
        f1-f4); each is the group just before a stride-2 group, or the last group.
        """
        return [self.blocks[1], self.blocks[2], self.blocks[4], self.blocks[6]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        out = self.avgpool(self.conv2(out))
        return self.classifier(torch.flatten(out, 1))


@MODELS.register_module("mobilenetv2")
def mobilenetv2(num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2 with T = 6 and width 0.5 (RepDistiller ``mobile_half``)."""
    return MobileNetV2(expand_ratio=6, width_mult=0.5, num_classes=num_classes)
