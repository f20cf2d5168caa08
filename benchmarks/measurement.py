"""Measuring a returned model: its size and MACs, and its latency against the teacher.

One function, :func:`measure_model`, for every task: the harness calls it for each model a
method returns, whatever the task (classification, ReID, detection). The rules it follows are
the project's measurement rules (README.md, "What is measured"): MACs and parameters of the
model as deployed (physically compressed, on CPU, eval mode), latency with warm-up, explicit
threads, medians and tails, the speed-up against the teacher timed in the same process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdbench.benchmarks.config import LatencyConfig
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.measure import (
    LatencyResult,
    LatencySetting,
    ModelReport,
    compare_latency,
    default_settings,
    inspect_model,
)


class ContractError(KdbenchError):
    """A method broke the plugin contract (e.g. returned a masked, not pruned, model)."""


class DeployedView(nn.Module):
    """A model whose ``forward`` is one of its other methods (e.g. ReID's ``embed``)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(x)


def deployed(model: nn.Module, forward: str, name: str, suite: str) -> nn.Module:
    """``model`` as a suite deploys it: its ``forward`` or another method (``forward``)."""
    if forward == "forward":
        return model
    if not callable(getattr(model, forward, None)):
        raise ContractError(
            f"suite {suite!r} deploys model.{forward}(x), but the model of {name!r} "
            f"({type(model).__name__}) has no {forward}() method")
    return DeployedView(model, forward)


def settings_for(device: str, batch_sizes: Sequence[int]) -> list[LatencySetting]:
    """The default latency settings (threads x batch) of ``device`` at ``batch_sizes``."""
    return [s for s in default_settings(device) if s.batch in batch_sizes]


def time_against(teacher: nn.Module, model: nn.Module, input_shape: Sequence[int],
                 cfg: LatencyConfig, device: str = "cpu") -> list[LatencyResult]:
    """Latency of ``model`` and its speed-up over ``teacher`` on ``device``, timed the way
    the budget's latency section says (both models already on ``device``)."""
    return compare_latency(teacher, model, input_shape, settings_for(device, cfg.batch_sizes),
                           device=device, rounds=cfg.rounds, warmup=cfg.warmup,
                           min_iters=cfg.min_iters, max_iters=cfg.max_iters,
                           target_round_s=cfg.target_round_s)


@dataclass
class Measurement:
    """What the harness measured of one model: its report, the teacher's, and latency."""

    report: ModelReport
    teacher_report: ModelReport
    example: tuple[torch.Tensor, ...]  # the input it was counted at (batch 1)
    latency: list[LatencyResult] = field(default_factory=list)


def count(model: nn.Module, example: tuple[torch.Tensor, ...], what: str) -> ModelReport:
    """Params, MACs and bytes of ``model``; an uncountable model is a contract error."""
    report = inspect_model(model, example)
    if report.macs is None:
        raise ContractError(f"could not count the MACs of {what} ({report.macs_error}); "
                            "the leaderboard needs them")
    return report


def measure_model(model: nn.Module, teacher: nn.Module, input_shape: Sequence[int], *,
                  latency: LatencyConfig | None, what: str,
                  teacher_report: ModelReport | None = None,
                  on_device: tuple[nn.Module, nn.Module, torch.device] | None = None,
                  ) -> Measurement:
    """Measure ``model`` against ``teacher``, both deployed CPU modules in eval mode.

    ``latency`` None skips timing. ``teacher_report`` reuses a report counted before (the
    teacher is the same for every method). ``on_device`` = (teacher, model, device): the
    same pair on an accelerator, timed there too when the latency section asks for it.
    """
    example = (torch.randn(1, *input_shape),)
    report = count(model, example, what)
    t_report = teacher_report or inspect_model(teacher, example)
    timings: list[LatencyResult] = []
    if latency is not None:
        timings = time_against(teacher, model, input_shape, latency, "cpu")
        if on_device is not None and latency.cuda and on_device[2].type == "cuda":
            gpu_teacher, gpu_model, device = on_device
            timings += time_against(gpu_teacher, gpu_model, input_shape, latency, str(device))
    return Measurement(report, t_report, example, timings)
