"""Planning a run: which methods (with which configs), pairs and seeds, checked up front.

Everything a plan names is looked up and validated here — method and variant names, method
configs with their overrides, evaluators and their settings, model names, pairs — so that bad
input fails with a clear message before any training starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kdbench.benchmarks.config import Budget, Pair, SuiteConfig
from kdbench.benchmarks.errors import ConfigError, UnknownNameError
from kdbench.benchmarks.evaluators import evaluator_config
from kdbench.benchmarks.method import Method
from kdbench.benchmarks.registry import EVALUATORS, METHODS, MODELS, known, lookup


@dataclass
class RunPlan:
    methods: list[str]
    pairs: list[Pair]
    seeds: list[int]

    @property
    def total(self) -> int:
        return len(self.methods) * len(self.pairs) * len(self.seeds)


def build_method(suite: SuiteConfig, budget: Budget, name: str,
                 overrides: Mapping[str, Mapping[str, Any]]) -> Method:
    """The method registered as ``name``, or the suite's variant ``name`` (its base
    method's settings, then the variant's config, then ``--set name.key=...``)."""
    variant = suite.variants.get(name)
    if variant is None:
        if name not in known(METHODS):
            raise UnknownNameError("method", name, [*known(METHODS), *suite.variants])
        base, variant_config = name, None
    elif name in known(METHODS):
        raise ConfigError(f"variant {name!r} of suite {suite.name!r} has the name of a "
                          "registered method; give the variant another name")
    else:
        base, variant_config = variant.method, variant.config
    cls = lookup(METHODS, base)
    cfg = cls.make_config(
        budget.name,
        suite.methods.get(base),
        budget.methods.get(base),
        variant_config,
        overrides.get(name),
        name=name,
    )
    method = cls(cfg)
    method.name = name
    if variant is not None:
        settings = ", ".join(f"{k}={v}" for k, v in variant.config.items())
        method.label = "; ".join(filter(None, (cls.label, f"{base} with {settings}")))
    return method


def evaluators_for(method: Method, evaluators: Sequence[str]) -> tuple[str, ...]:
    """The suite's and the user's ``evaluators``, then those the method's claims need."""
    return tuple(dict.fromkeys((*evaluators, *method.evaluators)))


def make_plan(suite: SuiteConfig, budget: Budget, methods: Sequence[str] | None,
              seeds: Sequence[int] | None, pairs: Sequence[Pair] | None, *,
              overrides: Mapping[str, Mapping[str, Any]], evaluators: Sequence[str]) -> RunPlan:
    """The plan of (method x pair x seed), every name and config in it validated.

    ``methods`` None: the suite's ``default_methods`` (else every registered method) and
    the budget's variants; ``seeds`` None: the
    budget's; ``pairs`` None: every pair of the budget (a sweep job runs one of them)."""
    names = list(methods) if methods else [*(suite.default_methods or known(METHODS)),
                                            *budget.variants]
    built = [build_method(suite, budget, name, overrides) for name in names]
    for evaluator in dict.fromkeys(e for m in built for e in evaluators_for(m, evaluators)):
        evaluator_config(evaluator, lookup(EVALUATORS, evaluator), suite, budget)
    for pair in budget.pairs:
        lookup(MODELS, pair.teacher)
        lookup(MODELS, pair.student)
    unused = set(overrides) - set(names)
    if unused:
        raise ConfigError(f"--set names method(s) {', '.join(sorted(unused))} that are not "
                          f"being run; running: {', '.join(names)}")
    chosen = list(budget.pairs) if pairs is None else list(pairs)
    foreign = [p.label for p in chosen if p not in budget.pairs]
    if foreign:
        raise ConfigError(f"pair(s) {', '.join(foreign)} are not pairs of the {budget.name} "
                          f"budget of suite {suite.name!r}; its pairs: "
                          f"{', '.join(p.label for p in budget.pairs)}")
    return RunPlan(names, chosen, list(seeds) if seeds is not None else list(range(budget.seeds)))
