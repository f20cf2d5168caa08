"""Run records (one JSON per run, versioned, written atomically) and the leaderboard.

The leaderboard CSV is always derived from the records, never edited by hand: rows are
grouped by suite, dataset, data source, budget, pair and method, so real and synthetic
data, or different budgets, never share a row; and a row holds one configuration hash only.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock
from rich import box
from rich.markup import escape
from rich.table import Table

from benchmarks.errors import KdbenchError
from benchmarks.isa import MKL_BRANCH, kernels_label
from benchmarks.measure.latency import NOISE_ORDER
from benchmarks.stats import summarize, tied, welch_p

SCHEMA_VERSION = 1
# ``deploy`` (fp32 | int8) sits before ``method``: GROUP[:-1] is the row's comparison group.
GROUP = ["suite", "dataset", "data_source", "budget", "teacher", "student", "deploy", "method"]
RUN_COLUMNS = [*GROUP, "seed", "metric_name", "reference", "params", "macs", "params_ratio",
               "macs_ratio", "teacher_params", "teacher_macs", "method_label"]


@dataclass
class RunRecord:
    """One run of one method on one pair with one seed (see README.md, "Results")."""

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
    # sha256, source (trained|cache|user), path, seed, shared_by_seeds
    teacher_checkpoint: dict[str, Any]
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
    # How the model is deployed: "fp32" (eager, as returned) or "int8" (PT2E + torch.compile,
    # timed against the compiled fp32 teacher); deploy_status is "ok" or "failed: <why>".
    deploy: str = "fp32"
    deploy_status: str = "ok"
    bits_per_weight: float = 32.0  # stored bits per weight element of the deployed artifact
    # Bytes of the stored tensors alone (weights, buffers, quantization scales), without the
    # program's graph and example input (about half of a small int8 program's file); the
    # board's size× compares these with the teacher's.
    weight_bytes: int | None = None
    teacher_weight_bytes: int | None = None
    macs_dtype: str = "fp32"  # what the MACs run as: the float graph's MACs, in this dtype
    # benchmarks.run_config: the hash of everything that determines the result (not the seed)
    config_hash: str = ""
    # benchmarks.artifacts: the measured model as model.pt2 + model.safetensors (path, sha256)
    artifacts: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    status: str = "ok"  # a failed run is a FailedRun record, never on the leaderboard

    @property
    def metric(self) -> float:
        return self.metrics[self.metric_name]


@dataclass
class FailedRun:
    """A run that stopped with an error (e.g. a NaN loss): kept for ``kdbench sweep
    --status`` and the user, next to where its record would be; it has no metrics."""

    run_id: str
    created: str
    suite: str
    dataset: str
    data_source: str
    budget: str
    method: str
    teacher: str
    student: str
    seed: int
    error: str
    error_type: str
    environment: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    status: str = "failed"


def duration_text(seconds: float) -> str:
    """A wall time as people read it: 1h02m03s, or 4m05s under an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def record_path(results_dir: Path, suite: str, budget: str, data_source: str, method: str,
                teacher: str, student: str, seed: int, deploy: str = "fp32") -> Path:
    """runs/<suite>/<budget>/<data source>/<method>/<teacher>-<student>/seed<N>.json: a run
    on real data never overwrites or hides one on generated data, and the reverse. Other
    deployments of the same run sit next to it as seed<N>.<deploy>.json."""
    safe_method = method.replace("/", "_").replace(":", "+")
    suffix = "" if deploy == "fp32" else f".{deploy}"
    return (Path(results_dir) / "runs" / suite / budget / data_source / safe_method
            / f"{teacher}-{student}" / f"seed{seed}{suffix}.json")


def failure_path(record: Path) -> Path:
    """Where the failure of the run whose record is ``record`` is kept (seedN.failed.json)."""
    return record.with_name(f"{record.stem}.failed.json")


def _unwritable(path: Path, exc: OSError) -> KdbenchError:
    """A read-only or full results directory, said plainly; the old file is untouched."""
    what = "no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (
        exc.strerror or str(exc))
    return KdbenchError(f"cannot write {path}: {what}; the results directory must be writable "
                        "and have free space (nothing there was changed)")


