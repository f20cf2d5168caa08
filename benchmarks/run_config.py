"""The configuration hash of a run: one value for everything that determines its result.

Two records are runs of the same configuration, and may be averaged into one leaderboard
row, only when their hashes are equal. The hash covers the method's resolved config (with
any variant and ``--set`` overrides), the suite as loaded (every value of its top level and
of this budget, so comments and other budgets do not count), the data fingerprint, the
teacher (``teacher_identity``) and the deploy target. The seed is not in it: the seeds of one
configuration are what a row averages. Nor are other methods' settings (the suite's and
budget's ``methods`` and ``variants``): editing one method's schedule re-runs that method only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from kdbench.benchmarks.config import Budget, SuiteConfig

HASH_CHARS = 16
# Budget fields that say how many runs to make or where, not what a run computes.
_NOT_RESULT = ("seeds", "resources", "name")
# Per-method settings (a budget's or suite's ``methods``, ``variants``): the run's own are in
# its resolved method config; another method's never change this run's result.
_PER_METHOD = ("methods", "variants")
# Suite fields that say which runs are made, where a task's code lives and what the
# regression gate does, not what a run computes.
_NOT_RESULT_SUITE = ("imports", "default_methods", "regress")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def run_config(suite: SuiteConfig, budget: Budget, method_config: dict[str, Any],
               data_fingerprint: str, teacher_sha256: str, deploy: str) -> dict[str, Any]:
    """What determines a run's result, as plain data (hashed by ``config_hash``)."""
    suite_values = {k: v for k, v in dataclasses.asdict(suite).items()
                    if k not in ("budgets", *_PER_METHOD, *_NOT_RESULT_SUITE)}
    budget_values = {k: v for k, v in dataclasses.asdict(budget).items()
                     if k not in (*_NOT_RESULT, *_PER_METHOD)}
    return {"suite": suite_values, "budget": {"name": budget.name, **budget_values},
            "method": method_config, "data": data_fingerprint, "teacher": teacher_sha256,
            "deploy": deploy}


def teacher_identity(budget: Budget, teacher_arch: str, teacher_sha256: str,
                     user_given: bool) -> str:
    """The teacher as the hash sees it: its sha256 where one checkpoint serves every seed
    (the budget's shared ``teacher_seed``, or the user's own file). A teacher the harness
    trains per seed is fixed by the hashed suite, budget and data plus the run's seed, and
    its bytes differ from seed to seed: with its sha256 in the hash, the seeds of one
    configuration would never share a row."""
    if budget.teacher_seed is None and not user_given:
        return f"{teacher_arch} trained per seed"
    return teacher_sha256


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:HASH_CHARS]
