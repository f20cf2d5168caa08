"""LMA (methods/common/lma_activation.py, methods/lma.py): the activation's invariants (the
one- and two-segment special cases, segment boundaries and slopes, eval output independent of
the batch, 2K parameters, running statistics in the state dict), the two implementations, the
ReLU swap and a run."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import compare_latency, count_macs, inspect_model
from kdbench.benchmarks.measure.latency import LatencySetting
from kdbench.benchmarks.method import RunContext
from kdbench.benchmarks.registry import build_model
from kdbench.methods.common import kd_kl
from kdbench.methods.common.lma_activation import LMA, slope_offsets
from kdbench.methods.lma import LMAMethod, lma_kd_loss, use_lma


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomised(lma: LMA, seed: int = 0) -> LMA:
    with torch.no_grad():
        lma.slopes.copy_(torch.randn(lma.num_segments, generator=gen(seed)))
        lma.intercepts.copy_(torch.randn(lma.num_segments, generator=gen(seed + 1)))
    return lma


def with_stats(lma: LMA, mean: float, std: float) -> LMA:
    lma.running_mean.fill_(mean)
    lma.running_std.fill_(std)
    return lma.eval()


def test_one_segment_is_the_identity_in_train_and_eval():
    x = torch.randn(4, 3, 5, 5, generator=gen())
    lma = LMA(num_segments=1)
    assert torch.equal(lma(x), x)
    assert torch.equal(lma.eval()(x), x)


def test_two_segments_at_zero_parameters_are_the_mean_shifted_relu():
    x = 2.0 + torch.randn(8, 4, 6, 6, generator=gen())
    lma = LMA(num_segments=2)
    assert torch.equal(lma(x), x * (x >= x.mean()))  # train mode: the batch mean
    centred = with_stats(LMA(num_segments=2), mean=0.0, std=1.0)
    assert torch.equal(centred(x - 2.0), F.relu(x - 2.0))  # mean 0: exactly ReLU


def test_slope_offsets_are_zero_then_one():
    assert slope_offsets(8).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert slope_offsets(5).tolist() == [0, 0, 1, 1, 1]
    assert slope_offsets(1).tolist() == [1]


@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_segment_boundaries_sit_at_mean_minus_3std_plus_j_steps(impl):
    k, mean, std = 8, 0.5, 2.0
    lma = randomised(with_stats(LMA(k, impl=impl), mean, std))
    edges = [mean - 3 * std + j * 6 * std / k for j in range(1, k)]
    assert torch.allclose(lma.edges(), torch.tensor(edges))
    eps = 1e-4
    points = torch.tensor([v for e in edges for v in (e - eps, e + eps)] + [-100.0, 100.0])
    index = lma.segment_index(points, lma.running_mean, lma.running_std)
    want = [v for j in range(1, k) for v in (j - 1, j)] + [0, k - 1]
    assert index.tolist() == want
    slopes = lma.slopes + lma.slope_offsets
    expected = slopes[torch.tensor(want)] * points + lma.intercepts[torch.tensor(want)]
    assert torch.allclose(lma(points), expected)


@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_output_is_piecewise_linear_with_the_segment_slope(impl):
    k, mean, std = 6, 0.0, 1.0
    lma = randomised(with_stats(LMA(k, impl=impl), mean, std))
    step, h = 6 * std / k, 1e-3
    centres = torch.tensor([mean - 3 * std + (j + 0.5) * step for j in range(k)] + [-5.0, 5.0])
    finite_diff = (lma(centres + h) - lma(centres - h)) / (2 * h)
    slopes = (lma.slopes + lma.slope_offsets).detach()
    want = torch.cat([slopes, slopes[:1], slopes[-1:]])  # outside ±3 std: extended end segments
    assert torch.allclose(finite_diff, want, atol=1e-3)
    x = centres.clone().requires_grad_(True)
    lma(x).sum().backward()
    assert torch.allclose(x.grad, want)


def test_parameter_gradients_are_segment_sums_and_counts():
    lma = randomised(LMA(4))
    x = torch.randn(1000, generator=gen(3))
    index = lma.segment_index(x, x.mean(), x.std()).long()
    lma(x).sum().backward()
    sums = torch.zeros(4).index_add_(0, index, x)
    counts = torch.bincount(index, minlength=4).float()
    assert torch.allclose(lma.slopes.grad, sums, atol=1e-4)
    assert torch.equal(lma.intercepts.grad, counts)


def test_fused_and_naive_agree_in_output_and_gradients():
    x = torch.randn(16, 8, 10, 10, generator=gen(5))
    outs = {}
    for impl in ("fused", "naive"):
        lma = randomised(LMA(8, impl=impl))
        xi = x.clone().requires_grad_(True)
        y = lma(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs[impl] = (y.detach(), xi.grad, lma.slopes.grad, lma.intercepts.grad,
                      lma.running_mean.clone(), lma.running_std.clone())
    for a, b in zip(outs["fused"], outs["naive"], strict=True):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_channels_last_input_gives_the_same_output_and_gradients(impl):
    # The harness trains in channels_last on CUDA; a flattening view() breaks on that layout.
    x = torch.randn(4, 6, 5, 7, generator=gen(6))
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        lma = randomised(LMA(8, impl=impl))
        xi = x.clone().to(memory_format=layout).requires_grad_(True)
        y = lma(xi)
        y.square().sum().backward()
        results.append((y.detach().contiguous(), xi.grad.contiguous(), lma.slopes.grad))
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_eval_output_is_independent_of_the_batch_and_train_output_is_not():
    lma = randomised(LMA(8))
    for _ in range(3):
        lma(torch.randn(32, 4, 5, 5, generator=gen()))  # some running statistics
    x = torch.randn(4, 4, 5, 5, generator=gen(1))
    other = 10.0 + 3.0 * torch.randn(28, 4, 5, 5, generator=gen(2))
    lma.eval()
    assert torch.equal(lma(torch.cat([x, other]))[:4], lma(x))
    lma.train()
    assert not torch.allclose(lma(torch.cat([x, other]))[:4], lma(x))


def test_running_statistics_move_only_in_training_and_are_bias_corrected():
    lma = LMA(8, momentum=0.99)
    x = 3.0 + 2.0 * torch.randn(64, 8, generator=gen())
    lma.eval()(x)
    assert lma.running_mean.item() == 0.0 and lma.running_std.item() == 0.0
    lma.train()(x)
    # The first batch is the whole estimate (the authors' uncorrected EMA holds 0.01 of it).
    assert lma.running_mean.item() == pytest.approx(x.mean().item(), rel=1e-5)
    assert lma.running_std.item() == pytest.approx(x.std().item(), rel=1e-5)
    y = 3.0 + 2.0 * torch.randn(64, 8, generator=gen(1))
    lma(y)
    # Two batches: EMA weights 0.99*0.01 and 0.01, divided by 1 - 0.99^2.
    expected = (0.99 * x.mean() + y.mean()).item() / 1.99
    assert lma.running_mean.item() == pytest.approx(expected, rel=1e-5)


def test_short_training_leaves_eval_statistics_at_the_training_distribution():
    # A few hundred steps, as a CPU budget runs: the uncorrected running std would be
    # (1 - 0.99^50) = 0.39 of the batches' std and every eval segment edge would move.
    lma = LMA(8, momentum=0.99).train()
    for s in range(50):
        lma(3.0 + 2.0 * torch.randn(256, 8, generator=gen(s)))
    assert lma.running_mean.item() == pytest.approx(3.0, abs=0.05)
    assert lma.running_std.item() == pytest.approx(2.0, abs=0.05)


def test_a_state_saved_without_the_batch_counter_loads_its_statistics_unchanged():
    lma = LMA(8).train()
    lma(torch.randn(16, 10, generator=gen()))
    state = {k: v for k, v in lma.state_dict().items() if k != "num_batches_tracked"}
    restored = LMA(8)
    restored.load_state_dict(state)
    assert restored.running_std.item() == lma.running_std.item()
    restored.train()(torch.randn(16, 10, generator=gen(1)))  # a settled counter: weight 0.01
    assert restored.running_std.item() == pytest.approx(
        0.99 * lma.running_std.item() + 0.01 * torch.randn(16, 10, generator=gen(1)).std().item(),
        rel=1e-5)


def test_running_statistics_survive_a_state_dict_round_trip():
    lma = randomised(LMA(8))
    for s in range(5):
        lma(torch.randn(16, 10, generator=gen(s)) * (s + 1))
    state = lma.state_dict()
    assert {"running_mean", "running_std", "num_batches_tracked", "slope_offsets", "slopes",
            "intercepts"} <= set(state)
    restored = LMA(8)
    restored.load_state_dict(state)
    x = torch.randn(7, 10, generator=gen(9))
    assert torch.equal(restored.eval()(x), lma.eval()(x))
    assert restored.running_std.item() == lma.running_std.item() > 0


def test_each_replaced_relu_adds_exactly_2k_parameters_and_no_macs():
    plain = build_model("resnet8", num_classes=10)
    relus = sum(isinstance(m, nn.ReLU) for m in plain.modules())
    model = build_model("resnet8", num_classes=10)
    assert use_lma(model, num_segments=8) == relus == 7
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, LMA) for m in model.modules()) == relus
    added = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert added == 2 * 8 * relus
    example = (torch.randn(1, 3, 32, 32),)
    assert count_macs(model.eval(), example) == count_macs(plain.eval(), example)


def test_a_model_with_lma_exports_and_is_measured():
    plain = build_model("resnet8", num_classes=10).eval()
    model = build_model("resnet8", num_classes=10)
    use_lma(model, num_segments=4)
    model.train()(torch.randn(8, 3, 32, 32, generator=gen()))  # running statistics
    model.eval()
    report = inspect_model(model, (torch.randn(1, 3, 32, 32),))
    assert report.exported and report.problems == []
    assert report.params == sum(p.numel() for p in plain.parameters()) + 2 * 4 * 7
    timing = compare_latency(plain, model, (3, 32, 32), [LatencySetting("cpu", 1, 1)],
                             rounds=2, warmup=1, min_iters=2, max_iters=3, target_round_s=0.01)
    assert timing[0].student.round_median_ms > 0 and timing[0].speedup > 0


def test_nan_inputs_give_nan_outputs_not_an_index_error():
    lma = LMA(8)
    x = torch.tensor([1.0, float("nan"), -1.0])
    assert torch.isnan(lma.eval()(x)[1])


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="num_segments must be >= 1; got 0"):
        LMAMethod.make_config("full", {"num_segments": 0})
    with pytest.raises(ConfigError, match="impl must be one of fused, naive; got 'bucket'"):
        LMAMethod.make_config("full", {"impl": "bucket"})
    with pytest.raises(ConfigError, match=r"momentum must be in \[0, 1\); got 1.0"):
        LMAMethod.make_config("full", {"momentum": 1.0})
    with pytest.raises(ConfigError, match="kd_weight"):
        LMAMethod.make_config("full", {"kd_weight": 1.5})


def test_kd_loss_is_the_authors_weighting():
    cfg = LMAMethod.Config()
    assert (cfg.num_segments, cfg.temperature, cfg.kd_weight, cfg.momentum) == (8, 2.0, 0.7, 0.99)
    assert cfg.recipe["milestones"] == (60, 120, 160) and cfg.recipe["gamma"] == 0.2
    assert LMAMethod.make_config("smoke").recipe == {}
    s, t = torch.randn(8, 10, generator=gen()), torch.randn(8, 10, generator=gen(1))
    y = torch.arange(8)
    want = 0.7 * kd_kl(s, t, 2.0) + 0.3 * F.cross_entropy(s, y)
    assert torch.allclose(lma_kd_loss(s, t, y, 2.0, 0.7), want)


def test_a_short_run_returns_the_lma_student_and_the_relu_control(make_harness, tmp_path):
    harness = make_harness()
    train, test = harness.splits()
    torch.manual_seed(0)
    teacher = build_model("resnet14", num_classes=harness.data.num_classes).eval()
    ctx = RunContext(
        suite=harness.suite, budget=harness.budget, pair=harness.budget.pairs[0], seed=0,
        device=torch.device("cpu"), data=harness.data, workdir=tmp_path,
        log=logging.getLogger("test.lma"), teacher_provider=lambda: teacher,
        train_split=train.subset(128, seed=0), test_split=test,
    )
    cfg = LMAMethod.make_config("smoke", {"relu_control": True, "num_segments": 4,
                                          "recipe": {"epochs": 1}})
    result = LMAMethod(cfg).run(ctx)
    assert sum(isinstance(m, LMA) for m in result.model.modules()) == 7
    assert all(m.running_std.item() > 0 for m in result.model.modules() if isinstance(m, LMA))
    assert result.extras["lma_params"] == 2 * 4 * 7
    control = result.controls["relu"].model
    assert sum(isinstance(m, nn.ReLU) for m in control.modules()) == 7
    assert sum(p.numel() for p in result.model.parameters()) - sum(
        p.numel() for p in control.parameters()) == 2 * 4 * 7
