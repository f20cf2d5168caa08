"""Combine-Net (Wang, Li & Zhang 2021): Kneedle on kneed's test curves, Adaptive BN on
training batches only, channel rounding, MACs vs the analytic count, the recorded curve."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from kdbench.benchmarks.data import ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems
from kdbench.benchmarks.registry import build_model
from kdbench.methods.combine_net import (
    CandidateScorer,
    CombineNet,
    choose_rate,
    holdout,
    kneedle,
    lies_above_chord,
)
from kdbench.methods.common.pruning import (
    analytic_macs,
    channel_groups,
    classifier_of,
    kept_channel_count,
)

X = torch.randn(1, 3, 32, 32)
TINY = {"rates": (0.0, 0.3, 0.6), "calib_batches": 2, "val_images": 64, "epochs": 1,
        "train_images": 64}


def resnet8(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet8", num_classes=100).eval()


def method(**overrides) -> CombineNet:
    m = CombineNet(CombineNet.make_config("smoke", {**TINY, **overrides}))
    m.name = "combine_net"
    return m


# ---- Kneedle ------------------------------------------------------------------------------
@pytest.mark.parametrize(("y", "curve", "direction", "knee"), [
    ([0, 60, 80, 85, 90, 95, 96, 97, 98, 99], "concave", "increasing", 2),
    ([99, 98, 97, 96, 95, 90, 85, 80, 60, 0], "concave", "decreasing", 7),
    ([1, 2, 3, 4, 5, 10, 15, 20, 40, 100], "convex", "increasing", 7),
    ([100, 40, 20, 15, 10, 5, 4, 3, 2, 1], "convex", "decreasing", 2),
])
def test_kneedle_finds_the_knees_of_kneeds_test_curves(y, curve, direction, knee):
    assert kneedle(range(10), y, curve=curve, direction=direction) == knee


def test_kneedle_on_kneeds_figure2():
    x = np.linspace(0, 1, 10)
    knee = kneedle(x, -1 / (x + 0.1) + 5, curve="concave", direction="increasing")
    assert knee == pytest.approx(0.2222, abs=1e-4)
    assert -1 / (knee + 0.1) + 5 == pytest.approx(1.8966, abs=1e-4)


def test_kneedle_finds_no_knee_on_a_straight_line():
    x = np.linspace(0, 1, 10)
    assert kneedle(x, x, curve="concave", direction="increasing") is None
    assert kneedle(x, 1 - x) is None


def test_choose_rate_uses_the_knee_or_records_the_fallback():
    rates = [i / 10 for i in range(10)]
    concave = [99, 98, 97, 96, 95, 90, 85, 80, 60, 0]
    assert choose_rate(rates, concave, 1.0, 1.0).rate == pytest.approx(0.7)
    assert choose_rate(rates, concave, 1.0, 1.0).by == "kneedle"
    line = [50 - 2 * i for i in range(10)]  # straight: no knee -> within 3 points of acc(0)
    choice = choose_rate(rates, line, 1.0, 3.0)
    assert (choice.rate, choice.by) == (pytest.approx(0.1), "tolerance")
    assert "no knee" in choice.reason
    convex = [40, 10, 5, 3, 2, 1.5, 1.2, 1.1, 1.0, 1.0]  # falls at once: no concave knee
    assert not lies_above_chord(rates, convex)
    choice = choose_rate(rates, convex, 1.0, 1.0)
    assert choice.by == "target" and "not concave" in choice.reason
    assert choice.rate == pytest.approx(0.3)  # no rate > 0 within 1 point: fallback_rate


def test_the_curve_ends_at_its_first_candidate_at_chance():
    # A fashion-mnist short seed's held-out curve (500 images, resnet20): flat, a fall, then
    # dead candidates around 10 %. Whole, it lies below its chord, so the tolerance fallback
    # kept rate 0.05 (0.92x the teacher's params); up to its first candidate at chance it
    # is concave and Kneedle finds the knee.
    rates = [i / 20 for i in range(20)]
    curve = [92.6, 92.4, 91.0, 87.8, 82.4, 64.6, 66.6, 59.8, 52.6, 48.2, 27.4, 23.6, 6.0, 3.2,
             9.0, 7.4, 11.4, 9.4, 14.6, 3.0]
    whole = choose_rate(rates, curve, 1.0, 1.0)
    assert (whole.rate, whole.by) == (pytest.approx(0.05), "tolerance")
    chance = 100 * (0.1 + 3 * (0.1 * 0.9 / 500) ** 0.5)
    cut = choose_rate(rates, curve, 1.0, 1.0, chance=chance)
    assert cut.by == "kneedle" and cut.rate == pytest.approx(0.45)
    assert "up to rate 0.6" in cut.reason
    assert choose_rate(rates, curve, 1.0, 1.0, chance=1.0) == whole  # nothing at chance


@pytest.mark.parametrize("fallback_rate", [0.3, 0.33, 0.05, 0.9])
def test_choose_rate_never_keeps_rate_zero(fallback_rate):
    """Whatever the curve, a rate > 0 of the grid: the knee, the tolerance rule, or the grid
    rate nearest ``fallback_rate``."""
    rates = [i / 10 for i in range(10)]
    for curve in ([40, 10, 5, 3, 2, 1.5, 1.2, 1.1, 1.0, 1.0],  # convex
                  [50, 40, 30, 20, 10, 5, 4, 3, 2, 1],
                  [10] * 10):  # flat
        choice = choose_rate(rates, curve, 1.0, 1.0, fallback_rate)
        assert choice.rate > 0 and choice.rate in rates
    choice = choose_rate(rates, [40, 10, 5, 3, 2, 1.5, 1.2, 1.1, 1.0, 1.0], 1.0, 1.0,
                         fallback_rate)
    nearest = min((r for r in rates if r > 0), key=lambda r: (abs(r - fallback_rate), -r))
    assert (choice.rate, choice.by) == (nearest, "target")
    assert f"fallback_rate {fallback_rate:g}" in choice.reason


# ---- candidates -----------------------------------------------------------------------------
def test_exported_channel_counts_follow_the_ceil_rule_and_macs_match_the_analytic_count(
        make_context):
    teacher = build_model("resnet14", num_classes=100)
    ctx = make_context(teacher)
    base = teacher.requires_grad_(True)
    groups = channel_groups(base, X, exclude=[classifier_of(base)])
    scorer = CandidateScorer(ctx, base, X, method().cfg)
    for rate in (0.3, 0.5, 0.95):
        cut = scorer.cut({g: rate for g in groups})
        counts = {name: m.out_channels for name, m in cut.named_modules()
                  if isinstance(m, nn.Conv2d)}
        for name, m in base.named_modules():
            if isinstance(m, nn.Conv2d):
                assert counts[name] == max(1, math.ceil(round((1 - rate) * m.out_channels, 6)))
        analytic = analytic_macs(base, X, {g: kept_channel_count(g.channels, rate)
                                           for g in groups})
        full = count_macs(base, (X,))
        measured_cut = 1 - count_macs(cut, (X,)) / full
        analytic_cut = 1 - analytic / full
        assert abs(measured_cut - analytic_cut) <= 0.01
        assert deployment_problems(cut) == []
    assert kept_channel_count(10, 0.7) == 3  # (1 − 0.7)·10 = 3.0000000000000004 in floats


def test_adaptive_bn_equals_the_calibration_mean_and_keeps_weights(make_context):
    teacher = resnet8()
    ctx = make_context(teacher, pair=("resnet8", "resnet8"))
    base = teacher.requires_grad_(True)
    groups = channel_groups(base, X, exclude=[classifier_of(base)])
    scorer = CandidateScorer(ctx, base, X, method(calib_batches=3).cfg)
    candidate = scorer.cut({g: 0.5 for g in groups})
    weights = {k: t.clone() for k, t in candidate.state_dict().items()
               if "running" not in k and "num_batches" not in k}
    inputs = []
    handle = candidate.layer1[0].bn1.register_forward_hook(
        lambda m, i, o: inputs.append(i[0].detach()))
    scorer.score(candidate)
    handle.remove()
    calib = torch.cat(inputs[:3])  # the 3 calibration batches (then the held-out scoring)
    assert torch.allclose(candidate.layer1[0].bn1.running_mean, calib.mean(dim=(0, 2, 3)),
                          atol=1e-4)
    assert all(torch.equal(t, candidate.state_dict()[k]) for k, t in weights.items())


def test_holdout_is_a_disjoint_split_of_the_training_images():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2)
    split = ImageSplit(images.contiguous(), torch.arange(20))
    rest, held = holdout(split, 5, seed=0)
    assert len(held) == 5 and len(rest) == 15
    assert set(held.labels.tolist()).isdisjoint(rest.labels.tolist())
    with pytest.raises(ConfigError, match="val_images"):
        holdout(split, 20, seed=0)


# ---- the method -----------------------------------------------------------------------------
def _rows(split: ImageSplit) -> set[bytes]:
    return {img.numpy().tobytes() for img in split.images}


def test_run_reads_only_training_images_and_records_and_plots_the_curve(
        make_context, monkeypatch, tmp_path):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    ctx = dataclasses.replace(ctx, artifacts_dir=tmp_path / "artifacts")
    seen = []
    loader = ctx.loader
    monkeypatch.setattr(ctx, "loader", lambda split, **kw: seen.append(split) or loader(
        split, **kw))
    monkeypatch.setattr(ctx, "evaluate", lambda *a, **k: pytest.fail("read the test split"))
    monkeypatch.setattr(ctx, "test_loader", lambda: pytest.fail("read the test split"))
    out = method().run(ctx)

    train, test = _rows(ctx.train_split), _rows(ctx.test_split)
    assert seen and all(_rows(s) <= train and _rows(s).isdisjoint(test) for s in seen)
    calibration, held_out = seen[0], seen[1]  # the scorer's two loaders
    assert _rows(calibration).isdisjoint(_rows(held_out)) and len(held_out) == 64

    extras = out.extras
    assert [r for r, _ in extras["curves"]["all"]] == [0.0, 0.3, 0.6]
    assert extras["chosen_rates"]["all"] in (0.3, 0.6)  # never 0: the row is compressed
    assert isinstance(extras["knee_fallback"], bool)
    assert extras["candidate_scoring"]["held_out_images"] == 64
    plot = tmp_path / "artifacts" / "combine_net_curve.png"
    assert extras["curve_plot"] == str(plot) and plot.read_bytes()[:4] == b"\x89PNG"
    assert deployment_problems(out.model) == []


def test_a_convex_curve_still_gives_a_compressed_model(make_context, monkeypatch):
    """No knee (the curve falls at once) and no rate > 0 within the tolerance: the grid rate
    nearest ``fallback_rate`` is cut, never rate 0 (an unpruned, KD-retrained teacher)."""
    teacher = resnet8(1)
    ctx = make_context(teacher, pair=("resnet8", "resnet8"))
    monkeypatch.setattr(CandidateScorer, "curve", lambda self, groups, pruned: [40.0, 5.0, 4.0])
    out = method().run(ctx)
    assert out.extras["chosen_rates"]["all"] == 0.3
    assert out.extras["rate_selection"]["all"].startswith("target")
    assert out.extras["knee_fallback"] is True
    params = sum(p.numel() for p in out.model.parameters())
    assert params < sum(p.numel() for p in teacher.parameters())
    assert out.extras["analytic_macs_ratio"] < 1


def test_per_block_mode_sweeps_every_channel_group(make_context):
    ctx = make_context(resnet8(1), pair=("resnet8", "resnet8"))
    out = method(rate_mode="per_block", rates=(0.0, 0.5, 0.9), calib_batches=1,
                 val_images=32).run(ctx)
    unpruned = resnet8()
    groups = channel_groups(unpruned, X, exclude=[classifier_of(unpruned)])
    assert set(out.extras["curves"]) == {g.name for g in groups}
    assert set(out.extras["chosen_rates"]) == {g.name for g in groups}
    for name, (kept, channels) in out.extras["kept_channels"].items():
        rate = out.extras["chosen_rates"][name]
        assert kept == kept_channel_count(channels, rate)
    assert out.extras["curve_plot"] is None  # no artifacts folder given
    cut = 1 - count_macs(out.model, (X,)) / count_macs(resnet8(), (X,))
    assert abs(cut - (1 - out.extras["analytic_macs_ratio"])) <= 0.01


def test_bad_config_values_are_named():
    with pytest.raises(ConfigError, match="strictly ascending"):
        method(rates=(0.5, 0.1, 0.9))
    with pytest.raises(ConfigError, match="rate_mode must be one of"):
        method(rate_mode="per_layer")
