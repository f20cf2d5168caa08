"""Run records (one JSON per run, versioned, written atomically) and the leaderboard.

The leaderboard CSV is always derived from the records, never edited by hand: rows are
grouped by suite, dataset, data source, budget, pair and method, so real and synthetic
data, or different budgets, never share a row.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from rich.markup import escape
from rich.table import Table

from benchmarks.errors import KdbenchError
from benchmarks.stats import summarize, tied, welch_p

SCHEMA_VERSION = 1
GROUP = ["suite", "dataset", "data_source", "budget", "teacher", "student", "method"]
RUN_COLUMNS = [*GROUP, "seed", "metric_name", "reference", "params", "macs", "params_ratio",
               "macs_ratio", "teacher_params", "teacher_macs", "method_label"]


@dataclass
class RunRecord:
    """One run of one method on one pair with one seed (see DESIGN.md, "Result record")."""

    run_id: str
    created: str
    suite: str
    dataset: str
    data_source: str  # real | synthetic
    budget: str
    method: str
    teacher: str
    student: str
    seed: int
    metric_name: str  # the headline metric, e.g. top1
    metrics: dict[str, float]  # all metrics of the returned model (percent)
    accuracy_statistic: str  # which epoch the metric is from: always the last one
    teacher_metrics: dict[str, float]
    teacher_checkpoint: dict[str, str]  # sha256, source (trained|cache|user), path
    reference: str  # the row this method is compared against (teacher | scratch)
    params: int
    params_nonzero: int
    macs: int
    flops: int
    artifact_bytes: int
    teacher_params: int
    teacher_macs: int
    params_ratio: float  # student / teacher
    macs_ratio: float
    model_report: dict[str, Any]  # export status, zero filters, problems, buffers
    latency: list[dict[str, Any]]  # per setting: student/teacher stats, speed-up + CI
    wall_time_s: float
    method_label: str = ""
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # resolved method config
    recipe: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)  # git commit, torch, CPU/GPU
    test_images: int = 0  # size of the split the metrics were computed on
    schema_version: int = SCHEMA_VERSION

    @property
    def metric(self) -> float:
        return self.metrics[self.metric_name]


def record_path(results_dir: Path, suite: str, budget: str, data_source: str, method: str,
                teacher: str, student: str, seed: int) -> Path:
    """runs/<suite>/<budget>/<data source>/<method>/<teacher>-<student>/seed<N>.json: a run
    on real data never overwrites or hides one on generated data, and the reverse."""
    safe_method = method.replace("/", "_").replace(":", "+")
    return (Path(results_dir) / "runs" / suite / budget / data_source / safe_method
            / f"{teacher}-{student}" / f"seed{seed}.json")


def write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON so that a reader sees either the old file, the new file, or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_record(record: RunRecord, results_dir: Path) -> Path:
    path = record_path(results_dir, record.suite, record.budget, record.data_source,
                       record.method, record.teacher, record.student, record.seed)
    write_json_atomic(asdict(record), path)
    return path


def load_records(results_dir: Path, suite: str | None = None,
                 budget: str | None = None) -> list[dict[str, Any]]:
    """All records under ``results_dir`` (optionally one suite/budget), schema-checked."""
    root = Path(results_dir) / "runs"
    if suite:
        root = root / suite
        if budget:
            root = root / budget
    records = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KdbenchError(f"run record {path} is not valid JSON ({exc}); delete it "
                               "and re-run that run") from exc
        if data.get("schema_version") != SCHEMA_VERSION:
            raise KdbenchError(
                f"run record {path} has schema_version {data.get('schema_version')!r}; this "
                f"kdbench reads version {SCHEMA_VERSION} (re-run it or use a matching kdbench)"
            )
        if budget and data["budget"] != budget:
            continue
        records.append(data)
    return records


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} in a run record")


def latency_key(entry: dict[str, Any]) -> str:
    s = entry["setting"]
    return f"{s['device']}_t{s['threads']}_b{s['batch']}"


def runs_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run, latency flattened into ``latency_<key>_ms`` / ``speedup_<key>``."""
    rows = []
    for r in records:
        row = {k: r[k] for k in RUN_COLUMNS}
        row["metric"] = r["metrics"][r["metric_name"]]
        for name, value in r["metrics"].items():
            row[f"metric:{name}"] = value
        row["teacher_metric"] = r["teacher_metrics"].get(r["metric_name"], math.nan)
        row["notes"] = "; ".join(r.get("notes", []))
        row["test_images"] = r.get("test_images", 0)
        for entry in r.get("latency", []):
            key = latency_key(entry)
            row[f"latency_{key}_ms"] = entry["student"]["stats"]["median_ms"]
            row[f"speedup_{key}"] = entry["speedup"]
        rows.append(row)
    return pd.DataFrame(rows)


