"""Candidate operations of the KDAS-ReID / Auto-ReID search space (DARTS ops + part-aware).

Every op maps [N, C, H, W] to [N, C, ceil(H/s), ceil(W/s)] for stride s in {1, 2}.
``affine=False`` (search) keeps BN from learning a scale that would compete with the
architecture weights, as in DARTS; derived networks use affine BN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.errors import ConfigError

PARTS = 4  # horizontal stripes of the part-aware module (Auto-ReID)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__(nn.ReLU(), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))


class DilConv(nn.Sequential):
    """ReLU, depth-wise dilated conv, point-wise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in,
                      bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depth-wise separable convs (DARTS), the first carrying the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))


class Zero(nn.Module):
    """The ``none`` op: no connection (zeros of the output shape)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Stride-2 identity substitute: two offset 1x1 stride-2 convs, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]  # same size as x, odd sizes included
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


class PartAware(nn.Module):
    """Auto-ReID's part-aware module.

    The map is split into ``parts`` horizontal stripes (adaptive average pooling, so any
    height works); each stripe vector becomes a "body part" vector through a linear layer;
    the part vectors interact through single-head self-attention (with a residual); each
    attended vector is repeated over its stripe and concatenated with the input, and a
    ReLU-1x1 conv-BN fuses the two (carrying the stride) to the output width.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, parts: int = PARTS,
                 affine: bool = True):
        super().__init__()
        self.parts = parts
        self.body = nn.Linear(c_in, c_in)
        self.qkv = nn.Linear(c_in, 3 * c_in)
        self.fuse = ReLUConvBN(2 * c_in, c_out, 1, stride, 0, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stripes = F.adaptive_avg_pool2d(x, (self.parts, 1)).flatten(2).transpose(1, 2)
        body = self.body(stripes)  # [N, parts, C]
        q, k, v = self.qkv(body).chunk(3, dim=-1)
        parts = body + F.scaled_dot_product_attention(q, k, v)
        # Row r of the map gets the vector of stripe floor(r * parts / H).
        maps = F.interpolate(parts.transpose(1, 2).unsqueeze(-1), size=x.shape[2:],
                             mode="nearest")
        return self.fuse(torch.cat([x, maps], dim=1))


OpBuilder = Callable[[int, int, bool], nn.Module]  # (channels, stride, affine) -> op

OPS: dict[str, OpBuilder] = {
    "none": lambda c, s, affine: Zero(s),
    "avg_pool_3x3": lambda c, s, affine: nn.AvgPool2d(3, s, 1, count_include_pad=False),
    "max_pool_3x3": lambda c, s, affine: nn.MaxPool2d(3, s, 1),
    "skip_connect": lambda c, s, affine: nn.Identity() if s == 1
    else FactorizedReduce(c, c, affine),
    "sep_conv_3x3": lambda c, s, affine: SepConv(c, c, 3, s, 1, affine),
    "sep_conv_5x5": lambda c, s, affine: SepConv(c, c, 5, s, 2, affine),
    "dil_conv_3x3": lambda c, s, affine: DilConv(c, c, 3, s, 2, 2, affine),
    "dil_conv_5x5": lambda c, s, affine: DilConv(c, c, 5, s, 4, 2, affine),
    "part_aware": lambda c, s, affine: PartAware(c, c, s, PARTS, affine),
}
SEARCH_SPACE = tuple(OPS)  # KDAS-ReID's candidate set (Auto-ReID's, with skip and none)


def check_ops(ops: tuple[str, ...] | list[str], where: str = "ops") -> None:
    """Unknown or repeated op names, or fewer than one real op, are config errors."""
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ConfigError(f"unknown op(s) {unknown} in {where}; known ops: {', '.join(OPS)}")
    if len(set(ops)) != len(ops):
        raise ConfigError(f"{where} lists an op twice: {list(ops)}")
    if not [o for o in ops if o != "none"]:
        raise ConfigError(f"{where} needs at least one op other than 'none'; got {list(ops)}")


def build_op(name: str, channels: int, stride: int, affine: bool = True) -> nn.Module:
    """One candidate op; pooling in the search (affine=False) is followed by BN as in DARTS."""
    op = OPS[name](channels, stride, affine)
    if "pool" in name and not affine:
        op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
    return op
