"""Latency and speed-up versus the teacher, measured honestly (README.md, "What is measured").

Teacher and student are timed in the same process on the same input with the same threads,
memory format and cuDNN settings, in interleaved rounds with alternating order (T,S / S,T / ...;
interleaved trials after Abedi & Brecht, ICPE 2017).
The speed-up is the median of the per-round ratios t_teacher / t_student. Its 95 % CI is taken
over rounds, never over iterations (iterations within a round are autocorrelated): a BCa
bootstrap of the median (``scipy.stats.bootstrap``, fixed seed) from ``BOOTSTRAP_MIN_ROUNDS``
rounds on; below that, where BCa is unreliable, a normal-approximation interval of the
median (t quantile x 1.2533 s / sqrt(n), centred on the median the result reports).

Rounds are adaptive: after the requested ``rounds``, pairs of rounds (T,S then S,T) are added
until the CI half-width is at most ``target_ci`` (5 %) of the median, ``max_rounds`` (4x the
requested rounds by default) are done, or the setting has run ``max_seconds``; the result
says which ended it (``stopped_by``). A noisy machine then shows as a wider CI and more
rounds, not as a different median.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from torch import nn

from kdbench.benchmarks.measure.params import evaluating

NOISE_WARN = 0.10  # IQR/median thresholds of torch.utils.benchmark's Measurement warnings
NOISE_RERUN = 0.25
P99_MIN_SAMPLES = 1000  # below this, "p99" is just one of the few largest samples
BOOTSTRAP_MIN_ROUNDS = 8
TARGET_CI = 0.05  # adaptive rounds stop when the CI half-width is <= 5 % of the median
MAX_ROUND_FACTOR = 4  # ... or after 4x the requested rounds
MAX_SETTING_S = 60.0  # ... or after a minute on one setting
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # SE(median) / SE(mean) for normal data
BOOTSTRAP_SEED = 0
CUDA_MIN_WARMUP = 50
THROUGHPUT_BATCH = 64
NOISE_ORDER = ("ok", "warn", "rerun")


@dataclass(frozen=True)
class LatencySetting:
    """One measurement condition; applied identically to teacher and student."""

    device: str
    threads: int
    batch: int


@dataclass
class ModelLatency:
    """One model's latency under one setting."""

    stats: dict  # summarize() of all per-iteration samples pooled over rounds
    round_median_ms: float  # median over rounds of each round's median
    iters_per_round: int
    throughput_per_s: float | None  # samples/s from round_median_ms; None at batch 1


@dataclass
class LatencyResult:
    """Teacher vs student under one setting; JSON-serialisable via ``dataclasses.asdict``."""

    setting: LatencySetting
    teacher: ModelLatency
    student: ModelLatency
    speedup: float  # median of per-round t_teacher / t_student
    speedup_ci_low: float | None  # 95 % CI over rounds; None with fewer than 2 rounds
    speedup_ci_high: float | None
    # "bca-bootstrap", "median-normal" (< BOOTSTRAP_MIN_ROUNDS), "degenerate" (no spread), "none"
    speedup_ci_method: str
    round_ratios: list[float]
    rounds: int  # rounds done (the requested ones plus adaptive ones)
    warmup: int
    channels_last: bool
    teacher_noise: str  # "ok" / "warn" / "rerun" from the pooled IQR/median
    student_noise: str
    noise: str  # the worse of the two
    # what ended the rounds: "ci" (half-width <= target), "max_rounds", "time" or "fixed"
    stopped_by: str = "fixed"
    requested_rounds: int = 0


def usable_cores() -> int:
    """CPU cores this process may run on (affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_settings(device: str | torch.device = "cpu") -> list[LatencySetting]:
    """CPU: threads {1, all usable cores} x batch {1, 64}; CUDA: batch {1, 64}."""
    dev = torch.device(device)
    batches = (1, THROUGHPUT_BATCH)
    if dev.type == "cuda":
        return [LatencySetting(str(dev), usable_cores(), b) for b in batches]
    threads = sorted({1, usable_cores()})
    return [LatencySetting(str(dev), t, b) for t in threads for b in batches]


def noise_flag(iqr_over_median: float) -> str:
    """Flag an IQR/median: 'ok', 'warn' (> 0.10) or 'rerun' (> 0.25), PyTorch Timer's limits."""
    if iqr_over_median > NOISE_RERUN:
        return "rerun"
    return "warn" if iqr_over_median > NOISE_WARN else "ok"


def summarize(samples_ms: Sequence[float] | np.ndarray) -> dict:
    """Median, p90, p99 (n >= 1000 only), mean, CV, IQR/median, n and noise flag of samples."""
    a = np.asarray(samples_ms, dtype=float)
    if a.size == 0:
        raise ValueError("summarize() needs at least one latency sample")
    median = float(np.median(a))
    q1, q3 = np.percentile(a, [25, 75])
    iqr_over_median = float((q3 - q1) / median) if median > 0 else math.inf
    mean = float(a.mean())
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)) if a.size >= P99_MIN_SAMPLES else None,
        "mean_ms": mean,
        "cv": float(a.std(ddof=1) / mean) if a.size > 1 and mean > 0 else None,
        "iqr_over_median": iqr_over_median,
        "n": int(a.size),
        "noise": noise_flag(iqr_over_median),
    }


