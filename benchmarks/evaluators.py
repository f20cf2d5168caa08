"""Evaluators: the metrics the harness computes on every returned model.

Each takes the deployed model and the run context and returns named metrics (percent for
accuracies). Suites list theirs in ``evaluators``; the first produces the headline metric.
A new metric (robust accuracy, rank-1/mAP, ...) is one registered function here or in its
own module listed in the registry's locations, computed by the harness for every method.
"""

from __future__ import annotations

from torch import nn

from benchmarks.method import RunContext
from benchmarks.registry import EVALUATORS


@EVALUATORS.register_module("classification")
def classification(model: nn.Module, ctx: RunContext) -> dict[str, float]:
    """Top-1 / top-5 accuracy on the suite's test split."""
    return ctx.evaluate(model)