def write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON so that a reader sees either the old file, the new file, or none."""
    text = json.dumps(data, indent=2, sort_keys=True, default=_json_default)
    write_text_atomic(text, path)


def replaced_path(record: Path, run_id: str) -> Path:
    """Where a record replaced by a newer run (``--force``, another configuration) is kept."""
    return record.with_name(f"{record.stem}.replaced-{run_id}.json")


def write_text_atomic(text: str, path: Path) -> None:
    """Write a text file so that a reader sees the old file, the new one, or none."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the old file
        os.replace(tmp, path)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_record(record: RunRecord, results_dir: Path) -> Path:
    """Write ``record``; a record it replaces is kept beside it, marked ``replaced``."""
    path = record_path(results_dir, record.suite, record.budget, record.data_source,
                       record.method, record.teacher, record.student, record.seed, record.deploy)
    if path.is_file():
        try:
            old = read_record(path)
        except KdbenchError:  # unreadable: kept aside as it is, never read as a record
            os.replace(path, path.with_name(f"{path.name}.unreadable"))
            old = {"run_id": record.run_id}
        if old.get("run_id") != record.run_id:
            old.update(status="replaced", replaced_by=record.run_id)
            write_json_atomic(old, replaced_path(path, old.get("run_id", "unknown")))
    write_json_atomic(asdict(record), path)
    failure_path(path).unlink(missing_ok=True)  # an earlier failed attempt is superseded
    return path


def write_failure(failed: FailedRun, results_dir: Path) -> Path:
    """Record a failed run beside its (absent or earlier) record; it never replaces one."""
    path = failure_path(record_path(results_dir, failed.suite, failed.budget,
                                    failed.data_source, failed.method, failed.teacher,
                                    failed.student, failed.seed))
    write_json_atomic(asdict(failed), path)
    return path


def load_records(results_dir: Path, suite: str | None = None,
                 budget: str | None = None) -> list[dict[str, Any]]:
    """All records under ``results_dir`` (optionally one suite/budget), schema-checked."""
    return [record for _, record in record_paths(results_dir, suite, budget)]


def record_paths(results_dir: Path, suite: str | None = None,
                 budget: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The successful records under ``results_dir`` with their files, as ``load_records``."""
    root = Path(results_dir) / "runs"
    if suite:
        root = root / suite
        if budget:
            root = root / budget
    found = []
    for path in sorted(root.rglob("*.json")):
        data = read_record(path)
        if data.get("status", "ok") != "ok":  # failed or replaced runs are not on the board
            continue
        if budget and data["budget"] != budget:
            continue
        found.append((path, data))
    return found


# What every successful record has; a file without them is not a run record.
_RECORD_KEYS = ("suite", "budget", "method", "teacher", "student", "seed", "metrics",
                "metric_name", "teacher_metrics", "params", "macs")


def read_record(path: Path) -> dict[str, Any]:
    """One run record (or failed/replaced run) from ``path``, checked to be one."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise KdbenchError(f"run record {path} is not valid JSON ({exc}); delete it "
                           "and re-run that run") from exc
    except UnicodeDecodeError as exc:
        raise KdbenchError(f"run record {path} is not a text file; delete it and re-run "
                           "that run") from exc
    if not isinstance(data, dict):
        raise KdbenchError(f"run record {path} holds a JSON {type(data).__name__}, not a run "
                           "record (an object); delete it and re-run that run")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise KdbenchError(
            f"run record {path} has schema_version {data.get('schema_version')!r}; this "
            f"kdbench reads version {SCHEMA_VERSION} (re-run it or use a matching kdbench)"
        )
    missing = [k for k in _RECORD_KEYS if k not in data]
    if data.get("status", "ok") == "ok" and missing:
        raise KdbenchError(f"run record {path} is not a complete run record: it lacks "
                           f"{', '.join(missing)}; delete it and re-run that run")
    return data


def load_failures(results_dir: Path, suite: str, budget: str) -> list[dict[str, Any]]:
    """The failed runs of ``suite``/``budget`` that no later record has superseded."""
    root = Path(results_dir) / "runs" / suite / budget
    failures = []
    for path in sorted(root.rglob("*.failed.json")):
        data = read_record(path)
        if not path.with_name(path.name.replace(".failed.json", ".json")).is_file():
            failures.append(data)
    return failures


