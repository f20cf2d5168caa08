"""OKDDip (methods/okddip.py): its invariants (attention rows are distributions, targets mix
the peer logits, the ramp-up's end points, a leader the size of the plain backbone), the
branch split of zoo models, and one short run without a teacher."""

from __future__ import annotations

import itertools
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.benchmarks.config import Pair
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs, inspect_model
from kdbench.benchmarks.method import RunContext
from kdbench.benchmarks.registry import build_model
from kdbench.methods.common import kd_kl
from kdbench.methods.common.branches import BranchSplitError, split_at_stage
from kdbench.methods.okddip import (
    OKDDip,
    PeerNetwork,
    consistency_weight,
    okddip_loss,
    peer_diversity,
    score_branches,
)

X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3, 4, 5])


def peer_network(arch: str = "resnet8", branches: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    models = [build_model(arch, num_classes=10) for _ in range(branches)]
    return PeerNetwork([split_at_stage(m) for m in models], attention_factor=8), models


def test_attention_rows_are_distributions_over_the_peers():
    net, _ = peer_network()
    out = net(X)
    assert out.attention.shape == (6, 3, 3)
    assert out.peer_logits.shape == out.targets.shape == (6, 3, 10)
    assert out.leader_logits.shape == (6, 10)
    assert (out.attention >= 0).all()
    assert torch.allclose(out.attention.sum(-1), torch.ones(6, 3))


@pytest.mark.parametrize("zeroed", ["query", "key"])
def test_zero_query_or_key_gives_uniform_attention_and_mean_targets(zeroed):
    net, _ = peer_network()
    with torch.no_grad():
        getattr(net.attention, zeroed).weight.zero_()
    out = net(X)
    assert torch.equal(out.attention, torch.full((6, 3, 3), 1 / 3))
    mean = out.peer_logits.mean(dim=1, keepdim=True).expand_as(out.targets)
    assert torch.allclose(out.targets, mean, atol=1e-6)


def test_targets_lie_between_the_peer_min_and_max():
    net, _ = peer_network()
    with torch.no_grad():  # sharpen the attention so the test is not about near-uniform weights
        net.attention.query.weight.mul_(20)
    out = net(X)
    low = out.peer_logits.min(dim=1, keepdim=True).values
    high = out.peer_logits.max(dim=1, keepdim=True).values
    assert (out.targets >= low - 1e-5).all() and (out.targets <= high + 1e-5).all()
    assert not torch.allclose(out.targets, out.peer_logits.mean(1, keepdim=True).expand_as(
        out.targets), atol=1e-3)


def test_identical_peers_are_their_own_targets_and_have_zero_kl_and_diversity():
    net, _ = peer_network()
    for head, clf in zip(net.heads[1:-1], net.classifiers[1:-1], strict=True):
        head.load_state_dict(net.heads[0].state_dict())
        clf.load_state_dict(net.classifiers[0].state_dict())
    net.eval()
    out = net(X)
    assert torch.allclose(out.targets, out.peer_logits, atol=1e-5)
    peers = out.peer_logits.flatten(0, 1)
    assert kd_kl(peers, out.targets.flatten(0, 1), 3.0).item() < 1e-6
    assert peer_diversity(out.peer_logits).item() < 1e-6


def test_kd_term_is_zero_on_itself_and_its_gradient_scale_is_temperature_independent():
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    assert kd_kl(s, s.clone(), 3.0).abs().item() < 1e-6

    def grad_norm(temperature: float) -> float:
        logits = s.clone().requires_grad_(True)
        kd_kl(logits, t, temperature).backward()
        return logits.grad.norm().item()

    assert grad_norm(100.0) == pytest.approx(grad_norm(50.0), rel=0.01)


def test_loss_sums_peer_terms_and_distils_the_leader_from_the_peer_mean():
    net, _ = peer_network()
    out = net(X)
    weight, temperature = 0.5, 3.0
    ce = sum(F.cross_entropy(out.peer_logits[:, a], Y) for a in range(3))
    ce = ce + F.cross_entropy(out.leader_logits, Y)
    kl = sum(kd_kl(out.peer_logits[:, a], out.targets[:, a], temperature, detach_teacher=False)
             for a in range(3))
    kl = kl + kd_kl(out.leader_logits, out.peer_logits.mean(1), temperature,
                    detach_teacher=False)
    got = okddip_loss(out, Y, temperature, weight, detach_targets=False)
    assert torch.allclose(got, ce + weight * kl, rtol=1e-5)
    assert torch.allclose(okddip_loss(out, Y, temperature, 0.0, False), ce, rtol=1e-5)


@pytest.mark.parametrize("detach", [False, True])
def test_gradient_reaches_the_attention_only_when_targets_are_not_detached(detach):
    net, _ = peer_network()
    okddip_loss(net(X), Y, 3.0, 1.0, detach_targets=detach).backward()
    grad = net.attention.query.weight.grad
    if detach:
        assert grad is None
    else:
        assert grad is not None and grad.abs().sum() > 0


def test_consistency_ramp_up_values():
    assert consistency_weight(0, 80) == pytest.approx(math.exp(-5))
    assert consistency_weight(80, 80) == 1.0
    assert consistency_weight(200, 80) == 1.0
    assert consistency_weight(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert consistency_weight(3, 0) == 1.0
    weights = [consistency_weight(e, 80) for e in range(100)]
    assert all(a < b for a, b in itertools.pairwise(weights[:81]))


@pytest.mark.parametrize("arch", ["resnet8", "resnet32", "resnet110", "wrn_16_2"])
def test_exported_leader_is_the_plain_backbone(arch):
    net, models = peer_network(arch, branches=3)
    leader = models[-1].eval()
    plain = build_model(arch, num_classes=10)
    shapes = {k: v.shape for k, v in plain.state_dict().items()}
    assert {k: v.shape for k, v in leader.state_dict().items()} == shapes
    assert type(leader) is type(plain)
    net.eval()
    assert torch.equal(net(X).leader_logits, leader(X))  # the leader path is the model


def test_measured_leader_has_the_backbone_params_and_macs_without_attention_weights():
    net, models = peer_network("resnet8", branches=4)
    leader, plain = models[-1].eval(), build_model("resnet8", num_classes=10).eval()
    example = (torch.randn(1, 3, 32, 32),)
    report = inspect_model(leader, example)
    assert report.exported and report.problems == []
    assert report.params == sum(p.numel() for p in plain.parameters())
    assert report.macs == count_macs(plain, example)
    attention = {id(p) for p in net.attention.parameters()}
    assert attention.isdisjoint(id(p) for p in leader.parameters())


def test_training_the_network_trains_the_deployed_leader():
    net, models = peer_network(branches=3)
    leader = models[-1]
    before = {k: v.clone() for k, v in leader.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    okddip_loss(net(X), Y, 3.0, 1.0, False).backward()
    optimizer.step()
    after = leader.state_dict()
    for key in ("conv1.weight", "layer2.0.conv1.weight", "layer3.0.conv2.weight", "fc.weight"):
        assert not torch.equal(before[key], after[key]), key
    peer_fc = net.classifiers[0]
    assert peer_fc is not leader.fc and peer_fc.weight.shape == leader.fc.weight.shape


def test_split_reproduces_the_model_and_names_what_blocks_a_split():
    for arch in ("resnet8", "wrn_16_2", "mobilenetv2"):
        model = build_model(arch, num_classes=10).eval()
        split = split_at_stage(model)
        assert torch.equal(split.classifier(split.head(split.trunk(X))), model(X))
        own = {id(p) for p in model.parameters()}  # the model's own tensors, not copies
        assert {id(p) for p in [*split.trunk.parameters(), *split.head.parameters()]} <= own
    with pytest.raises(BranchSplitError, match="cannot trace VGG"):
        split_at_stage(build_model("vgg8", num_classes=10))
    with pytest.raises(BranchSplitError, match="no stages"):
        split_at_stage(torch.nn.Linear(3, 3))
    method = OKDDip()
    assert "cannot branch vgg8" in method.supports(Pair("vgg13", "vgg8"))
    assert method.supports(Pair("resnet14", "resnet8")) is None


def test_paper_defaults_and_smoke_overrides():
    cfg = OKDDip.Config()
    assert (cfg.num_branches, cfg.temperature, cfg.alpha, cfg.rampup_epochs) == (4, 3.0, 1.0, 80)
    assert (cfg.attention_factor, cfg.detach_targets) == (8, False)
    assert cfg.recipe["epochs"] == 300 and cfg.recipe["milestones"] == (150, 225)
    assert cfg.recipe["nesterov"] is True and cfg.recipe["batch_size"] == 128
    smoke = OKDDip.make_config("smoke")
    assert smoke.recipe == {} and smoke.num_branches == 4
    with pytest.raises(ConfigError, match="num_branches must be >= 3; got 2"):
        OKDDip.make_config("full", {"num_branches": 2})
    with pytest.raises(ConfigError, match="'epoch'"):
        OKDDip.make_config("full", {"recipe": {"epoch": 3}})


def test_a_short_run_needs_no_teacher_and_reports_peers(make_harness, tmp_path, monkeypatch):
    harness = make_harness()
    train, test = harness.splits()

    def no_teacher():
        raise AssertionError("OKDDip must not use the teacher")

    ctx = RunContext(
        suite=harness.suite, budget=harness.budget, pair=harness.budget.pairs[0], seed=0,
        device=torch.device("cpu"), data=harness.data, workdir=tmp_path,
        log=logging.getLogger("test.okddip"),
        teacher_provider=no_teacher, train_split=train.subset(128, seed=0), test_split=test,
    )
    method = OKDDip(OKDDip.make_config("smoke", {"num_branches": 3, "recipe": {"epochs": 1}}))
    torch.manual_seed(0)
    test_loaders = []
    test_loader = ctx.test_loader
    monkeypatch.setattr(ctx, "test_loader", lambda: test_loaders.append(1) or test_loader())
    monkeypatch.setattr(ctx, "evaluate", lambda *a, **k: pytest.fail("evaluated a split"))
    result = method.run(ctx)
    monkeypatch.undo()
    plain = build_model(ctx.pair.student, num_classes=ctx.num_classes)
    assert type(result.model) is type(plain)
    assert sum(p.numel() for p in result.model.parameters()) == sum(
        p.numel() for p in plain.parameters())
    extras = result.extras
    # The peer scores are diagnostics read once on the test split after training (the
    # leader is deployed whatever they are): their keys say so.
    assert test_loaders == [1]
    assert {"peer_top1", "leader_top1", "peer_ensemble_top1",
            "peer_diversity"}.isdisjoint(extras)
    assert len(extras["peer_top1_test"]) == 2
    assert extras["leader_top1_test"] == pytest.approx(ctx.evaluate(result.model)["top1"])
    assert 0.0 <= extras["peer_ensemble_top1_test"] <= 100.0
    assert extras["peer_diversity_test"] >= 0
    assert extras["epochs"][0]["consistency_weight"] == pytest.approx(math.exp(-5))
    assert extras["train_recipe"]["epochs"] == 1
    scores = score_branches(PeerNetwork([split_at_stage(result.model)] * 3, 8), ctx.test_loader())
    assert scores["peer_diversity"] == 0.0  # three copies of one branch do not differ
