"""The terminal table of a leaderboard (rich), and other text for people at a terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from rich import box
from rich.markup import escape
from rich.table import Table

from kdbench.benchmarks.board import GROUP


def duration_text(seconds: float) -> str:
    """A wall time as people read it: 1h02m03s, or 4m05s under an hour."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


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
