"""KD on a pruned model: its invariants (the teacher's surviving slices, ratio 0 is the
teacher, exact MACs, unstructured density, zero KD at equal logits) and its three rows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kdbench.benchmarks.data import Batch
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems
from kdbench.benchmarks.method import FrozenTeacher
from kdbench.benchmarks.registry import build_model
from kdbench.methods.common import coupled_layers
from kdbench.methods.pruned_kd import UNSTRUCTURED_NOTE, PrunedKD, kd_objective, prune_copy

X = torch.randn(4, 3, 32, 32)


def resnet20(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=100).eval()
    with torch.no_grad():  # non-trivial BN statistics, so BN slices are checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def config(**overrides) -> PrunedKD.Config:
    return PrunedKD.make_config("smoke", {"train_images": 128, **overrides})


def kept_by_l1(layers: list[nn.Module], ratio: float) -> list[int]:
    """Li et al.: the int(C·(1 - ratio)) channels with the largest filter L1 norm, summed over
    the coupled layers."""
    norms = sum(layer.weight.detach().abs().flatten(1).sum(1) for layer in layers)
    return sorted(norms.topk(int(len(norms) * (1 - ratio))).indices.tolist())


def test_uncoupled_pruning_keeps_the_teachers_own_slices():
    teacher = resnet20()
    student, masks = prune_copy(teacher, X[:1], config(ratio=0.5))
    assert masks is None
    for t_block, s_block in zip(
            [b for stage in teacher.stages() for b in stage],
            [b for stage in student.stages() for b in stage], strict=True):
        kept = kept_by_l1([t_block.conv1], 0.5)
        assert torch.equal(s_block.conv1.weight, t_block.conv1.weight[kept])
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(s_block.bn1, name), getattr(t_block.bn1, name)[kept])
        assert torch.equal(s_block.conv2.weight, t_block.conv2.weight[:, kept])
        assert torch.equal(s_block.bn2.weight, t_block.bn2.weight)  # residual width untouched


def test_pruning_all_groups_slices_every_layer_by_its_groups_kept_channels():
    teacher = resnet20()
    student, _ = prune_copy(teacher, X[:1], config(ratio=0.25, scope="all"))
    kept = {}  # layer name -> kept output channels of its coupling group
    names = {m: n for n, m in teacher.named_modules()}
    for group in coupled_layers(teacher, X[:1]):
        if group != [teacher.fc]:
            rows = kept_by_l1(group, 0.25)
            kept.update({names[layer]: rows for layer in group})
    stage_input = {"layer1": "conv1", "layer2": "layer1.2.conv2", "layer3": "layer2.2.conv2"}
    for name, t_conv in teacher.named_modules():
        if not isinstance(t_conv, nn.Conv2d) or name == "conv1":
            continue
        stage, block = name.split(".")[:2]
        fed_by = (f"{stage}.{block}.conv1" if name.endswith("conv2")
                  else stage_input[stage] if block == "0" else f"{stage}.{int(block) - 1}.conv2")
        expected = t_conv.weight[kept[name]][:, kept[fed_by]]
        assert torch.equal(student.get_submodule(name).weight, expected), name
    assert torch.equal(student.fc.weight, teacher.fc.weight[:, kept["layer3.2.conv2"]])


@pytest.mark.parametrize("overrides", [{"scope": "uncoupled"}, {"scope": "all"},
                                       {"prune": "magnitude"}])
def test_ratio_zero_reproduces_the_teacher(overrides):
    teacher = resnet20()
    student, _ = prune_copy(teacher, X[:1], config(ratio=0.0, **overrides))
    with torch.no_grad():
        assert (student(X) - teacher(X)).abs().max() <= 1e-5


# RepDistiller's resnet20 (HobbitLong/RepDistiller models/resnet.py), 100 classes: conv +
# linear MACs of its layer shapes (chenyaofo/pytorch-cifar-models lists 40.82 M)
RESNET20_MACS = 40_818_944


def resnet20_macs_pruned_inside_blocks(ratio: float) -> int:
    """Analytic MACs of resnet20 whose nine block-internal convs (conv1 of each block) keep
    int(C·(1 − ratio)) of their C channels: each removed channel saves its 3x3 filter over
    the block input (C_in) and its input slice of conv2 (C), at every output pixel."""
    removed = 0
    for width, size, first_in in ((16, 32, 16), (32, 16, 16), (64, 8, 32)):
        for block in range(3):
            c_in = first_in if block == 0 else width
            removed += (width - int(width * (1 - ratio))) * 9 * (c_in + width) * size * size
    return RESNET20_MACS - removed


def test_structured_export_costs_exactly_the_analytic_macs():
    teacher = resnet20()
    student, _ = prune_copy(teacher, X[:1], config(ratio=0.5))
    assert count_macs(teacher, (X[:1],)) == RESNET20_MACS
    assert count_macs(student, (X[:1],)) == resnet20_macs_pruned_inside_blocks(0.5)
    assert deployment_problems(student) == []


def test_unstructured_masks_reach_the_compression_and_stay_dense():
    teacher = resnet20()
    student, masks = prune_copy(teacher, X[:1], config(prune="magnitude", ratio=0.9))
    layers = [student.get_submodule(name) for name in masks]
    weights = torch.cat([layer.weight.flatten() for layer in layers])
    assert (weights != 0).float().mean().item() == pytest.approx(1 / 10, abs=1e-3)
    assert all(s.shape == t.shape for s, t in zip(student.state_dict().values(),
                                                    teacher.state_dict().values(), strict=True))
    assert deployment_problems(student) == []


def test_kd_term_is_zero_for_identical_logits_and_never_reaches_the_teacher():
    teacher = FrozenTeacher(resnet20())
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    forward, loss = kd_objective(teacher, config(at_weight=1000.0))
    batch = Batch(X, torch.zeros(4, dtype=torch.long))
    student.eval()  # the teacher's BN statistics too: identical logits and stage maps
    total, parts = loss(batch, forward(student, batch))
    assert parts["kd"].item() <= 1e-6 and parts["at"].item() <= 1e-6
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())


def test_run_emits_kd_and_both_controls_from_the_right_starting_points(make_context,
                                                                        monkeypatch):
    teacher = resnet20()
    ctx = make_context(teacher, pair=("resnet20", "resnet8"))
    pruned, _ = prune_copy(teacher, X[:1], config())
    starts = {}
    fit = type(ctx).fit

    def spy(self, model, loss, **kwargs):
        starts[kwargs["name"]] = {k: v.clone() for k, v in model.state_dict().items()}
        return fit(self, model, loss, **kwargs)

    monkeypatch.setattr(type(ctx), "fit", spy)
    splits = []  # the split of every ctx.evaluate call: None is the test split
    evaluate = ctx.evaluate
    monkeypatch.setattr(ctx, "evaluate", lambda model, split=None: splits.append(split) or
                        evaluate(model, split))
    out = PrunedKD(config()).run(ctx)
    assert set(out.controls) == {"finetune", "scratch_init"}
    shapes = [t.shape for t in pruned.state_dict().values()]
    for row in (out, *out.controls.values()):
        assert [t.shape for t in row.model.state_dict().values()] == shapes
        assert deployment_problems(row.model) == []
    conv = "layer2.1.conv1.weight"
    assert torch.equal(starts["kd"][conv], pruned.state_dict()[conv])
    assert torch.equal(starts["finetune"][conv], pruned.state_dict()[conv])
    assert not torch.equal(starts["scratch_init"][conv], pruned.state_dict()[conv])
    assert "student derived from resnet20" in out.notes[0]
    # The pruned, not yet trained model's accuracy is a diagnostic read on the test split
    # (never used for a decision): its key says so.
    assert splits == [None] and "pruned_top1" not in out.extras
    assert 0.0 <= out.extras["pruned_top1_test"] <= 100.0


def test_unstructured_rows_keep_their_zeros_and_say_so(make_context):
    teacher = resnet20()
    ctx = make_context(teacher, pair=("resnet20", "resnet8"))
    out = PrunedKD(config(prune="magnitude", ratio=0.8)).run(ctx)
    _, masks = prune_copy(teacher, X[:1], config(prune="magnitude", ratio=0.8))
    for row in (out, *out.controls.values()):
        assert UNSTRUCTURED_NOTE in row.notes
        for name, mask in masks.items():
            assert torch.all(row.model.get_submodule(name).weight[~mask] == 0), name
    assert count_macs(out.model, (X[:1],)) == count_macs(teacher, (X[:1],))


def test_bad_config_names_the_allowed_values():
    with pytest.raises(ConfigError, match="prune must be one of l1_filter, magnitude"):
        PrunedKD.make_config("full", {"prune": "random"})
    with pytest.raises(ConfigError, match=r"ratio must be in \[0, 1\)"):
        PrunedKD.make_config("full", {"ratio": 1.0})