def speedup_ci(ratios: Sequence[float]) -> tuple[float | None, float | None, str]:
    """95 % CI over per-round ratios and the method used (see the module docstring)."""
    r = np.asarray(ratios, dtype=float)
    if r.size < 2:
        return None, None, "none"
    if np.all(r == r[0]):  # no spread: both methods would divide by zero
        return float(r[0]), float(r[0]), "degenerate"
    if r.size >= BOOTSTRAP_MIN_ROUNDS:
        low, high = _bca_median_ci(r)
        if np.isfinite([low, high]).all():
            return low, high, "bca-bootstrap"
    low, high = _median_normal_interval(r)
    return low, high, "median-normal"


def _bca_median_ci(r: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        # heavily tied ratios make BCa degenerate (NaN); the caller then uses median-normal
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap(
            (r,), np.median, method="BCa", confidence_level=0.95,
            random_state=np.random.default_rng(BOOTSTRAP_SEED),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _median_normal_interval(r: np.ndarray) -> tuple[float, float]:
    """The median ± t(0.975, n-1) x 1.2533 s / sqrt(n): centred where the result reports."""
    half = stats.t.ppf(0.975, r.size - 1) * MEDIAN_SE_FACTOR * r.std(ddof=1) / math.sqrt(r.size)
    median = float(np.median(r))
    return median - float(half), median + float(half)


def time_iterations(
    model: nn.Module, x: torch.Tensor, iters: int, sync: bool
) -> np.ndarray:
    """Per-iteration wall-clock ms of ``model(x)``; ``sync`` brackets each call on CUDA."""
    samples = np.empty(iters)
    for i in range(iters):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter_ns()
        model(x)
        if sync:
            torch.cuda.synchronize()
        samples[i] = (time.perf_counter_ns() - start) / 1e6
    return samples


def compare_latency(
    teacher: nn.Module,
    student: nn.Module,
    example_shape_without_batch: Sequence[int],
    settings: Sequence[LatencySetting] | None = None,
    *,
    rounds: int = 10,
    warmup: int | None = None,
    min_iters: int = 10,
    max_iters: int = 1000,
    target_round_s: float = 0.2,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
    max_rounds: int | None = None,
    target_ci: float = TARGET_CI,
    max_seconds: float = MAX_SETTING_S,
) -> list[LatencyResult]:
    """Speed-up of ``student`` over ``teacher`` per setting (default: ``default_settings``).

    Both models must already live on ``device``; they are used as they are (no copy), in eval
    mode under ``inference_mode``, and their train/eval flags, the thread count, cuDNN benchmark
    flag and (with ``channels_last``) memory format are given back afterwards. ``warmup``
    defaults to 10 iterations on CPU and 50 on CUDA, where it is never less than 50.
    ``max_rounds`` (default ``MAX_ROUND_FACTOR`` x ``rounds``; ``rounds`` itself: fixed),
    ``target_ci`` and ``max_seconds`` bound the adaptive rounds (module docstring).
    """
    dev = torch.device(device)
    if rounds < 1 or min_iters < 1 or max_iters < min_iters or target_round_s <= 0:
        raise ValueError(
            f"need rounds >= 1, 1 <= min_iters <= max_iters and target_round_s > 0; got "
            f"rounds={rounds}, min_iters={min_iters}, max_iters={max_iters}, "
            f"target_round_s={target_round_s}")
    warmup = _warmup_for(dev, warmup)
    settings = list(settings) if settings is not None else default_settings(dev)
    for s in settings:
        if torch.device(s.device).type != dev.type:
            raise ValueError(f"setting {s} is for device {s.device!r}, models are on {str(dev)!r}")
    _check_device(dev, teacher=teacher, student=student)
    max_rounds = rounds * MAX_ROUND_FACTOR if max_rounds is None else max_rounds
    if max_rounds < rounds:
        raise ValueError(f"max_rounds ({max_rounds}) must be >= rounds ({rounds})")
    plan = _Plan(rounds, warmup, min_iters, max_iters, target_round_s, channels_last,
                 max_rounds, target_ci, max_seconds)
    with evaluating(teacher, student), _memory_format(channels_last, teacher, student):
        return [_measure_setting(teacher, student, example_shape_without_batch, s, plan)
                for s in settings]


@dataclass(frozen=True)
class _Plan:
    rounds: int
    warmup: int
    min_iters: int
    max_iters: int
    target_round_s: float
    channels_last: bool
    max_rounds: int
    target_ci: float
    max_seconds: float


def _warmup_for(dev: torch.device, warmup: int | None) -> int:
    if dev.type == "cuda":
        return max(CUDA_MIN_WARMUP, warmup or 0)
    warmup = 10 if warmup is None else warmup
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (it also calibrates the round length); got {warmup}")
    return warmup


def _check_device(dev: torch.device, **models: nn.Module) -> None:
    for name, model in models.items():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type != dev.type:
                raise ValueError(
                    f"{name} has tensors on {t.device}, but latency is measured on {dev}; "
                    f"move the model first (e.g. {name}.to({str(dev)!r}))")


def _measure_setting(
    teacher: nn.Module, student: nn.Module, shape: Sequence[int], setting: LatencySetting,
    plan: _Plan,
) -> LatencyResult:
    dev = torch.device(setting.device)
    sync = dev.type == "cuda"
    x = _example_input(setting, shape, plan.channels_last)
    models = {"teacher": teacher, "student": student}
    with _threads(setting.threads), _cudnn_benchmark(sync), torch.inference_mode():
        iters = {k: _calibrate(m, x, plan, sync) for k, m in models.items()}
        start = time.perf_counter()
        per_round = _interleaved_rounds(models, x, iters, plan.rounds, sync)
        while True:
            ratios = [float(np.median(t) / np.median(s))
                      for t, s in zip(per_round["teacher"], per_round["student"], strict=True)]
            low, high, method = speedup_ci(ratios)
            stopped = _stop(ratios, low, high, plan, time.perf_counter() - start)
            if stopped:
                break
            more = _interleaved_rounds(models, x, iters, 2, sync)  # T,S then S,T: balanced
            for k in models:
                per_round[k] += more[k]
    result = {k: _model_latency(per_round[k], iters[k], setting.batch) for k in models}
    flags = {k: result[k].stats["noise"] for k in models}
    return LatencyResult(
        setting=setting, teacher=result["teacher"], student=result["student"],
        speedup=float(np.median(ratios)), speedup_ci_low=low, speedup_ci_high=high,
        speedup_ci_method=method, round_ratios=ratios, rounds=len(ratios), warmup=plan.warmup,
        channels_last=plan.channels_last, teacher_noise=flags["teacher"],
        student_noise=flags["student"], noise=max(flags.values(), key=NOISE_ORDER.index),
        stopped_by=stopped, requested_rounds=plan.rounds,
    )


def _stop(ratios: list[float], low: float | None, high: float | None, plan: _Plan,
          elapsed_s: float) -> str:
    """Why the rounds end now ("" to go on): CI narrow enough, round cap or time cap."""
    if plan.max_rounds == plan.rounds:
        return "fixed"
    median = float(np.median(ratios))
    if low is not None and high is not None and (high - low) / 2 <= plan.target_ci * median:
        return "ci"
    if len(ratios) + 2 > plan.max_rounds:
        return "max_rounds"
    if elapsed_s >= plan.max_seconds:
        return "time"
    return ""


def _example_input(
    setting: LatencySetting, shape: Sequence[int], channels_last: bool
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)  # same input for every model and run
    x = torch.randn(setting.batch, *shape, generator=gen).to(setting.device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _calibrate(model: nn.Module, x: torch.Tensor, plan: _Plan, sync: bool) -> int:
    """Warm up (excluded from results), then size a round to about ``target_round_s``."""
    warm = time_iterations(model, x, plan.warmup, sync)
    per_iter_ms = float(np.median(warm[len(warm) // 2:]))  # late warm-up: caches are hot
    wanted = plan.target_round_s * 1e3 / per_iter_ms if per_iter_ms > 0 else plan.max_iters
    return int(min(max(round(wanted), plan.min_iters), plan.max_iters))


def _interleaved_rounds(
    models: dict[str, nn.Module], x: torch.Tensor, iters: dict[str, int], rounds: int,
    sync: bool,
) -> dict[str, list[np.ndarray]]:
    """Per-round samples of each model, order alternating T,S / S,T / ..."""
    names = list(models)
    samples: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            samples[k].append(time_iterations(models[k], x, iters[k], sync))
    return samples


def _model_latency(rounds: list[np.ndarray], iters: int, batch: int) -> ModelLatency:
    round_median = float(np.median([np.median(r) for r in rounds]))
    return ModelLatency(
        stats=summarize(np.concatenate(rounds)),
        round_median_ms=round_median,
        iters_per_round=iters,
        throughput_per_s=batch / (round_median / 1e3) if batch > 1 and round_median > 0 else None,
    )


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """On CUDA, autotune convolutions (fixed shapes) for both models alike; restore after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def _memory_format(channels_last: bool, *models: nn.Module) -> Iterator[None]:
    """Convert models to channels_last for the measurement; give each 4-D tensor its layout back."""
    if not channels_last:
        yield
        return
    standard = {
        id(t): t.is_contiguous()
        for m in models for t in [*m.parameters(), *m.buffers()] if t.dim() == 4
    }
    for m in models:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in models:
            _restore_layout(m, standard)


def _restore_layout(model: nn.Module, standard: dict[int, bool]) -> None:
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if standard.get(id(t)) and not t.is_contiguous():
                t.data = t.data.contiguous()
