"""Tests of benchmarks.measure: MAC counting, what a deployed model is, latency, fingerprint.

No test asserts how fast anything runs: timing goals belong to benchmarks, not tests. Latency
tests check the procedure (interleaving, statistics, state restored) with fakes where needed.
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
import torchvision
from ptflops import get_model_complexity_info
from scipy import stats
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune
from torchprofile import profile_macs

from kdbench.benchmarks.measure import (
    LatencySetting,
    assert_deployable,
    compare_latency,
    count_flops,
    count_macs,
    default_settings,
    fingerprint,
    inspect_model,
    summarize,
)
from kdbench.benchmarks.measure import latency as latency_mod
from kdbench.benchmarks.measure.latency import speedup_ci, usable_cores

# --------------------------------------------------------------------------- models


class SmallCNN(nn.Module):
    """Plain, depthwise and grouped convs, a residual add, a custom activation, functional ops."""

    def __init__(self) -> None:
        super().__init__()
        # no conv biases: ptflops' aten backend adds bias MACs, which would be 1/9 extra
        # on a depthwise 3x3 conv and blur the 1 % comparison
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.grouped = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4, bias=False)
        self.pointwise = nn.Conv2d(32, 32, 1, bias=False)
        self.fc_weight = nn.Parameter(torch.randn(10, 32) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.depthwise(x)
        x = self.pointwise(self.grouped(x))
        x = x * torch.sigmoid(x)
        return F.linear(x.mean((2, 3)), self.fc_weight)


class MLP(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                         nn.Linear(64, 10))


class ConvNet(nn.Module):
    """conv-BN-ReLU x2 + linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class TinyResNet(nn.Module):
    """A stem and one residual block: channel pruning must keep the add's inputs coupled."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(width))
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.fc(x.mean((2, 3)))


class AttentionBlock(nn.Module):
    """LayerNorm -> qkv -> F.scaled_dot_product_attention -> proj."""

    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MHABlock(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@torch.compiler.disable
def _opaque_double(x: torch.Tensor) -> torch.Tensor:
    return 2 * x


class NeedsNonStrict(nn.Module):
    """Strict (dynamo) export refuses the disabled helper; it also carries an unused head."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.aux_head = nn.Linear(4, 100)  # e.g. a distillation projector, not deployed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _opaque_double(self.lin(x))


