"""Shared method pieces: physical pruning, masks, BN recalibration, module replacement."""

from __future__ import annotations

import torch
from torch import nn

from kdbench.benchmarks.data import Batch
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems
from kdbench.benchmarks.registry import build_model
from kdbench.methods.common import (
    apply_masks,
    classifier_of,
    coupled_layers,
    keep_channels,
    l1_filter_prune,
    magnitude_masks,
    recalibrate_bn,
    replace_modules,
)

X = torch.randn(1, 3, 32, 32)


def resnet20():
    torch.manual_seed(0)
    return build_model("resnet20", num_classes=10).eval()


def test_keep_channels_slices_weights_and_removes_macs_exactly():
    model = resnet20()
    block = model.layer1[0]
    w1, w2 = block.conv1.weight.clone(), block.conv2.weight.clone()
    kept = [1, 4, 5, 9, 15]
    keep_channels(model, X, {block.conv1: kept})
    assert torch.equal(block.conv1.weight, w1[kept])
    assert torch.equal(block.conv2.weight, w2[:, kept])
    assert block.bn1.num_features == len(kept)
    removed = (16 - len(kept)) * 16 * 9 * 32 * 32 * 2  # conv1 outputs + conv2 inputs, 32x32
    assert count_macs(resnet20(), (X,)) - count_macs(model, (X,)) == removed
    assert deployment_problems(model) == []


def test_residual_channels_form_one_group_per_stage():
    model = resnet20()
    groups = coupled_layers(model, X)
    stage1 = next(g for g in groups if model.conv1 in g)
    assert {id(m) for m in stage1} == {id(model.conv1), *(id(b.conv2) for b in model.layer1)}
    assert sum(len(g) for g in groups) == sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_l1_pruning_at_ratio_zero_is_the_identity_and_keeps_the_largest_filters():
    model = resnet20()
    before = model(X)
    l1_filter_prune(model, X, 0.0, ignored_layers=[classifier_of(model)])
    assert torch.allclose(model(X), before)
    pruned = resnet20()
    conv = pruned.layer2[0].conv1  # an intra-block conv: its channels couple to nothing else
    norms = conv.weight.abs().sum(dim=(1, 2, 3))
    l1_filter_prune(pruned, X, 0.5, ignored_layers=[classifier_of(pruned)])
    assert conv.out_channels == 16
    assert pruned.fc.out_features == 10 and pruned(X).shape == (1, 10)
    kept = torch.sort(norms.topk(16).indices).values
    original = resnet20().layer2[0].conv1.weight
    # rows = the 16 filters with the largest L1 norm; columns follow the pruned stage-1 group
    assert conv.weight.shape[1] == 8
    kept_in = [i for i in range(16) if any(
        torch.equal(conv.weight[0, j], original[kept[0], i]) for j in range(8))]
    assert torch.equal(conv.weight, original[kept][:, kept_in])


def test_magnitude_masks_reach_the_sparsity_and_fold_without_hooks():
    model = resnet20()
    masks = magnitude_masks(model, 0.7)
    assert classifier_of(model) not in masks
    apply_masks(masks)
    weights = torch.cat([m.weight.flatten() for m in masks])
    assert abs((weights == 0).float().mean().item() - 0.7) < 1e-3
    assert deployment_problems(model) == []


def test_bn_recalibration_equals_the_calibration_mean_and_keeps_weights():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model.eval()
    weights = [p.clone() for p in model.parameters()]
    xs = [torch.randn(8, 3, 10, 10) * (i + 1) for i in range(3)]
    assert recalibrate_bn(model, [Batch(x, torch.zeros(8)) for x in xs]) == 3
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x in xs])
    assert torch.allclose(model[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    assert not model.training and model[1].momentum == 0.1
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_replace_modules_swaps_every_match():
    model = resnet20()
    n_relu = sum(isinstance(m, nn.ReLU) for m in model.modules())
    count = replace_modules(model, lambda m: isinstance(m, nn.ReLU), lambda name, m: nn.GELU())
    assert count == n_relu > 0
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert model(X).shape == (1, 10)
