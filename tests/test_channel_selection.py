"""Channel self-selection: its invariants (all-ones gates change nothing, the soft cut keeps
shapes and lets channels regrow, the hard-cut export equals the gated network, exact MACs,
one coefficient vector per residual group)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from kdbench.benchmarks.config import Pair
from kdbench.benchmarks.data import Batch
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems
from kdbench.benchmarks.method import FrozenTeacher
from kdbench.benchmarks.registry import build_model
from kdbench.methods.channel_selection import (
    ChannelSelection,
    Selecting,
    channels_to_cut,
    cut_fraction,
    make_regressors,
    soft_cut,
    stage_shapes,
)
from kdbench.methods.common.channel_gates import (
    GatedBatchNorm,
    ReLUOpenAtZero,
    export_gated,
    gate_groups,
    insert_gates,
    open_relus,
)

X = torch.randn(8, 3, 32, 32)


def resnet20(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("resnet20", num_classes=100).eval()
    with torch.no_grad():  # trained-looking BN, so folding and removal are really exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def gated(seed: int = 0, init=lambda c: torch.empty(c).uniform_(0.9, 1.1)):
    model = resnet20(seed)
    coefficients = insert_gates(model, X[:1], init)
    return model, coefficients


def test_all_ones_gates_leave_the_network_unchanged():
    plain = resnet20()
    model, _ = gated(init=torch.ones)
    with torch.no_grad():
        assert (model(X) - plain(X)).abs().max() <= 1e-6


def test_residual_channels_share_one_coefficient_vector_per_stage():
    model, coefficients = gated()
    groups = {gates[0].source: {g.source for g in gates} for _, gates in gate_groups(model)}
    assert len(coefficients) == len(groups) == 3 + 9  # three stage groups, nine block-internal
    assert groups["conv1"] == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert groups["layer2.0.conv2"] == {"layer2.0.conv2", "layer2.0.downsample.0",
                                        "layer2.1.conv2", "layer2.2.conv2"}
    gates = [m for m in model.modules() if isinstance(m, GatedBatchNorm)]
    assert len({id(g.coeff) for g in gates}) == 12 and len(gates) == 21


def test_soft_cut_zeroes_channels_exactly_but_keeps_every_shape():
    model, coefficients = gated()
    shapes = [p.shape for p in model.parameters()]
    soft_cut(coefficients, 0.3, min_channels=8)
    assert [p.shape for p in model.parameters()] == shapes
    intra = model.layer2[1].bn1  # a block-internal group: 32 channels, 9 cut
    cut = (intra.coeff == 0).nonzero().flatten()
    assert len(cut) == 9
    with torch.no_grad():
        out = intra(model.layer2[1].conv1(torch.randn(4, 32, 16, 16) * 10))
    assert torch.all(out[:, cut] == 0)
    stage = model.layer3[2].bn2.coeff  # the residual group of the last stage
    with torch.no_grad():
        features = model.layer3(model.layer2(model.layer1(model.relu(model.bn1(model.conv1(X))))))
    assert torch.all(features[:, stage == 0] == 0)


def test_a_cut_coefficient_still_gets_a_gradient_and_can_regrow():
    model, coefficients = gated()
    soft_cut(coefficients, 0.3, min_channels=8)
    teacher = FrozenTeacher(resnet20(seed=1))
    open_relus(model)
    loss = ChannelSelection(ChannelSelection.Config()).selection_loss(teacher, coefficients)
    selecting = Selecting(model, make_regressors(stage_shapes(model, X[:1]),
                                                 stage_shapes(teacher.model, X[:1])))
    selecting.train()
    total, _ = loss(Batch(X, torch.arange(8)), selecting(X))
    total.backward()
    for coeff in coefficients:
        cut = coeff.detach() == 0
        assert torch.all(coeff.grad[cut] != 0), "a cut channel is frozen at zero"
    optimizer = torch.optim.SGD([{"params": coefficients, "weight_decay": 0.0}], lr=0.1)
    optimizer.step()
    assert all(torch.all(c[c.grad != 0] != 0) for c in coefficients)


def test_plain_relu_would_freeze_cut_channels_for_good():
    model, coefficients = gated()
    soft_cut(coefficients, 0.3, min_channels=8)
    model.train()
    model(X).logsumexp(1).sum().backward()
    coeff = model.layer2[1].bn1.coeff
    assert torch.all(coeff.grad[coeff.detach() == 0] == 0)


def test_hard_cut_export_equals_the_gated_network():
    model, coefficients = gated()
    soft_cut(coefficients, 0.4, min_channels=8)
    kept = {gates[0].source: int((coeff != 0).sum()) for coeff, gates in gate_groups(model)}
    exported = export_gated(copy.deepcopy(model), X[:1])
    with torch.no_grad():
        assert (exported(X) - model(X)).abs().max() <= 1e-5
    for source, n in kept.items():
        assert exported.get_submodule(source).out_channels == n
    assert not any(isinstance(m, (GatedBatchNorm, ReLUOpenAtZero)) for m in exported.modules())
    assert deployment_problems(exported) == []


def cifar_resnet20_macs(stage: list[int], inner: list[list[int]], classes: int = 100) -> int:
    """Analytic conv + linear MACs of a CIFAR ResNet-20 with ``stage[s]`` residual channels
    in stage s and ``inner[s][b]`` channels inside block b (projection shortcuts)."""
    sizes = (32 * 32, 16 * 16, 8 * 8)
    total = 3 * stage[0] * 9 * sizes[0]  # stem conv
    for s in range(3):
        for b in range(3):
            c_in = stage[s - 1] if (b == 0 and s > 0) else stage[s]
            total += (c_in * inner[s][b] + inner[s][b] * stage[s]) * 9 * sizes[s]
            if b == 0 and s > 0:
                total += stage[s - 1] * stage[s] * sizes[s]  # 1x1 projection
    return total + stage[2] * classes


def test_exported_macs_equal_the_analytic_count_of_the_kept_channels():
    assert cifar_resnet20_macs([16, 32, 64], [[16] * 3, [32] * 3, [64] * 3]) == 40_818_944
    model, coefficients = gated()
    soft_cut(coefficients, 0.3, min_channels=8)
    kept = {gates[0].source: int((coeff != 0).sum()) for coeff, gates in gate_groups(model)}
    stage = [kept["conv1"], kept["layer2.0.conv2"], kept["layer3.0.conv2"]]
    inner = [[kept[f"layer{s + 1}.{b}.conv1"] for b in range(3)] for s in range(3)]
    exported = export_gated(model, X[:1])
    assert count_macs(exported, (X[:1],)) == cifar_resnet20_macs(stage, inner)
    assert sum(p.numel() for p in exported.parameters()) < sum(
        p.numel() for p in resnet20().parameters())


def test_cut_schedule_ramps_to_the_target_and_rounds_down():
    assert [cut_fraction(e, 2, 0.3, 0.6) for e in range(2)] == pytest.approx([0.15, 0.3])
    ramp = [cut_fraction(e, 240, 0.3, 0.6) for e in range(240)]
    assert ramp[143] == pytest.approx(0.3) and ramp[142] < 0.3 and ramp[-1] == pytest.approx(0.3)
    assert channels_to_cut(16, 0.3, 8) == 4
    assert channels_to_cut(10, 0.1, 1) == 1  # 0.1·10 is 0.9999999999999999 in floats
    assert channels_to_cut(16, 0.9, 8) == 8  # never below min_channels
    assert channels_to_cut(4, 0.9, 8) == 0  # a layer narrower than min_channels is left alone


def test_run_hard_cuts_to_the_keep_ratio_and_returns_a_plain_network(make_context):
    teacher = resnet20()
    cfg = ChannelSelection.make_config("smoke", {"train_images": 128, "min_channels": 1})
    out = ChannelSelection(cfg).run(make_context(teacher, pair=("resnet20", "resnet8")))
    widths = [m.out_channels for m in out.model.modules() if isinstance(m, nn.Conv2d)]
    full = [m.out_channels for m in teacher.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [c - channels_to_cut(c, 0.3, 1) for c in full]
    assert not any(isinstance(m, (GatedBatchNorm, ReLUOpenAtZero)) for m in out.model.modules())
    assert deployment_problems(out.model) == []
    assert out.extras["keep_ratio"] == 0.7
    groups = [16, 32, 64] + [16] * 3 + [32] * 3 + [64] * 3  # stage + block-internal groups
    assert out.extras["kept_channel_fraction"] == pytest.approx(
        sum(c - channels_to_cut(c, 0.3, 1) for c in groups) / sum(groups))
    assert "pruned resnet20 itself" in out.notes[0]


def test_pre_activation_networks_are_skipped_with_a_reason():
    method = ChannelSelection(ChannelSelection.Config())
    reason = method.supports(Pair("wrn_16_2", "wrn_16_2"))
    assert reason is not None and "BatchNorm" in reason
    assert method.supports(Pair("resnet56", "resnet20")) is None


def test_bad_config_names_what_is_allowed():
    with pytest.raises(ConfigError, match="target must be one of teacher, student"):
        ChannelSelection.make_config("full", {"target": "both"})
    with pytest.raises(ConfigError, match=r"keep_ratio must be in \(0, 1\]"):
        ChannelSelection.make_config("full", {"keep_ratio": 0.0})


# ---- what ranks the channels: training, not the random draw ---------------------------
def _selection_cut(ctx, teacher, init_seed, **config):
    method = ChannelSelection(ChannelSelection.make_config(
        "smoke", {"train_images": 128, "min_channels": 1, **config}))
    # its own checkpoint directory: a second call must not resume the first one's fit
    ctx = dataclasses.replace(ctx, workdir=ctx.workdir / f"init{init_seed}-seed{ctx.seed}")
    net = copy.deepcopy(teacher.model).requires_grad_(True)
    torch.manual_seed(init_seed)
    coefficients = insert_gates(net, X[:1], lambda c: torch.empty(c).uniform_(0.9, 1.1))
    method.select(ctx, teacher, net, coefficients, X[:1], ctx.train_loader(images=128))
    return net, coefficients, [c.detach() == 0 for c in coefficients]


def test_without_training_the_cut_ignores_the_random_initial_coefficients(make_context):
    ctx = make_context(resnet20(), pair=("resnet20", "resnet8"), lr=0.0)  # lr 0: no step moves
    teacher = ctx.teacher()
    first = _selection_cut(ctx, teacher, init_seed=0)
    second = _selection_cut(ctx, teacher, init_seed=1)
    assert not all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first[2], second[2], strict=True)), \
        "two random draws of the coefficients gave two different cuts: the draw decided"
    net = first[0]  # untrained: the channels with the larger BN scale stay
    for coeff, gates in gate_groups(net):
        gamma = torch.stack([g.bn.weight.detach().abs() for g in gates]).mean(0)
        dropped = coeff.detach() == 0
        if dropped.any():
            assert gamma[dropped].max() <= gamma[~dropped].min()


def test_channel_scores_are_the_folded_scale_over_the_initial_draw():
    from kdbench.methods.common.channel_gates import channel_scores

    model, coefficients = gated()
    initial = [c.detach().clone() for c in coefficients]
    gates = dict((id(c), g) for c, g in gate_groups(model))
    scores = channel_scores(model, coefficients, initial)
    for coeff, score in zip(coefficients, scores, strict=True):
        gamma = torch.stack([g.bn.weight.detach().abs() for g in gates[id(coeff)]]).mean(0)
        assert torch.allclose(score, gamma)  # untrained: m = m0, only the BN scale counts
    with torch.no_grad():
        coefficients[0][3] *= 2  # training doubled one coefficient ...
        gates[id(coefficients[0])][0].bn.weight[5] = 0  # ... and zeroed one BN scale
    after = channel_scores(model, coefficients, initial)
    assert after[0][3] == pytest.approx(2 * float(scores[0][3]))
    assert after[0][5] < scores[0][5]


def test_the_ranking_follows_the_training_data(make_context):
    torch.manual_seed(0)
    plain = build_model("resnet20", num_classes=100).eval()  # BN scales all 1: training decides
    cuts = []
    for seed in (0, 1):  # the same initial coefficients, other batches in another order
        ctx = make_context(plain, pair=("resnet20", "resnet8"), seed=seed)
        cuts.append(_selection_cut(ctx, ctx.teacher(), init_seed=0)[2])
    assert not all(torch.equal(a, b) for a, b in zip(*cuts, strict=True))


# ---- the L1-magnitude control -----------------------------------------------------------
def test_l1_control_cuts_the_same_counts_by_filter_l1_and_fine_tunes_the_same(
        make_context, monkeypatch):
    teacher = resnet20()
    cfg = ChannelSelection.make_config("smoke", {"train_images": 128, "min_channels": 1})
    method = ChannelSelection(cfg)
    tuned = []
    finetune = method.finetune

    def spy(ctx, t, net, loader, **kwargs):
        tuned.append((net, loader))
        return finetune(ctx, t, net, loader, **kwargs)

    monkeypatch.setattr(method, "finetune", spy)
    out = method.run(make_context(teacher, pair=("resnet20", "resnet8")))
    assert set(out.controls) == {"l1_finetune"}
    control = out.controls["l1_finetune"]
    widths = [m.out_channels for m in out.model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [m.out_channels for m in control.model.modules()
                      if isinstance(m, nn.Conv2d)]
    assert len(tuned) == 2 and tuned[0][1] is tuned[1][1]  # same fine-tune, same batches
    assert deployment_problems(control.model) == []
    assert control.extras["channel_ranking"] == "filter_l1"


def test_l1_cut_keeps_the_largest_filters_of_each_coupling_group():
    from kdbench.methods.channel_selection import l1_magnitude_cut

    model, _ = gated(init=torch.ones)
    counts = {gates[0].source: max(1, c.numel() // 2) for c, gates in gate_groups(model)}
    l1_magnitude_cut(model, counts)
    for coeff, gates in gate_groups(model):
        l1 = sum(model.get_submodule(g.source).weight.detach().abs().flatten(1).sum(1)
                 for g in gates)
        kept = coeff.detach() != 0
        assert int(kept.sum()) == counts[gates[0].source]
        assert l1[~kept].max() <= l1[kept].min()
        assert torch.all(coeff.detach()[kept] == 1)
