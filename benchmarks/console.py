"""What the commands print to: the shared stderr console and the leaderboard as a table.

Used by ``kdbench`` (benchmarks/cli.py) and ``kdbench sweep`` (benchmarks/sweep.py) alike,
so neither command module imports the other.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from kdbench.benchmarks.config import SUITES_DIR, known_suites, raw_suite

console = Console(stderr=True)


def show_leaderboard(suite: str, budget: str, results_dir: Path, csv: Path | None = None,
                     metrics: tuple[str, ...] | None = None, wide: bool = False,
                     built: tuple[Any, Path] | None = None) -> int:
    """Aggregate, write and print; ``metrics``: extra table columns (default: the suite's);
    ``wide``: every column (data, pair, labels, all speed-ups, notes); ``built``: a
    (board, CSV path) just written, printed as it is."""
    from kdbench.benchmarks.board import rebuild_leaderboard
    from kdbench.benchmarks.table import render_table

    # Under a lock: concurrent runs/jobs rebuilding it at once never lose a record.
    board, path = built or rebuild_leaderboard(results_dir, suite, budget, csv)
    if metrics is None:  # read from the suite file: printing a board imports no task package
        raw = raw_suite(SUITES_DIR / f"{suite}.py") if suite in known_suites() else {}
        metrics = tuple(raw.get("table_metrics") or ())
    table = render_table(board, title=f"{suite} · {budget}", metrics=metrics, wide=wide)
    out = Console() if sys.stdout.isatty() else Console(width=log_width(table, wide))
    out.print(table)
    console.print(f"leaderboard written to {path}")
    return 0


def log_width(table: Any, wide: bool) -> int:
    """The width a log or pipe gets: the 100 columns the compact table fits; the wide table
    as wide as its columns need (every deploy track's speed-ups), up to 400, so that no
    column is squeezed to a few letters."""
    if not wide:
        return 100
    natural = Console(width=10_000).measure(table).maximum
    return min(max(natural, 200), 400)
