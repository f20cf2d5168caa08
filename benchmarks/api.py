"""The Python API: run a suite from code and get its leaderboard back as a DataFrame.

``kdbench run`` is a thin layer over :func:`run` (it adds the console output); a notebook
or a script calls it directly::

    import kdbench
    result = kdbench.run(suite="digits", methods=["kd"], budget="smoke", seeds=1)
    result.board      # the leaderboard (pandas DataFrame), as written to its CSV
    result.records    # the run records (dicts) of the planned methods and seeds

How the runs are carried out (where results go, device, deployments, ``force``, ...) is one
:class:`benchmarks.options.RunOptions`, given whole (``options=``) or by its fields
(``results_dir=..., force=True``), as ``kdbench run``'s options are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdbench.benchmarks.config import SuiteConfig, load_suite
from kdbench.benchmarks.errors import ConfigError, RunsFailedError
from kdbench.benchmarks.options import RunOptions

if TYPE_CHECKING:
    from kdbench.benchmarks.runner import Harness, RunPlan


@dataclass
class RunResult:
    """What :func:`run` returns: the suite's whole leaderboard and this run's records."""

    board: pd.DataFrame
    records: list[dict[str, Any]]
    leaderboard_csv: Path
    written: list[Path] = field(default_factory=list)  # records written by this call


def seed_list(seeds: int | Sequence[int] | None) -> list[int] | None:
    """``3`` means seeds 0, 1, 2; a sequence means exactly those seeds; None: the budget's."""
    if seeds is None:
        return None
    if isinstance(seeds, int):
        if seeds < 1:
            raise ConfigError(f"seeds as a count must be at least 1, got {seeds}; to run one "
                              f"seed {seeds}, pass a list: seeds=[{seeds}]")
        return list(range(seeds))
    chosen = [int(s) for s in seeds]
    if not chosen or any(s < 0 for s in chosen):
        raise ConfigError(f"seeds must be a count >= 1 or a non-empty list of seeds >= 0, "
                          f"got {list(seeds)!r}")
    return chosen


def run(
    suite: str | SuiteConfig,
    methods: Sequence[str] | None = None,
    *,
    budget: str = "smoke",
    seeds: int | Sequence[int] | None = None,
    options: RunOptions | None = None,
    on_plan: Callable[[Harness, RunPlan], None] | None = None,
    **changes: Any,
) -> RunResult:
    """Run ``methods`` (None: every method of the suite) on ``suite`` at ``budget``.

    ``options`` (default: :class:`RunOptions`' defaults) with ``changes``, any of its fields
    (``results_dir``, ``cache_dir``, ``force``, ``device``, ``deploy``, ``evaluators``,
    ``measure_latency``, ``method_overrides``, ...), say how. Runs that already have a record
    of the same configuration are skipped, as on the command line, unless ``force``. A run
    that fails raises :class:`RunsFailedError` after the others finished; their records are
    on disk and on the board.
    """
    from kdbench.benchmarks import distributed
    from kdbench.benchmarks.board import leaderboard_path, rebuild_leaderboard
    from kdbench.benchmarks.records import load_records
    from kdbench.benchmarks.runner import Harness

    if isinstance(methods, str):
        raise ConfigError(f"methods takes a list of names, e.g. [{methods!r}], not a string")
    options = RunOptions.of(options, **changes)
    config = load_suite(suite) if isinstance(suite, str) else suite
    results = options.results_dir
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    harness = Harness(config, budget, options)
    plan = harness.plan(methods, seed_list(seeds))
    if on_plan is not None:
        on_plan(harness, plan)
    try:
        written = harness.run(plan.methods, plan.seeds)
    except RunsFailedError:
        if distributed.current().primary and load_records(results, config.name, budget):
            rebuild_leaderboard(results, config.name, budget)
        raise
    if not distributed.current().primary:  # under torchrun, rank 0 writes the board
        return RunResult(board=pd.DataFrame(), records=[],
                         leaderboard_csv=leaderboard_path(results, config.name, budget))
    board, csv = rebuild_leaderboard(results, config.name, budget)
    planned = set(plan.methods)
    records = [r for r in load_records(results, config.name, budget)
               if r["method"].split(":")[0] in planned and r["seed"] in plan.seeds]
    return RunResult(board=board, records=records, leaderboard_csv=csv, written=written)
