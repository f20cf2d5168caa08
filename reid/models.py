"""ReID networks for the zoo: torchvision ResNets with an identity classifier.

Every ReID model follows one convention: ``embed(x)`` returns the retrieval features
[N, D] (what is deployed and what the ``reid`` evaluator ranks by), ``forward(x)`` returns
the identity logits used in training (cross-entropy, KD). ``stages()`` lists the backbone's
stage modules like the rest of the zoo.

``resnet{10,18,50}_reid`` start from random weights (offline, tests; ResNet-10 is torchvision's
ResNet with one basic block per stage, a CPU-sized student). The ``_imagenet``
variants load torchvision's ImageNet-1k weights (IMAGENET1K_V1) from the torch hub cache
(``$TORCH_HOME/hub/checkpoints``, where torchvision saves them) and never download.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.registry import MODELS


class ReIDResNet(nn.Module):
    """A torchvision ResNet trunk (global-average-pooled features) + a linear ID classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        features = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.classifier = nn.Linear(features, num_classes)

    def stages(self) -> list[nn.Module]:
        b = self.backbone
        return [b.layer1, b.layer2, b.layer3, b.layer4]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def imagenet_weights_path(arch: str) -> tuple[Path, str]:
    """Where torchvision keeps ``arch``'s IMAGENET1K_V1 file, and its download URL."""
    from torchvision.models import get_model_weights

    url = get_model_weights(arch).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name, url


def _build(arch: str, num_classes: int, imagenet: bool) -> ReIDResNet:
    from torchvision import models

    if arch == "resnet10":
        return ReIDResNet(models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1]), num_classes)
    backbone = getattr(models, arch)(weights=None)
    if imagenet:
        path, url = imagenet_weights_path(arch)
        if not path.is_file():
            raise ConfigError(
                f"ImageNet weights for {arch} not found at {path}; download {url} to that "
                f"path (or set TORCH_HOME), or use the randomly initialised {arch}_reid")
        backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return ReIDResNet(backbone, num_classes)


@MODELS.register_module("resnet50_reid")
def resnet50_reid(num_classes: int) -> ReIDResNet:
    """torchvision ResNet-50 (random init), 2048-d features."""
    return _build("resnet50", num_classes, imagenet=False)


@MODELS.register_module("resnet18_reid")
def resnet18_reid(num_classes: int) -> ReIDResNet:
    """torchvision ResNet-18 (random init), 512-d features."""
    return _build("resnet18", num_classes, imagenet=False)


@MODELS.register_module("resnet10_reid")
def resnet10_reid(num_classes: int) -> ReIDResNet:
    """ResNet-10 (one basic block per stage, random init), 512-d features."""
    return _build("resnet10", num_classes, imagenet=False)


@MODELS.register_module("resnet50_reid_imagenet")
def resnet50_reid_imagenet(num_classes: int) -> ReIDResNet:
    """ResNet-50 initialised from ImageNet (the KDAS-ReID teacher's starting point)."""
    return _build("resnet50", num_classes, imagenet=True)


@MODELS.register_module("resnet18_reid_imagenet")
def resnet18_reid_imagenet(num_classes: int) -> ReIDResNet:
    """ResNet-18 initialised from ImageNet."""
    return _build("resnet18", num_classes, imagenet=True)