class DataDependent(nn.Module):
    """Branches on a tensor value: neither strict nor non-strict export can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(self.bn(x))
        return y if y.sum() > 0 else -y


# ------------------------------------------------------------------ MACs cross-check

N_TOKENS, DIM, HEADS = 16, 64, 4
# qkv + proj linears, then q@k^T and attn@v over all heads
ATTENTION_MACS = N_TOKENS * DIM * 3 * DIM + N_TOKENS * DIM * DIM + 2 * N_TOKENS**2 * DIM
# what torchprofile's trace may call a conv/linear/matmul/attention node; its other handlers
# (norms, pooling, mul) count ops outside the leaderboard's op set (README.md, "What is
# measured": conv, linear/matmul, attention)
MATMUL_LIKE_OPS = {
    "aten::_convolution", "aten::linear", "aten::matmul", "aten::addmm", "aten::bmm",
    "aten::baddbmm", "aten::scaled_dot_product_attention",
}


def ptflops_macs(model: nn.Module, input_res: tuple[int, ...]) -> int:
    # backend="aten" counts exactly mm/matmul/addmm/bmm/convolution (plus biases), the
    # leaderboard's op set; "pytorch" (the code's default, despite ptflops' README) also
    # counts BN/activations/pooling and misses functional ops. Always pass it explicitly.
    # deepcopy: ptflops leaves its forward hooks on the model's children.
    macs, _ = get_model_complexity_info(copy.deepcopy(model), input_res, as_strings=False,
                                        print_per_layer_stat=False, backend="aten")
    assert macs is not None, "ptflops failed (it prints the error and returns None)"
    return int(macs)


def torchprofile_macs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No handlers found" for ops outside the op set
        per_node = profile_macs(copy.deepcopy(model).eval(), inputs, reduction=None)
    return sum(macs for node, macs in per_node.items() if node.operator in MATMUL_LIKE_OPS)


@pytest.mark.parametrize(
    ("build", "input_res"),
    [
        (SmallCNN, (3, 32, 32)),
        (lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32)),
        (MLP, (256,)),
    ],
    ids=["small-cnn", "resnet18", "mlp"],
)
def test_macs_agree_with_ptflops_and_torchprofile(build, input_res):
    torch.manual_seed(0)
    model = build().eval()
    inputs = (torch.randn(1, *input_res),)
    macs = count_macs(model, inputs)
    assert macs > 0
    assert count_flops(model, inputs) == 2 * macs
    assert macs == pytest.approx(ptflops_macs(model, input_res), rel=0.01)
    assert macs == pytest.approx(torchprofile_macs(model, inputs), rel=0.01)


def test_sdpa_attention_counted_linear_plus_attention():
    model = AttentionBlock(DIM, HEADS).eval()
    x = torch.randn(1, N_TOKENS, DIM)
    with torch.inference_mode():  # the grad mode must not change what is counted
        assert count_macs(model, (x,)) == ATTENTION_MACS
    assert torchprofile_macs(model, (x,)) == pytest.approx(ATTENTION_MACS, rel=0.01)


def test_multihead_attention_fast_path_not_counted_as_zero():
    model = MHABlock(DIM, HEADS).eval()
    x = torch.randn(1, N_TOKENS, DIM)
    with torch.no_grad():  # eval + no_grad is where nn.MultiheadAttention takes its fused path
        assert count_macs(model, (x,)) == ATTENTION_MACS


# ------------------------------------------------------------------------ params


def unique_numel(tensors) -> int:
    return sum(t.numel() for t in {id(t): t for t in tensors}.values())


def image(batch: int = 1, size: int = 16) -> tuple[torch.Tensor]:
    return (torch.randn(batch, 3, size, size),)


def test_prune_masked_model_is_flagged_then_zero_filters_after_remove():
    torch.manual_seed(0)
    model = ConvNet(width=8)
    dense = inspect_model(model, image())
    prune.ln_structured(model.conv1, "weight", amount=0.5, n=2, dim=0)

    masked = inspect_model(model, image())
    text = "\n".join(masked.problems)
    assert "conv1: parameter 'weight_orig'" in text
    assert "conv1: buffer 'weight_mask'" in text
    assert "conv1: forward pre-hook" in text
    with pytest.raises(ValueError, match="weight_orig"):
        assert_deployable(model)

    prune.remove(model.conv1, "weight")
    removed = inspect_model(model, image())
    assert removed.problems == []
    assert_deployable(model)
    assert removed.zero_filters == 4
    assert removed.zero_filters_by_layer == {"conv1": 4}
    # masking saves nothing: same dense parameter and MAC counts, only zeros inside
    assert (removed.params, removed.macs) == (dense.params, dense.macs)
    assert removed.params_nonzero == dense.params_nonzero - 4 * 3 * 3 * 3
    assert removed.nonzero_fraction < 1.0


def test_hooks_and_parametrizations_are_problems():
    model = ConvNet()
    handles = [model.conv2.register_forward_hook(lambda m, i, o: None),
               model.register_forward_pre_hook(lambda m, i: None)]
    parametrizations.weight_norm(model.fc)
    problems = "\n".join(inspect_model(model, image()).problems)
    assert "conv2: forward hook" in problems
    assert "<root>: forward pre-hook" in problems
    assert "fc: parametrized tensors (weight)" in problems

    for handle in handles:
        handle.remove()
    parametrize.remove_parametrizations(model.fc, "weight")
    assert_deployable(model)


def test_torch_pruning_physical_pruning_shrinks_counts():
    torch.manual_seed(0)
    model = TinyResNet(width=16).eval()
    inputs = image()
    dense = inspect_model(model, inputs)
    pruner = tp.pruner.BasePruner(
        model, inputs[0], importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=[model.fc],
    )
    pruner.step()
    assert model.stem[0].out_channels == 8  # physically removed, not masked

    pruned = inspect_model(model, inputs)
    assert pruned.exported and pruned.problems == []
    assert pruned.zero_filters == 0
    assert pruned.params < dense.params
    assert pruned.macs < dense.macs / 2
    assert pruned.params == unique_numel(model.parameters())


def test_exported_params_match_unique_parameters_and_tied_weight_once():
    model = ConvNet()
    report = inspect_model(model, image())
    assert report.exported and report.export_strict
    assert report.params == report.params_module == unique_numel(model.parameters())
    # only tensors the graph reads: eval-mode BN never reads num_batches_tracked
    read_buffers = [b for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")]
    assert report.buffers == unique_numel(read_buffers)
    assert report.artifact_bytes > 0 and report.state_dict_bytes > 0
    json.dumps(asdict(report))

    tied = Tied()
    report = inspect_model(tied, (torch.randn(2, 16),))
    with_duplicates = sum(p.numel() for _, p in tied.named_parameters(remove_duplicate=False))
    assert report.exported
    assert report.params == unique_numel(tied.parameters()) == with_duplicates - 16 * 16


def test_non_strict_fallback_recorded_and_unused_parameters_not_counted():
    model = NeedsNonStrict()
    report = inspect_model(model, (torch.randn(2, 4),))
    assert report.exported and report.export_strict is False
    assert report.export_error.startswith("strict:")
    assert report.params == 4 * 4 + 4  # what the graph reads
    assert report.params_module == report.params + 4 * 100 + 100


def test_unexportable_model_still_counted_and_state_restored():
    model = DataDependent().train()
    model.bn.eval()
    inputs = (torch.randn(2, 4),)
    report = inspect_model(model, inputs)
    assert not report.exported
    assert "strict" in report.export_error and "non-strict" in report.export_error
    assert report.params == unique_numel(model.parameters())
    assert report.macs == 2 * 4 * 4  # counted on real tensors when meta cannot branch
    assert report.artifact_bytes is None
    assert (model.training, model.lin.training, model.bn.training) == (True, True, False)
    json.dumps(asdict(report))


# ----------------------------------------------------------------------- latency


def test_summarize_known_values():
    s = summarize(np.arange(1.0, 101.0))
    assert s["median_ms"] == 50.5
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] is None  # 100 samples: no honest p99
    assert s["mean_ms"] == 50.5
    assert s["cv"] == pytest.approx(np.std(np.arange(1.0, 101.0), ddof=1) / 50.5)
    assert s["iqr_over_median"] == pytest.approx((75.25 - 25.75) / 50.5)
    assert s["n"] == 100

    big = summarize(np.arange(1.0, 1001.0))
    assert big["p99_ms"] == pytest.approx(990.01)
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize(
    ("samples", "flag"),
    [
        ([90, 95, 100, 105, 110], "ok"),  # IQR/median exactly 0.10
        ([90, 94.9, 100, 105, 110], "warn"),
        ([80, 87.5, 100, 112.5, 120], "warn"),  # exactly 0.25
        ([80, 87.4, 100, 112.5, 120], "rerun"),
    ],
)
def test_summarize_noise_flag_thresholds(samples, flag):
    assert summarize(samples)["noise"] == flag


class Recorder(nn.Module):
    """Identity that logs its name, thread count, grad mode and train flag on every call."""

    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.inner = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append((self.name, torch.get_num_threads(), torch.is_inference_mode_enabled(),
                         self.training or self.inner.training))
        return x


CPU1 = LatencySetting("cpu", threads=1, batch=1)


def test_rounds_interleave_with_alternating_order():
    log: list = []
    teacher, student = Recorder("T", log), Recorder("S", log)
    [res] = compare_latency(teacher, student, (4,), [CPU1], rounds=4, warmup=1, min_iters=2,
                            max_iters=2, target_round_s=1e-3)
    names = [entry[0] for entry in log]
    assert names[:2] == ["T", "S"]  # warm-up / calibration
    # adaptive rounds come in (T,S)(S,T) pairs: the alternation holds for every round
    assert res.rounds % 2 == 0 and 4 <= res.rounds <= 16
    per_round = [["T", "T", "S", "S"], ["S", "S", "T", "T"]] * (res.rounds // 2)
    assert names[2:] == [n for r in per_round for n in r]


def scripted_timer(monkeypatch, times: dict[nn.Module, list[float]]) -> None:
    """Replace the per-round timer: each call returns the model's next scripted time."""

    def fake(model, x, iters, sync):
        return np.full(iters, times[model].pop(0))

    monkeypatch.setattr(latency_mod, "time_iterations", fake)


