"""ReID zoo entries: the embed/forward convention and offline ImageNet weights."""

from __future__ import annotations

import pytest
import torch

from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.registry import build_model


# Trunk params: torchvision's totals minus the 1000-class fc; ResNet-10 summed by hand
# (stem 9,536; stages 73,984 + 230,144 + 919,040 + 3,673,088).
@pytest.mark.parametrize(("name", "dim", "params"), [
    ("resnet10_reid", 512, 4_905_792),
    ("resnet18_reid", 512, 11_176_512),
    ("resnet50_reid", 2048, 23_508_032),
])
def test_embed_gives_features_and_forward_gives_identity_logits(name, dim, params):
    model = build_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        feats, logits = model.embed(x), model(x)
    assert feats.shape == (2, dim) and logits.shape == (2, 7)
    torch.testing.assert_close(logits, model.classifier(feats))
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == params  # torchvision's trunk without its 1000-class fc
    assert len(model.stages()) == 4


def test_imagenet_variant_reads_the_local_file_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"ImageNet weights for resnet18 not found at .*"
                       r"resnet18-f37072fd\.pth; download https://"):
        build_model("resnet18_reid_imagenet", num_classes=7)
    from torchvision.models import resnet18

    target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    target.parent.mkdir(parents=True)
    reference = resnet18()
    torch.save(reference.state_dict(), target)
    model = build_model("resnet18_reid_imagenet", num_classes=7)
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
