"""The leaderboard: run records aggregated over seeds into one CSV per suite and budget.

The CSV is always derived from the records, never edited by hand: rows are grouped by
suite, dataset, data source, budget, pair, deployment and method, so real and synthetic
data, or different budgets, never share a row; and a row holds one configuration hash only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from kdbench.benchmarks.atomic import UnwritableError, write_via
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.isa import MKL_BRANCH, kernels_label
from kdbench.benchmarks.measure.latency import NOISE_ORDER
from kdbench.benchmarks.records import load_failures, load_records
from kdbench.benchmarks.stats import summarize, tied, welch_p

# ``deploy`` (fp32 | int8) sits before ``method``: GROUP[:-1] is the row's comparison group.
GROUP = ["suite", "dataset", "data_source", "budget", "teacher", "student", "deploy", "method"]
RUN_COLUMNS = [*GROUP, "seed", "metric_name", "reference", "params", "macs", "params_ratio",
               "macs_ratio", "teacher_params", "teacher_macs", "method_label"]



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
    write_via(path, lambda tmp: board.to_csv(tmp, index=False, float_format="%.6g"))


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
        raise UnwritableError(lock_path, exc) from exc
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