def test_speedup_is_median_of_round_ratios_with_a_ci_centred_on_it(monkeypatch):
    teacher, student = nn.Identity(), nn.Identity()
    student_ms = [5.0, 4.0, 2.0, 5.0, 2.5]  # teacher always 10 ms: ratios 2, 2.5, 5, 2, 4
    scripted_timer(monkeypatch, {teacher: [10.0] * 6, student: [5.0, *student_ms]})
    [res] = compare_latency(teacher, student, (4,), [CPU1], rounds=5, warmup=1, min_iters=3,
                            max_iters=3, max_rounds=5)
    ratios = [2.0, 2.5, 5.0, 2.0, 4.0]
    assert res.round_ratios == ratios
    assert res.speedup == 2.5 and res.stopped_by == "fixed" and res.rounds == 5
    # Below 8 rounds: a normal-approximation interval of the median, centred on it.
    half = stats.t.ppf(0.975, 4) * math.sqrt(math.pi / 2) * np.std(ratios, ddof=1) / math.sqrt(5)
    assert res.speedup_ci_method == "median-normal"
    assert res.speedup_ci_low == pytest.approx(2.5 - half, rel=1e-12)
    assert res.speedup_ci_high == pytest.approx(2.5 + half, rel=1e-12)
    assert res.teacher.round_median_ms == 10.0 and res.student.round_median_ms == 4.0
    assert res.student.iters_per_round == 3 and res.student.stats["n"] == 15
    assert res.teacher.throughput_per_s is None  # batch 1: latency, not throughput
    json.dumps(asdict(res))


