"""Low-rank factorisation, the rank rule, FC pruning and hint adapters of hybrid_lowrank_quant."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.registry import build_model
from kdbench.methods.hybrid_lowrank_quant import (
    HybridLowRankQuant,
    choose_rank,
    conv_macs,
    factorise_conv,
    factorise_model,
    factorised_macs,
    make_adapters,
    prune_fc,
    useful_rank_limit,
)


def _conv(c_in=5, c_out=7, k=3, stride=2, bias=True) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=1, bias=bias).double()


def test_full_rank_factorisation_reproduces_the_layer():
    conv = _conv()
    x = torch.randn(3, 5, 11, 11, dtype=torch.double)
    full = min(7, 5 * 9)
    pair = factorise_conv(conv, full)
    assert [m.kernel_size for m in pair] == [(3, 3), (1, 1)]
    assert pair[0].out_channels == full and pair[0].stride == (2, 2)
    assert (pair(x) - conv(x)).abs().max() < 1e-5
    with torch.no_grad():  # float32 too, the dtype models are trained in
        assert (factorise_conv(conv.float(), full)(x.float()) - conv(x.float())).abs().max() < 1e-5


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_rank_r_error_is_bounded_by_the_discarded_singular_values(rank):
    conv = _conv(bias=False)
    x = torch.randn(2, 5, 9, 9, dtype=torch.double)
    s = torch.linalg.svdvals(conv.weight.detach().reshape(7, -1))
    pair = factorise_conv(conv, rank)
    w_r = (pair[1].weight.reshape(7, rank) @ pair[0].weight.reshape(rank, -1)).detach()
    # ‖W − W_r‖_F² is exactly the sum of the discarded σ² (Eckart-Young)
    w_err = (conv.weight.detach().reshape(7, -1) - w_r).norm()
    assert w_err == pytest.approx(s[rank:].pow(2).sum().sqrt().item(), rel=1e-9)
    # every output position is (W − W_r)·patch, so ‖Y − Y_r‖_F <= σ_{r+1}·‖patches‖_F
    patches = F.unfold(x, 3, padding=1, stride=2)
    with torch.no_grad():
        y_err = (conv(x) - pair(x)).norm()
    assert 0 < y_err.item() <= (s[rank] * patches.norm()).item() * (1 + 1e-9)


def test_factorised_layer_macs_equal_the_formula():
    conv = _conv(c_in=16, c_out=32, stride=1).float()
    x = torch.randn(1, 16, 8, 8)
    for rank in (1, 4, 9):
        counted = count_macs(factorise_conv(conv, rank), (x,))
        assert counted == factorised_macs(16, 32, 3, 3, rank, 64)
        assert counted == rank * 16 * 9 * 64 + 32 * rank * 64
    assert count_macs(conv, (x,)) == conv_macs(16, 32, 3, 3, 64)


def test_rank_rule_never_increases_macs():
    torch.manual_seed(0)
    for c_in, c_out, k in itertools.product((1, 3, 16, 64), (2, 16, 64, 100), (1, 3)):
        s = torch.rand(min(c_out, c_in * k * k)).sort(descending=True).values
        for rule, energy, ratio in (("energy", 0.5, 0.5), ("energy", 0.99, 0.5),
                                    ("energy", 1.0, 0.5), ("macs", 0.9, 0.25),
                                    ("macs", 0.9, 1.0)):
            rank = choose_rank(s, c_in, c_out, k, k, rule=rule, energy=energy, macs_ratio=ratio)
            if rank is not None:
                assert rank <= useful_rank_limit(c_in, c_out, k, k)
                assert factorised_macs(c_in, c_out, k, k, rank, 1) < conv_macs(c_in, c_out, k, k, 1)
    # the limit itself is tight: one more rank would not save anything
    limit = useful_rank_limit(16, 16, 3, 3)
    assert factorised_macs(16, 16, 3, 3, limit, 1) < conv_macs(16, 16, 3, 3, 1)
    assert factorised_macs(16, 16, 3, 3, limit + 1, 1) >= conv_macs(16, 16, 3, 3, 1)
    # energy: the fewest singular values that keep the fraction
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])
    assert choose_rank(s, 16, 16, 3, 3, rule="energy", energy=0.9, macs_ratio=1) == 2


def test_factorise_model_lowers_the_counted_macs_and_keeps_the_first_conv():
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    before = count_macs(model, (x[:1],))
    layers = factorise_model(model, x, rule="macs", energy=0.9, macs_ratio=0.5, skip_first=True)
    after = count_macs(model, (x[:1],))
    assert layers[0].rank is None and isinstance(model.conv1, nn.Conv2d)
    assert any(r.rank for r in layers)
    # the per-layer analytic accounting explains the whole difference
    assert before - after == sum(r.macs_before - r.macs_after for r in layers) > 0
    assert model(x).shape == (2, 10)


def test_fc_pruning_folds_zeros_into_the_weights():
    model = build_model("resnet8", num_classes=10)
    masks = prune_fc(model, 0.5)
    fc = model.fc
    assert list(masks) == [fc]
    assert (fc.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())


def test_config_errors_name_the_allowed_values():
    with pytest.raises(ConfigError, match="rank_rule must be one of energy, macs; got 'svd'"):
        HybridLowRankQuant.make_config("full", {"rank_rule": "svd"})
    with pytest.raises(ConfigError, match=r"fc_sparsity must be in \[0, 1\); got 1.0"):
        HybridLowRankQuant.make_config("full", {"fc_sparsity": 1.0})
    # A config built in code is checked when the method is built from it.
    with pytest.raises(ConfigError, match="fc_sparsity must be in"):
        HybridLowRankQuant(HybridLowRankQuant.Config(fc_sparsity=1.0))


def test_hint_adapters_bridge_widths_and_stay_out_of_the_deployed_model(make_context,
                                                                       monkeypatch):
    torch.manual_seed(0)
    teacher = build_model("resnet8x4", num_classes=100).eval()  # widths 64/128/256
    student = build_model("resnet8", num_classes=100)  # widths 16/32/64
    adapters = make_adapters(student, teacher, torch.randn(2, 3, 32, 32))
    assert [a.in_channels for a in adapters] == [16, 32, 64]
    assert [a.out_channels for a in adapters] == [64, 128, 256]

    ctx = make_context(teacher, pair=("resnet8x4", "resnet8"), epochs=1, batch_size=32)
    cfg = HybridLowRankQuant.make_config(
        "smoke", {"source": "student", "hint_epochs": 1, "kd_epochs": 1, "train_images": 64})
    splits = []  # the split of every ctx.evaluate call: None is the test split
    evaluate = ctx.evaluate
    monkeypatch.setattr(ctx, "evaluate", lambda model, split=None: splits.append(split) or
                        evaluate(model, split))
    result = HybridLowRankQuant(cfg).run(ctx)
    deployed = result.model
    assert result.extras["hint_adapters"] == 3
    # Diagnostics read on the test split (never used for a decision) say so in their keys.
    assert splits == [None, None]
    assert {"dense_top1", "factorised_top1_before_recovery"}.isdisjoint(result.extras)
    for key in ("dense_top1_test", "factorised_top1_before_recovery_test"):
        assert 0.0 <= result.extras[key] <= 100.0
    # nothing of the adapters is in the deployed model: same keys as a factorised resnet8
    reference = build_model("resnet8", num_classes=100)
    factorise_model(reference, torch.randn(2, 3, 32, 32), rule="macs", energy=0.9,
                    macs_ratio=0.5, skip_first=True)
    assert set(deployed.state_dict()) == set(reference.state_dict())
    assert sum(p.numel() for p in deployed.parameters()) == sum(
        p.numel() for p in reference.parameters())
    assert (deployed.fc.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
