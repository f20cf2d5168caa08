"""Evaluators: the metrics the harness computes on every returned model.

Each takes the deployed model and the run context and returns named metrics (percent for
accuracies). Suites list theirs in ``evaluators``; the first produces the headline metric.
A new metric (robust accuracy, rank-1/mAP, ...) is one registered function here or in its
own module listed in the registry's locations, computed by the harness for every method.

An evaluator may instead return an ``Evaluation``: its metrics plus the settings they were
measured with, which the harness keeps in the record's ``extras["evaluators"]``. One with
settings names a dataclass in its ``Config`` attribute; suites set them in
``evaluator_options`` (suite-wide, then per budget), unknown keys being errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdbench.benchmarks.attacks import PGDConfig, PixelSpace, pgd, seeded_generator, to_pixels
from kdbench.benchmarks.config import Budget, SuiteConfig, from_mapping
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure.params import evaluating
from kdbench.benchmarks.method import RunContext
from kdbench.benchmarks.registry import EVALUATORS, lookup


@dataclass
class Evaluation:
    """Metrics plus the settings that produced them."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


def as_evaluation(result: Mapping[str, float] | Evaluation) -> Evaluation:
    """An evaluator's result as an ``Evaluation`` (a plain metric dict has no details)."""
    return result if isinstance(result, Evaluation) else Evaluation(dict(result))


def evaluator_config(name: str, evaluator: Any, suite: SuiteConfig, budget: Budget) -> Any:
    """The evaluator's ``Config`` built from the suite's, then the budget's, options.

    None for an evaluator without settings; unknown keys are errors naming the allowed ones.
    """
    options = {**suite.evaluator_options.get(name, {}), **budget.evaluator_options.get(name, {})}
    config_cls = getattr(evaluator, "Config", None)
    if config_cls is None:
        if options:
            raise ConfigError(f"evaluator {name!r} takes no settings, but evaluator_options "
                              f"gives it {', '.join(sorted(options))}")
        return None
    return from_mapping(config_cls, options, f"evaluator_options of evaluator {name!r}")


@EVALUATORS.register_module("classification")
def classification(model: nn.Module, ctx: RunContext) -> dict[str, float]:
    """Top-1 / top-5 accuracy on the suite's test split."""
    return ctx.evaluate(model)


@dataclass(frozen=True)
class RobustConfig:
    """PGD-20 at ε = 8/255, step 2/255: the robust-pruning literature's evaluation attack."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 20
    random_start: bool = True
    n_images: int | None = None  # a fixed class-balanced subset of the test split; None: all
    seed: int = 0  # fixes the subset and the random start: every model meets the same attack


@EVALUATORS.register_module("robust")
def robust(model: nn.Module, ctx: RunContext) -> Evaluation:
    """Top-1 accuracy (percent) under an L∞ PGD attack in [0, 1] pixel space.

    The model is attacked and scored in eval mode, with the data's normalisation inside
    the attacked model so that ε is in pixel units. Opt-in (``kdbench run --evaluators
    robust``): PGD-20 costs about 21 forward/backward passes per image.
    """
    config: RobustConfig = evaluator_config("robust", robust, ctx.suite, ctx.budget)
    attack = PGDConfig(eps=config.eps, step_size=config.step_size, steps=config.steps,
                       random_start=config.random_start)
    split = ctx.test_split.subset(config.n_images, seed=config.seed)
    pixel_model = PixelSpace(model, ctx.data.mean, ctx.data.std).to(ctx.device)
    generator = seeded_generator(config.seed, ctx.device)
    correct = 0
    with evaluating(model):
        for batch in ctx.loader(split, train=False):
            x01 = to_pixels(batch.x, ctx.data.mean, ctx.data.std)
            x_adv = pgd(pixel_model, x01, batch.y, attack, generator=generator)
            with torch.no_grad():
                correct += int((pixel_model(x_adv).argmax(dim=1) == batch.y).sum())
    details = {**dataclasses.asdict(config), "n_images": len(split), "attack": "pgd-linf"}
    return Evaluation({"robust_top1": 100.0 * correct / max(1, len(split))}, details)


robust.Config = RobustConfig  # type: ignore[attr-defined]


def run_evaluators(names: Sequence[str], model: nn.Module,
                   ctx: RunContext) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Metrics of ``model`` and, per evaluator that reports them, the settings used."""
    metrics: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    for name in names:
        result = as_evaluation(lookup(EVALUATORS, name)(model, ctx))
        metrics.update(result.metrics)
        if result.details:
            details[name] = result.details
    return metrics, details


def evaluate_all(names: Sequence[str], model: nn.Module, ctx: RunContext) -> dict[str, float]:
    """Metrics of ``model`` from each named evaluator (registered in ``EVALUATORS``)."""
    return run_evaluators(names, model, ctx)[0]