def test_bootstrap_ci_for_many_rounds_and_degenerate_cases():
    ratios = [2.1, 2.3, 2.0, 2.6, 2.2, 2.4, 2.25, 1.9, 2.35, 2.15]
    low, high, method = speedup_ci(ratios)
    assert method == "bca-bootstrap"
    assert low < np.median(ratios) < high
    expected = stats.bootstrap((np.array(ratios),), np.median, method="BCa",
                               random_state=np.random.default_rng(0)).confidence_interval
    assert (low, high) == (expected.low, expected.high)
    assert speedup_ci(ratios) == (low, high, method)  # fixed seed: reproducible
    assert speedup_ci([3.0] * 10) == (3.0, 3.0, "degenerate")
    assert speedup_ci([3.0]) == (None, None, "none")


def test_threads_inference_mode_and_train_state_restored():
    log: list = []
    teacher, student = Recorder("T", log).train(), Recorder("S", log).train()
    student.inner.eval()
    threads_before = torch.get_num_threads()
    wanted = 2 if threads_before != 2 else 1
    setting = LatencySetting("cpu", threads=wanted, batch=64)
    [res] = compare_latency(teacher, student, (4,), [setting], rounds=2, warmup=1,
                            min_iters=1, max_iters=1)
    assert {entry[1:] for entry in log} == {(wanted, True, False)}
    assert torch.get_num_threads() == threads_before
    assert (teacher.training, teacher.inner.training) == (True, True)
    assert (student.training, student.inner.training) == (True, False)
    assert res.teacher.throughput_per_s > 0


def test_state_restored_when_a_model_raises():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    teacher = Broken().train()
    threads_before = torch.get_num_threads()
    wanted = 2 if threads_before != 2 else 1
    with pytest.raises(RuntimeError, match="boom"):
        compare_latency(teacher, nn.Identity(), (4,), [LatencySetting("cpu", wanted, 1)],
                        rounds=1, warmup=1)
    assert torch.get_num_threads() == threads_before and teacher.training


def test_channels_last_applied_to_input_and_model_then_undone():
    seen = []

    class Probe(nn.Conv2d):
        def forward(self, x):
            cl = torch.channels_last
            seen.append((x.is_contiguous(memory_format=cl), self.weight.is_contiguous(
                memory_format=cl) and not self.weight.is_contiguous()))
            return super().forward(x)

    teacher, student = Probe(3, 8, 3), Probe(3, 4, 3)
    compare_latency(teacher, student, (3, 8, 8), [CPU1], rounds=2, warmup=1, min_iters=1,
                    max_iters=1, channels_last=True)
    assert seen and all(x_cl and w_cl for x_cl, w_cl in seen)
    assert teacher.weight.is_contiguous() and student.weight.is_contiguous()


