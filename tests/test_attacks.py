"""PGD in [0, 1] pixel space and the harness's robust-accuracy evaluator."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.attacks import PGDConfig, PixelSpace, pgd, seeded_generator, to_pixels
from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.data import BatchLoader
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.evaluators import RobustConfig, evaluator_config, robust
from kdbench.benchmarks.records import load_records
from kdbench.benchmarks.registry import EVALUATORS, lookup
from kdbench.benchmarks.table import render_table

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
EPS = 8 / 255


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def trained():
    """A small CNN fitted to 64 pixel-space images (loss well below chance)."""
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(64, 3, 8, 8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    model = PixelSpace(small_cnn(), MEAN, STD)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x01), y).backward()
        opt.step()
    model.eval()
    return model, x01, y


def test_pixel_space_undoes_the_loader_normalisation():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    from kdbench.benchmarks.data import ImageSplit

    loader = BatchLoader(ImageSplit(images, torch.zeros(6, dtype=torch.long)), 6, mean=MEAN,
                         std=STD, train=False)
    batch = next(iter(loader))
    x01 = to_pixels(batch.x, MEAN, STD)
    assert torch.allclose(x01, images.float() / 255, atol=1e-6)
    model = small_cnn().eval()
    assert torch.allclose(PixelSpace(model, MEAN, STD)(x01), model(batch.x), atol=1e-5)


def test_pgd_stays_in_the_eps_ball_and_in_pixel_range(trained):
    model, x01, y = trained
    x_adv = pgd(model, x01, y, PGDConfig(eps=EPS, step_size=2 / 255, steps=10))
    assert (x_adv - x01).abs().max() <= EPS + 1e-7
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x01)


def test_pgd_raises_the_loss_of_a_trained_model_for_almost_every_image(trained):
    model, x01, y = trained
    x_adv = pgd(model, x01, y, PGDConfig(eps=EPS, step_size=2 / 255, steps=10),
                generator=seeded_generator(0, "cpu"))
    with torch.no_grad():
        clean = F.cross_entropy(model(x01), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert clean.mean() < 1.0  # the model did learn these images
    assert (adv >= clean).float().mean() >= 0.95


def test_pgd_with_zero_eps_or_no_steps_returns_x_exactly(trained):
    model, x01, y = trained
    assert torch.equal(pgd(model, x01, y, PGDConfig(eps=0.0, steps=10)), x01)
    assert torch.equal(pgd(model, x01, y, PGDConfig(eps=EPS, steps=0)), x01)


def test_pgd_runs_in_eval_mode_and_touches_no_parameter_or_statistic():
    model = PixelSpace(small_cnn(), MEAN, STD).train()
    bn = model.model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    weights = [p.clone() for p in model.parameters()]
    x01, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    pgd(model, x01, y, PGDConfig(steps=3))
    assert model.training and bn.training  # flags given back
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_random_start_is_reproducible_with_a_seeded_generator(trained):
    model, x01, y = trained
    cfg = PGDConfig(steps=2)
    a = pgd(model, x01, y, cfg, generator=seeded_generator(3, "cpu"))
    b = pgd(model, x01, y, cfg, generator=seeded_generator(3, "cpu"))
    assert torch.equal(a, b)


def test_pgd_rejects_negative_settings():
    with pytest.raises(ValueError, match="eps"):
        PGDConfig(eps=-0.1)


def _suite_with_robust(ctx, **options):
    """The context's suite/budget with the given robust-evaluator options (budget level)."""
    budget = dataclasses.replace(ctx.budget, evaluator_options={"robust": options})
    return dataclasses.replace(ctx, budget=budget)


def test_robust_evaluator_on_a_fixed_subset_records_its_settings(make_context):
    torch.manual_seed(0)
    from kdbench.benchmarks.registry import build_model

    model = build_model("resnet8", num_classes=100).eval()
    ctx = _suite_with_robust(make_context(model), n_images=20, steps=2)
    result = robust(model, ctx)
    assert result.details["n_images"] == 20
    assert result.details["steps"] == 2 and result.details["eps"] == pytest.approx(EPS)
    assert 0.0 <= result.metrics["robust_top1"] <= 100.0
    # ε = 0: robust accuracy is the clean accuracy on the same 20 images
    ctx0 = _suite_with_robust(make_context(model), n_images=20, eps=0.0)
    clean = ctx0.evaluate(model, ctx0.test_split.subset(20, seed=0))["top1"]
    assert robust(model, ctx0).metrics["robust_top1"] == pytest.approx(clean)


def test_robust_evaluator_options_are_validated(make_context):
    ctx = _suite_with_robust(make_context(nn.Identity()), n_imgs=5)
    with pytest.raises(ConfigError, match=r"n_imgs.*allowed keys.*n_images"):
        evaluator_config("robust", lookup(EVALUATORS, "robust"), ctx.suite, ctx.budget)
    assert lookup(EVALUATORS, "robust").Config is RobustConfig


def test_robust_accuracy_reaches_the_record_and_the_board(make_harness, monkeypatch, tmp_path):
    from kdbench.benchmarks.registry import build_model

    ckpt = tmp_path / "resnet14.pt"  # a user checkpoint: no teacher training in this test
    torch.save(build_model("resnet14", num_classes=100).state_dict(), ckpt)
    harness = make_harness(evaluators=["robust"], measure_latency=False,
                           teacher_checkpoints={"resnet14": str(ckpt)})
    budget = dataclasses.replace(harness.budget, evaluator_options={
        "robust": {"n_images": 10, "steps": 1}})
    monkeypatch.setattr(harness, "budget", budget)
    [path] = harness.run(["teacher"], seeds=[0])
    record = json.loads(path.read_text())
    assert 0.0 <= record["metrics"]["robust_top1"] <= 100.0
    assert record["extras"]["evaluators"]["robust"]["n_images"] == 10
    board = leaderboard(load_records(harness.results_dir, "cifar100", "smoke"))
    assert "robust_top1_mean" in board.columns
    headers = [c.header for c in render_table(board).columns]
    assert "robust" in headers  # robust_top1, shortened in the compact table
    plain = leaderboard([{**record, "metrics": {"top1": 1.0, "top5": 2.0}}])
    assert "robust" not in [c.header for c in render_table(plain).columns]


def test_unknown_evaluator_fails_before_any_run(make_harness):
    from kdbench.benchmarks.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"unknown evaluator 'robustness'.*robust"):
        make_harness(evaluators=["robustness"]).plan(["teacher"], [0])


def test_a_method_brings_the_evaluators_its_claims_need(make_harness):
    # robust_prune_kd's claims are about robust accuracy: its records carry robust_top1
    # without --evaluators robust, and asking for it too does not run it twice.
    harness = make_harness(measure_latency=False)
    suites = harness.evaluators  # the suite's own (classification)
    robust_kd, kd = harness.build_method("robust_prune_kd"), harness.build_method("kd")
    assert "robust" not in suites
    assert harness.evaluators_for(robust_kd) == (*suites, "robust")
    assert harness.evaluators_for(kd) == suites
    asked = make_harness(evaluators=["robust"], measure_latency=False)
    assert asked.evaluators_for(asked.build_method("robust_prune_kd")).count("robust") == 1
    assert "robust" in asked.evaluators_for(asked.build_method("kd"))
