"""Fresh random weights for an existing structure (e.g. a pruned network trained from scratch)."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def he_init_(model: nn.Module) -> nn.Module:
    """Re-draw every weight in place: He et al. 2015 normal init for convs (fan-out, ReLU gain),
    BN scale 1 / shift 0 with fresh running statistics, PyTorch's default for linear layers.

    This is the zoo's CIFAR ResNet initialisation, applied to whatever widths the layers now
    have, so a pruned structure starts the way a network of those widths would.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_BatchNorm, nn.Linear)):
            m.reset_parameters()
    return model