def test_default_settings_and_device_checks():
    cores = usable_cores()
    cpu = default_settings("cpu")
    assert {(s.threads, s.batch) for s in cpu} == {(t, b) for t in {1, cores} for b in (1, 64)}
    assert {s.batch for s in default_settings("cuda")} == {1, 64}
    with pytest.raises(ValueError, match="device"):
        compare_latency(nn.Identity(), nn.Identity(), (4,), [LatencySetting("cuda", 1, 1)])
    with pytest.raises(ValueError, match="rounds"):
        compare_latency(nn.Identity(), nn.Identity(), (4,), [CPU1], rounds=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device: the GPU timing path (synchronize, cudnn.benchmark, "
                           "50-iteration warm-up, inputs on the device) needs one")
def test_cuda_timing_path_synchronizes_and_restores_settings(monkeypatch):
    syncs = []
    real_sync = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: syncs.append(1) or real_sync())
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = []

    class Probe(nn.Conv2d):
        def forward(self, x):
            seen.append((x.device.type, torch.backends.cudnn.benchmark))
            return super().forward(x)

    teacher, student = Probe(3, 32, 3).cuda(), Probe(3, 8, 3).cuda()
    [res] = compare_latency(teacher, student, (3, 32, 32), [LatencySetting("cuda", 1, 1)],
                            rounds=2, warmup=5, min_iters=3, max_iters=3, device="cuda")
    assert res.warmup == 50  # never fewer on CUDA
    assert len(seen) == 2 * (50 + 2 * 3)
    assert set(seen) == {("cuda", True)}
    assert len(syncs) == 2 * len(seen)  # before and after every timed call
    assert torch.backends.cudnn.benchmark is False
    assert res.speedup > 0 and math.isfinite(res.speedup)


# ------------------------------------------------------------------- fingerprint


def test_fingerprint_keys_and_json():
    fp = fingerprint()
    expected = {
        "cpu_model", "logical_cores", "usable_cores", "isa_flags", "caches", "os", "python",
        "torch", "torch_cuda", "cudnn", "gpus", "torch_num_threads", "parallel_info",
        "git_commit",
    }
    assert expected <= fp.keys()
    assert fp["torch"] == torch.__version__
    assert fp["usable_cores"] == usable_cores() >= 1
    assert fp["torch_num_threads"] == torch.get_num_threads()
    assert fp["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", fp["git_commit"])
    assert json.loads(json.dumps(fp)) == fp


def _sleepy(ms: float, slow_round: int | None = None):
    """A model taking ``ms`` per call; with ``slow_round``, 10x slower during that round's
    calls (an injected burst of load)."""
    state = {"calls": 0}

    class Sleepy(nn.Module):
        def forward(self, x):
            state["calls"] += 1
            calls = state["calls"] - 1  # after the one warm-up call: 3 per round
            slow = slow_round is not None and slow_round * 3 < calls <= (slow_round + 1) * 3
            time.sleep(ms * (10 if slow else 1) / 1e3)
            return x

    return Sleepy()


def test_an_injected_slow_round_widens_the_ci_instead_of_moving_the_median():
    kwargs = dict(rounds=6, warmup=1, min_iters=3, max_iters=3, max_rounds=6)
    [quiet] = compare_latency(_sleepy(10.0), _sleepy(5.0), (4,), [CPU1], **kwargs)
    [loaded] = compare_latency(_sleepy(10.0), _sleepy(5.0, slow_round=3), (4,), [CPU1],
                               **kwargs)
    assert loaded.speedup == pytest.approx(quiet.speedup, rel=0.15)  # the median holds
    def width(r):
        return r.speedup_ci_high - r.speedup_ci_low

    assert width(loaded) > width(quiet)  # the noise shows in the interval


def test_adaptive_rounds_stop_at_the_target_ci_or_the_cap():
    [steady] = compare_latency(_sleepy(4.0), _sleepy(2.0), (4,), [CPU1], rounds=4, warmup=1,
                               min_iters=3, max_iters=3)
    assert steady.stopped_by in ("ci", "max_rounds") and steady.requested_rounds == 4
    if steady.stopped_by == "ci":
        half = (steady.speedup_ci_high - steady.speedup_ci_low) / 2
        assert half <= 0.05 * steady.speedup
    [capped] = compare_latency(_sleepy(4.0), _sleepy(2.0, slow_round=2), (4,), [CPU1],
                               rounds=4, warmup=1, min_iters=3, max_iters=3, max_rounds=6,
                               target_ci=1e-9)
    assert capped.stopped_by == "max_rounds" and capped.rounds == 6