def _failed_rows(failures: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One board row per failed (method, pair): its runs failed, so it has no number."""
    rows = {}
    for f in failures:
        key = tuple(f.get(k, "fp32") if k == "deploy" else f[k] for k in GROUP)
        row = rows.setdefault(key, {**dict(zip(GROUP, key, strict=True)), "n": 0, "seeds": [],
                                    "status": "failed", "notes": ""})
        row["seeds"].append(str(f["seed"]))
        row["notes"] = f"failed: {f['error_type']}: {f['error']}"[:300]
    for row in rows.values():
        row["seeds"] = ",".join(sorted(row["seeds"]))
    return pd.DataFrame(list(rows.values()))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} in a run record")


def latency_key(entry: dict[str, Any]) -> str:
    """cpu_t1_b64 (eager), cpu_compiled_t1_b64 (torch.compile): the modes never share a column."""
    s = entry["setting"]
    mode = "" if s.get("mode", "eager") == "eager" else f"_{s['mode']}"
    return f"{s['device']}{mode}_t{s['threads']}_b{s['batch']}"


def runs_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per run, latency flattened into ``latency_<key>_ms`` / ``speedup_<key>``."""
    rows = []
    for r in records:
        row = {k: r.get(k, "fp32") if k == "deploy" else r[k] for k in RUN_COLUMNS}
        # a failed deployment (deploy_status "failed: ...") has no metrics: NaN, not a number
        row["metric"] = r["metrics"].get(r["metric_name"], math.nan)
        row["deploy_status"] = r.get("deploy_status", "ok")
        row["bits_per_weight"] = r.get("bits_per_weight", 32.0)
        row["artifact_bytes"] = r.get("artifact_bytes")
        row["weight_bytes"] = r.get("weight_bytes")
        row["size_ratio"] = (r["weight_bytes"] / r["teacher_weight_bytes"]
                             if r.get("weight_bytes") and r.get("teacher_weight_bytes")
                             else math.nan)
        row["macs_dtype"] = r.get("macs_dtype", "fp32")
        for name, value in r["metrics"].items():
            row[f"metric:{name}"] = value
        row["teacher_metric"] = r["teacher_metrics"].get(r["metric_name"], math.nan)
        row["notes"] = "; ".join(r.get("notes", []))
        row["test_images"] = r.get("test_images", 0)
        env = r.get("environment") or {}
        row["isa"] = kernels_label(env.get("aten_cpu_capability"),
                                   (env.get("kernel_env") or {}).get(MKL_BRANCH))
        row["config_hash"] = r.get("config_hash", "")
        row["teacher_sha256"] = (r.get("teacher_checkpoint") or {}).get("sha256", "")
        row["created"] = r.get("created", "")
        for entry in r.get("latency", []):
            key = latency_key(entry)
            row[f"latency_{key}_ms"] = entry["student"]["stats"]["median_ms"]
            row[f"speedup_{key}"] = entry["speedup"]
            # the speed-up's 95 % CI over the run's rounds and its noise flag (ok|warn|rerun)
            row[f"ci_low_speedup_{key}"] = entry.get("speedup_ci_low")
            row[f"ci_high_speedup_{key}"] = entry.get("speedup_ci_high")
            row[f"noise_speedup_{key}"] = entry.get("noise", "ok")
        rows.append(row)
    return _one_configuration_per_row(pd.DataFrame(rows))


def _one_configuration_per_row(runs: pd.DataFrame) -> pd.DataFrame:
    """A row averages one configuration: where a method's runs have several config hashes
    (an edited suite, a ``--set``, another teacher), the configuration of its newest record
    keeps the method's name and each other one becomes its own row, ``method#<hash>``."""
    if runs.empty:
        return runs
    for _, grp in runs.groupby(GROUP, sort=False, dropna=False):
        if grp["config_hash"].nunique() < 2:
            continue
        newest = grp.sort_values("created")["config_hash"].iloc[-1]
        for cfg, runs_of_cfg in grp.groupby("config_hash"):
            if cfg != newest:
                label = f"{runs_of_cfg['method'].iloc[0]}#{cfg[:8] or 'unhashed'}"
                runs.loc[runs_of_cfg.index, "method"] = label
                runs.loc[runs_of_cfg.index, "notes"] = runs_of_cfg["notes"].map(
                    lambda n, c=cfg, m=newest: "; ".join(filter(None, (
                        f"another configuration (config_hash {c or 'none'}; the method's "
                        f"current one is {m})", n))))
    return runs


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
            metric_name=grp["metric_name"].iloc[0], config_hash=grp["config_hash"].iloc[0],
            teacher_sha256=",".join(sorted(set(grp["teacher_sha256"]) - {""})),
            metric_mean=s.mean, metric_std=s.std, ci_low=s.ci_low, ci_high=s.ci_high,
            teacher_metric_mean=grp["teacher_metric"].mean(),
            params=_structural(grp["params"]), macs=_structural(grp["macs"]),
            params_ratio=grp["params_ratio"].mean(), macs_ratio=grp["macs_ratio"].mean(),
            notes=grp["notes"].iloc[0],
            deploy_status=grp["deploy_status"].iloc[0], macs_dtype=grp["macs_dtype"].iloc[0],
            bits_per_weight=grp["bits_per_weight"].mean(),
            artifact_bytes=_structural(grp["artifact_bytes"]),
            weight_bytes=_structural(grp["weight_bytes"]) if grp["weight_bytes"].notna().all()
            else math.nan, size_ratio=grp["size_ratio"].mean(),
        )
        for col in sorted(c for c in grp.columns if c.startswith("metric:")):
            name = col.removeprefix("metric:")
            if name != row["metric_name"]:  # e.g. top5, robust_top1: mean and std over seeds
                extra = summarize(grp[col].dropna().tolist())
                row[f"{name}_mean"], row[f"{name}_std"] = extra.mean, extra.std
        for col in sorted(c for c in grp.columns if c.startswith(("latency_", "speedup_"))):
            row[col] = grp[col].median()  # the median over seeds, as within a run
        # A speed-up's CI: the envelope of its seeds' CIs; its noise flag: the worst seed's
        # (a `rerun` flag is never averaged away).
        for col in sorted(c for c in grp.columns if c.startswith("ci_low_speedup_")):
            row[col] = pd.to_numeric(grp[col], errors="coerce").min()
        for col in sorted(c for c in grp.columns if c.startswith("ci_high_speedup_")):
            row[col] = pd.to_numeric(grp[col], errors="coerce").max()
        for col in sorted(c for c in grp.columns if c.startswith("noise_speedup_")):
            flags = [f for f in grp[col] if isinstance(f, str)]
            row[col] = max(flags, key=NOISE_ORDER.index, default=None)
        rows.append(row)
    board = pd.DataFrame(rows)
    _add_reference_columns(board, runs)
    _add_tied_with_best(board, runs)
    # Each method's deployments side by side (fp32, then int8), methods ranked by their fp32 row.
    fp32 = board["metric_mean"].where(board["deploy"] == "fp32")
    rank = fp32.groupby([board[c] for c in [*GROUP[:-2], "method"]], dropna=False,
                        sort=False).transform("max").fillna(board["metric_mean"])
    return board.assign(_rank=rank).sort_values(
        ["suite", "budget", "data_source", "teacher", "student", "_rank", "method", "deploy"],
        ascending=[True] * 5 + [False, True, True], ignore_index=True).drop(columns="_rank")


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
        # rows without a metric (a failed int8 deployment) are never the best, nor is a
        # single-seed row: with n = 1 there is no spread to be best or tied with
        candidates = grp[(grp["method"] != "teacher") & grp["metric_mean"].notna()
                         & (grp["n"] >= 2)]
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
    """Write the CSV atomically: a reader sees the previous board or this one, never part."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        board.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def rebuild_leaderboard(results_dir: Path, suite: str, budget: str,
                        csv: Path | None = None) -> tuple[pd.DataFrame, Path]:
    """Aggregate the records now on disk into the leaderboard CSV, under a lock.

    Concurrent jobs each write their own record and then rebuild: the lock makes every
    rebuild read the records and replace the CSV as one step, so the last rebuild has
    every record written before it (no stale board overwrites a newer one).
    """
    path = csv or leaderboard_path(results_dir, suite, budget)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path)
        lock.acquire()
    except OSError as exc:
        raise _unwritable(lock_path, exc) from exc
    try:
        records = load_records(results_dir, suite, budget)
        if not records:
            raise KdbenchError(f"no run records for suite {suite!r}, budget {budget!r} under "
                               f"{results_dir}/runs; run `kdbench run --suite {suite} "
                               f"--budget {budget}` first")
        board = leaderboard(records).assign(status="ok")
        failed = _failed_rows(load_failures(results_dir, suite, budget))
        if not failed.empty:  # shown as failed, without a number
            board = pd.concat([board, failed], ignore_index=True)
        write_leaderboard(board, path)
    finally:
        lock.release()
    return board, path


def _fmt(value: float, spec: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


# the rest is in the CSV; compiled (int8 rows) and eager columns are never merged
TABLE_SPEEDUPS = ("speedup_cpu_t1_b1", "speedup_cpu_compiled_t1_b1", "speedup_cpu_ort_t1_b1",
                  "speedup_cuda_t1_b1")
# Opt-in metrics shown in every suite's table whenever some run has them.
TABLE_METRICS_WHEN_PRESENT = ("robust_top1",)


def render_table(board: pd.DataFrame, title: str = "", metrics: Sequence[str] = (),
                 wide: bool = False) -> Table:
    """A terminal table of a leaderboard (rich) that fits 100 columns; the CSV has every column.

    Compact by default: the data source and pair go to the title when the board has one of
    each, one speed-up column (1 thread, batch 1), no labels or notes. ``wide`` adds them all.
    ``metrics`` names further metrics (besides the headline) to show as mean columns.
    Marks: ``best`` the best row of its pair (n >= 2), ``≈best`` tied with it (Welch),
    ``≈`` after a Δ: tied with the reference.
    """
    sources = board["data_source"].dropna().unique()
    pairs = board[["teacher", "student"]].drop_duplicates()
    show_pair = wide or len(pairs) > 1
    show_source = wide or len(sources) > 1
    if not show_pair and len(pairs):
        title = f"{title} · {pairs.iloc[0]['teacher']}→{pairs.iloc[0]['student']}"
    if not show_source and len(sources):
        title = f"{title} · {sources[0]} data"
    speed_cols = [c for c in board.columns if c in TABLE_SPEEDUPS or (
        wide and c.startswith(("speedup_cpu_t", "speedup_cpu_compiled_t", "speedup_cpu_ort_t"))
        and c.endswith(("_b1", "_b64")))]
    # Compact: one speed-up column, each row's own runtime track at 1 thread, batch 1
    # (eager for fp32, compiled for int8, onnxruntime for onnx rows; CUDA when that is all).
    tracks = [c for c in TABLE_SPEEDUPS if c in board.columns and board[c].notna().any()]
    speed_cols = list(dict.fromkeys(speed_cols if wide else tracks[:1]))
    extra = [m for m in dict.fromkeys((*metrics, *TABLE_METRICS_WHEN_PRESENT))
             if f"{m}_mean" in board.columns]
    metric_name = board["metric_name"].dropna().iloc[0] if board["metric_name"].notna().any() \
        else "metric"
    caption = "" if wide else "; ".join(filter(None, (
        speed_cols and "speed-up: teacher latency / model latency, 1 thread, batch 1, in "
        "the row's runtime (eager; compiled for int8; onnxruntime for onnx)",
        "±: half-width of its 95 % CI, ⚠: noisy timing (re-run)",
        "size×: stored weight bytes vs the teacher's (int8: 1 byte a weight)",
        "Δ vs ref: T the teacher, S scratch; ≈ tied (Welch p ≥ 0.05)", "--wide: every column")))
    table = Table(title=title.strip(" ·"), caption=caption or None, box=box.SIMPLE_HEAD,
                  expand=False, collapse_padding=True,
                  pad_edge=False, padding=(0, 1), show_lines=False)
    headers = [*(["data"] if show_source else []), *(["pair"] if show_pair else []),
               "method", "n", f"{metric_name} ± std",
               *[m if wide else m.removesuffix("_top1") for m in extra], "Δ vs ref",
               "params×", "MACs×", "size×",
               *(["speed-up"] if speed_cols and not wide else
                 [c.removeprefix("speedup_").replace("_", " ") + " ×" for c in speed_cols]),
               *(["notes"] if wide else [])]
    for col in headers:
        # Numbers never wrap; a method name folds onto at most two lines (the longest,
        # e.g. robust_prune_kd:magnitude_adv_ft, is 32 characters), a note as it must.
        table.add_column(col, overflow="fold", no_wrap=col not in ("method", "notes"),
                         min_width=17 if col == "method" else None)
    for _, r in board.iterrows():
        lead = [*([r["data_source"]] if show_source else []),
                *([f"{r['teacher']}→{r['student']}"] if show_pair else [])]
        method = r["method"] + _deploy_label(r) + (
            f" [{r['method_label']}]" if wide and r.get("method_label") else "")
        if r.get("status", "ok") == "failed":
            table.add_row(*lead, escape(method), "0", f"failed (seeds {r['seeds']})",
                          *[""] * (len(headers) - len(lead) - 3 - (1 if wide else 0)),
                          *([escape(str(r["notes"]))] if wide else []))
            continue
        mark = "" if r["tied_with_best"] is not True else (
            " best" if _is_best(board, r) else " ≈best")
        delta = _fmt(r["delta_vs_reference"], "+.2f")
        if not math.isnan(r["delta_vs_reference"]):
            ref = r["reference"] if wide else _REF_ABBREV.get(r["reference"], r["reference"])
            delta += f" {ref}" + (" ≈" if r["tied_with_reference"] else "")
        table.add_row(
            *lead, escape(method), str(r["n"]),
            f"{_fmt(r['metric_mean'])} ± {_fmt(r['metric_std'])}{mark}",
            *[_fmt(r[f"{m}_mean"]) for m in extra], delta,
            _fmt(r["params_ratio"], ".3f"), _fmt(r["macs_ratio"], ".3f"),
            _fmt(r.get("size_ratio", math.nan), ".3f"),
            *([speedup_cell(r, c) for c in speed_cols] if wide else
              [speedup_cell(r, next((c for c in tracks if pd.notna(r.get(c))), speed_cols[0]))]
              if speed_cols else []),
            *([escape("; ".join(filter(None, (_deploy_failure(r), str(r["notes"])))))]
              if wide else []),
        )
    return table


_REF_ABBREV = {"teacher": "T", "scratch": "S"}  # the compact table's Δ reference marks


def speedup_cell(row: pd.Series, column: str) -> str:
    """``1.90×±0.30⚠``: the speed-up, its CI half-width, ⚠ when a seed's timing was noisy."""
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    key = column.removeprefix("speedup_")
    low, high = row.get(f"ci_low_speedup_{key}"), row.get(f"ci_high_speedup_{key}")
    cell = f"{value:.2f}×"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        cell += f"±{(high - low) / 2:.2f}"
    return cell + ("⚠" if row.get(f"noise_speedup_{key}") in ("warn", "rerun") else "")


def _is_best(board: pd.DataFrame, row: pd.Series) -> bool:
    """Whether ``row`` is the best (n >= 2, not the teacher) of its comparison group."""
    same = (board[GROUP[:-1]] == row[GROUP[:-1]]).all(axis=1) & (board["method"] != "teacher")
    same &= board["n"] >= 2
    if "status" in board:
        same &= board["status"].fillna("ok") == "ok"
    group = board[same]
    return not group.empty and row["metric_mean"] == group["metric_mean"].max()


def _deploy_label(row: pd.Series) -> str:
    """' · int8' for a non-fp32 deployment (its MACs are the float graph's, run in int8)."""
    deploy = row.get("deploy", "fp32")
    return "" if deploy == "fp32" or not isinstance(deploy, str) else f" · {deploy}"


def _deploy_failure(row: pd.Series) -> str:
    status = row.get("deploy_status", "ok")
    return "" if status == "ok" or not isinstance(status, str) else f"{row['deploy']} {status}"