def leaderboard(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Aggregate runs over seeds: mean ± std, n, 95 % CI, delta and tie vs the reference,
    and whether each entry is statistically tied with the best of its pair."""
    runs = runs_frame(records)
    if runs.empty:
        return runs
    rows = []
    for key, grp in runs.groupby(GROUP, sort=False, dropna=False):
        s = summarize(grp["metric"].tolist())
        row = dict(zip(GROUP, key, strict=True))
        ref = grp["reference"].iloc[0]
        row.update(
            method_label=grp["method_label"].iloc[0], reference=ref, n=s.n,
            seeds=",".join(str(v) for v in sorted(grp["seed"])),
            metric_name=grp["metric_name"].iloc[0],
            metric_mean=s.mean, metric_std=s.std, ci_low=s.ci_low, ci_high=s.ci_high,
            teacher_metric_mean=grp["teacher_metric"].mean(),
            params=_structural(grp["params"]), macs=_structural(grp["macs"]),
            params_ratio=grp["params_ratio"].mean(), macs_ratio=grp["macs_ratio"].mean(),
            notes=grp["notes"].iloc[0],
        )
        for col in sorted(c for c in grp.columns if c.startswith("metric:")):
            name = col.removeprefix("metric:")
            if name != row["metric_name"]:  # e.g. top5, robust_top1: mean and std over seeds
                extra = summarize(grp[col].dropna().tolist())
                row[f"{name}_mean"], row[f"{name}_std"] = extra.mean, extra.std
        for col in sorted(c for c in grp.columns if c.startswith(("latency_", "speedup_"))):
            row[col] = grp[col].median() if col.startswith("latency_") else grp[col].mean()
        rows.append(row)
    board = pd.DataFrame(rows)
    _add_reference_columns(board, runs)
    _add_tied_with_best(board, runs)
    return board.sort_values(["suite", "budget", "data_source", "teacher", "student",
                              "metric_mean"], ascending=[True] * 5 + [False],
                             ignore_index=True)


def _structural(column: pd.Series) -> float | int:
    """Params/MACs are the same integer for every seed unless the method picks the
    structure per run (e.g. a searched pruning rate); then their mean."""
    return int(column.iloc[0]) if column.nunique() == 1 else float(column.mean())


def _values(runs: pd.DataFrame, row: pd.Series, method: str, column: str = "metric") -> list:
    mask = (runs[GROUP[:-1]] == row[GROUP[:-1]]).all(axis=1) & (runs["method"] == method)
    return runs.loc[mask, column].tolist()


def _add_reference_columns(board: pd.DataFrame, runs: pd.DataFrame) -> None:
    deltas, ties, pvals = [], [], []
    for _, row in board.iterrows():
        own = _values(runs, row, row["method"])
        if row["reference"] == "teacher":
            ref = _values(runs, row, row["method"], "teacher_metric")
        else:
            ref = _values(runs, row, row["reference"])
        if not ref or row["method"] == row["reference"]:
            deltas.append(math.nan), ties.append(None), pvals.append(math.nan)
            continue
        deltas.append(summarize(own).mean - summarize(ref).mean)
        ties.append(tied(own, ref))
        pvals.append(welch_p(own, ref))
    board["delta_vs_reference"] = deltas
    board["p_vs_reference"] = pvals
    board["tied_with_reference"] = pd.Series(ties, index=board.index, dtype=object)


def _add_tied_with_best(board: pd.DataFrame, runs: pd.DataFrame) -> None:
    flags: list[bool | None] = [None] * len(board)
    pair_keys = GROUP[:-1]
    for _, grp in board.groupby(pair_keys, sort=False, dropna=False):
        candidates = grp[grp["method"] != "teacher"]
        if candidates.empty:
            continue
        best = candidates.loc[candidates["metric_mean"].idxmax()]
        best_vals = _values(runs, best, best["method"])
        for idx, row in candidates.iterrows():
            flags[idx] = True if idx == best.name else tied(
                _values(runs, row, row["method"]), best_vals)
    board["tied_with_best"] = pd.Series(flags, index=board.index, dtype=object)


def leaderboard_path(results_dir: Path, suite: str, budget: str) -> Path:
    return Path(results_dir) / "leaderboard" / f"{suite}_{budget}.csv"


def write_leaderboard(board: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        board.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fmt(value: float, spec: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


TABLE_SPEEDUPS = ("speedup_cpu_t1_b1", "speedup_cuda_t1_b1")  # the rest is in the CSV
# Opt-in metrics shown in every suite's table whenever some run has them.
TABLE_METRICS_WHEN_PRESENT = ("robust_top1",)


def render_table(board: pd.DataFrame, title: str = "", metrics: Sequence[str] = ()) -> Table:
    """A readable terminal table of a leaderboard (rich); the CSV has every column.

    ``metrics`` names further metrics (besides the headline) to show as mean columns.
    """
    table = Table(title=title, show_lines=False)
    speed_cols = [c for c in board.columns if c in TABLE_SPEEDUPS or (
        c.startswith("speedup_cpu_t") and c.endswith("_b64") and c != "speedup_cpu_t1_b64")]
    extra = [m for m in dict.fromkeys((*metrics, *TABLE_METRICS_WHEN_PRESENT))
             if f"{m}_mean" in board.columns]
    for col in ["data", "pair", "method", "n", "metric (mean ± std)", *extra, "Δ vs ref", "params×",
                "MACs×", *[c.removeprefix("speedup_").replace("_", " ") + " speed-up"
                           for c in speed_cols], "notes"]:
        table.add_column(col, overflow="fold")
    best = {}
    for idx, r in board.iterrows():
        key = tuple(r[k] for k in GROUP[:-1])
        if r["method"] != "teacher" and (key not in best or
                                         r["metric_mean"] > board.loc[best[key], "metric_mean"]):
            best[key] = idx
    for idx, r in board.iterrows():
        metric = f"{_fmt(r['metric_mean'])} ± {_fmt(r['metric_std'])}"
        tie = " best" if idx in best.values() else (
            " (tied best)" if r["tied_with_best"] is True else "")
        delta = _fmt(r["delta_vs_reference"], "+.2f")
        if not math.isnan(r["delta_vs_reference"]):
            delta += f" vs {r['reference']}" + (" (tied)" if r["tied_with_reference"] else "")
        table.add_row(
            r["data_source"], f"{r['teacher']}→{r['student']}",
            escape(r["method"] + (f" [{r['method_label']}]" if r["method_label"] else "")),
            str(r["n"]), f"{r['metric_name']} {metric}{tie}",
            *[_fmt(r[f"{m}_mean"]) for m in extra], delta,
            _fmt(r["params_ratio"], ".3f"), _fmt(r["macs_ratio"], ".3f"),
            *[_fmt(r[c], ".2f") + "×" for c in speed_cols], escape(r["notes"]),
        )
    return table
