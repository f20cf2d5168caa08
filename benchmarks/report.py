"""Leaderboard reports people look at: a markdown table, a static HTML page, Pareto plots.

Everything is derived from the leaderboard frame (itself derived from run records). Each
data source gets its own table and plots, and synthetic-data rows say so wherever they
appear, so nobody mistakes generated-data numbers for dataset numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written in CI and on servers

import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment
from markupsafe import Markup
from matplotlib.ticker import EngFormatter, NullFormatter

from kdbench.benchmarks import claims as claim_tables
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.table import speedup_cell

PAIR = ["teacher", "student"]
SYNTHETIC_LABEL = "SYNTHETIC data (generated stand-in): not comparable with dataset numbers"


def _num(value: object, spec: str = ".2f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _flag(value: object) -> str:
    return {True: "yes", False: "no"}.get(value, "–")  # type: ignore[arg-type]


def source_label(source: str) -> str:
    return SYNTHETIC_LABEL if source == "synthetic" else f"{source} data"


def by_source(board: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    for source, rows in board.groupby("data_source", sort=True):
        yield str(source), rows


def speedup_columns(board: pd.DataFrame) -> list[str]:
    return sorted(c for c in board.columns if c.startswith("speedup_"))


def extra_metric_columns(board: pd.DataFrame) -> list[str]:
    """``<name>_mean`` columns of metrics other than the headline one (top5, robust_top1...)."""
    return sorted(c for c in board.columns if c.endswith("_mean")
                  and c not in ("metric_mean", "teacher_metric_mean"))


# ---- markdown ---------------------------------------------------------------------------
def markdown(board: pd.DataFrame, suite: str, budget: str) -> str:
    """GitHub-flavoured markdown, one table per data source (for READMEs and PR comments)."""
    parts = [f"## kdbench · {suite} · {budget}"]
    for source, rows in by_source(board):
        parts.append(f"**{source_label(source)}**")
        speed = speedup_columns(rows)
        header = ["pair", "method", "n", f"{rows['metric_name'].iloc[0]} (mean ± std)",
                  "95% CI", "Δ vs ref", "tied best", "params×", "MACs×", "size×",
                  *[c.removeprefix("speedup_") + " speed-up" for c in speed]]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in rows.iterrows():
            delta = _num(r["delta_vs_reference"], "+.2f")
            if delta != "–":
                delta += f" vs {r['reference']}"
            cells = [f"{r['teacher']}→{r['student']}", _method_name(r), str(r["n"]),
                     f"{_num(r['metric_mean'])} ± {_num(r['metric_std'])}",
                     f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]", delta,
                     _flag(r["tied_with_best"]), _num(r["params_ratio"], ".3f"),
                     _num(r["macs_ratio"], ".3f"), _num(r.get("size_ratio"), ".3f"),
                     *[speedup_cell(r, c) for c in speed]]
            lines.append("| " + " | ".join(claim_tables.md_cell(c) for c in cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _method_name(r: pd.Series) -> str:
    label = r.get("method_label") or ""
    return f"{r['method']} ({label})" if label else str(r["method"])


# ---- HTML -------------------------------------------------------------------------------
@dataclass
class Column:
    title: str
    kind: str  # "num" or "text": how the column sorts


def html_columns(board: pd.DataFrame) -> list[Column]:
    return [Column(t, k) for t, k in [
        ("pair", "text"), ("method", "text"), ("n", "num"), ("metric mean", "num"),
        ("± std", "num"), ("95% CI", "num"), ("Δ vs ref", "num"), ("reference", "text"),
        ("tied with best", "text"), ("params", "num"), ("params×", "num"), ("MACs", "num"),
        ("MACs×", "num"), ("size×", "num"),
        *[(c.removesuffix("_mean"), "num") for c in extra_metric_columns(board)],
        *[(c.removeprefix("speedup_") + " speed-up", "num") for c in speedup_columns(board)],
        ("notes", "text")]]


def html_cells(r: pd.Series, board: pd.DataFrame) -> list[tuple[str, object]]:
    """(shown text, sort value) per column, in ``html_columns`` order."""
    def num(v, spec=".2f"):
        return _num(v, spec), ("" if v is None or (isinstance(v, float) and math.isnan(v))
                               else float(v))

    return [
        (f"{r['teacher']}→{r['student']}", f"{r['teacher']}→{r['student']}"),
        (_method_name(r), r["method"]), (str(r["n"]), r["n"]), num(r["metric_mean"]),
        num(r["metric_std"]),
        (f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]", num(r["ci_low"])[1]),
        num(r["delta_vs_reference"], "+.2f"), (r["reference"], r["reference"]),
        (_flag(r["tied_with_best"]), _flag(r["tied_with_best"])),
        (f"{int(r['params']):,}", r["params"]), num(r["params_ratio"], ".3f"),
        (f"{int(r['macs']):,}", r["macs"]), num(r["macs_ratio"], ".3f"),
        num(r.get("size_ratio"), ".3f"),
        *[num(r[c]) for c in extra_metric_columns(board)],
        *[(speedup_cell(r, c), num(r[c])[1]) for c in speedup_columns(board)],
        (r["notes"] or "", r["notes"] or ""),
    ]


PAGE = Environment(autoescape=True).from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>kdbench · {{ suite }} · {{ budget }}</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
 table { border-collapse: collapse; margin-bottom: 2em; }
 th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
 td.text, th.text { text-align: left; }
 th { background: #f3f3f3; cursor: pointer; user-select: none; }
 th[aria-sort=ascending]::after { content: " ▲"; }
 th[aria-sort=descending]::after { content: " ▼"; }
 .banner { padding: 6px 10px; font-weight: bold; display: inline-block; }
 .synthetic { background: #fff3cd; border: 1px solid #e0b000; }
 .real { background: #e7f5e7; border: 1px solid #6a6; }
 tr.teacher td { background: #f7f7ff; }
</style></head><body>
<h1>kdbench leaderboard · {{ suite }} · budget {{ budget }}</h1>
<p>Accuracy is the last epoch's, mean ± sample std over n seeds with a 95 % t-interval;
"tied with best" = not significantly different from the best entry of its pair (Welch,
p ≥ 0.05). Params/MACs are measured on the returned model; speed-ups are medians of
interleaved rounds against the teacher in the same process. Click a header to sort.</p>
{% for source, head, rows in sections %}
<h2><span class="banner {{ 'synthetic' if source == 'synthetic' else 'real' }}"
 data-source="{{ source }}">{{ label(source) }}</span></h2>
<table class="board" data-source="{{ source }}">
<thead><tr>{% for c in head %}<th class="{{ c.kind }}" data-kind="{{ c.kind }}"
 scope="col">{{ c.title }}</th>{% endfor %}</tr></thead>
<tbody>{% for method, cells in rows %}<tr class="{{ method }}">{% for text, value in cells %}
<td class="{{ head[loop.index0].kind }}" data-value="{{ value }}">{{ text }}</td>
{%- endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}
{{ claims }}
<script>
document.querySelectorAll("table.board").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var numeric = th.dataset.kind === "num";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (numeric) {
          x = x === "" ? -Infinity : parseFloat(x);
          y = y === "" ? -Infinity : parseFloat(y);
          return asc ? x - y : y - x;
        }
        return asc ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
</script>
</body></html>
""")


def html_page(board: pd.DataFrame, suite: str, budget: str, claims: str = "") -> str:
    """A self-contained page (no external assets): sortable tables, one per data source;
    ``claims``: the (already escaped) HTML of the claims section, shown after the tables."""
    sections = []
    for source, rows in by_source(board):
        head = html_columns(rows)
        sections.append((source, head, [(r["method"], html_cells(r, rows))
                                        for _, r in rows.iterrows()]))
    return PAGE.render(suite=suite, budget=budget, sections=sections, label=source_label,
                       claims=Markup(claims))


# ---- Pareto plots -----------------------------------------------------------------------
PARETO_AXES = {
    "macs": ("macs", "MACs (log scale)"),
    "latency": ("latency_cpu_t1_b1_ms", "CPU latency, 1 thread, batch 1 (ms, log scale)"),
    "params": ("params", "parameters (log scale)"),
}


def pareto_front(cost: list[float], score: list[float]) -> list[int]:
    """Indices of the non-dominated points (lower cost, higher score), by increasing cost."""
    order = sorted(range(len(cost)), key=lambda i: (cost[i], -score[i]))
    front, best = [], -math.inf
    for i in order:
        if score[i] > best:
            front.append(i)
            best = score[i]
    return front


def pareto_plots(board: pd.DataFrame, out_dir: Path, suite: str, budget: str) -> list[Path]:
    """Accuracy vs MACs / CPU latency / params per data source (PNG and SVG each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source, rows in by_source(board):
        for axis, (column, xlabel) in PARETO_AXES.items():
            if column not in rows.columns or rows[column].isna().all():
                continue
            fig = _pareto_figure(rows, column, xlabel, f"{suite} · {budget} · "
                                 f"{source_label(source)}")
            for ext in ("png", "svg"):
                path = out_dir / f"pareto_{axis}_{source}.{ext}"
                fig.savefig(path, dpi=120, bbox_inches="tight")
                written.append(path)
            plt.close(fig)
    return written


def _pareto_figure(rows: pd.DataFrame, column: str, xlabel: str, title: str):
    pairs = list(rows.groupby(PAIR, sort=True))
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.5), squeeze=False)
    for ax, ((teacher, student), grp) in zip(axes[0], pairs, strict=True):
        grp = grp.dropna(subset=[column])
        cost, score = grp[column].astype(float).tolist(), grp["metric_mean"].tolist()
        for (_, r), x, y in zip(grp.iterrows(), cost, score, strict=True):
            is_teacher = r["method"] == "teacher"
            ax.scatter(x, y, marker="*" if is_teacher else "o", s=160 if is_teacher else 40,
                       color="black" if is_teacher else None, zorder=3)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        front = pareto_front(cost, score)
        ax.step([cost[i] for i in front], [score[i] for i in front], where="post",
                color="tab:red", alpha=0.6, label="Pareto frontier")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())  # log-scale minor labels overlap
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{grp['metric_name'].iloc[0]} (mean over seeds)")
        ax.set_title(f"{teacher} → {student}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def write_report(board: pd.DataFrame, out_dir: Path, suite: str, budget: str,
                 claims: pd.DataFrame | None = None, curves: Path | None = None) -> list[Path]:
    """Markdown + HTML + plots into ``out_dir``, with the paper-claims table after the board
    when ``claims`` (a ``benchmarks.claims.claims_frame``) is given; returns what was written."""
    md, page = out_dir / "leaderboard.md", out_dir / "index.html"
    extra_md = "" if claims is None else "\n" + claim_tables.markdown(claims, suite, budget)
    if curves is not None:  # runs made with --tensorboard
        extra_md += (f"\nTraining curves (TensorBoard event files of every run): "
                     f"`tensorboard --logdir {curves}`\n")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        md.write_text(markdown(board, suite, budget) + extra_md)
        page.write_text(html_page(board, suite, budget, "" if claims is None
                                  else claim_tables.html(claims, suite, budget)))
        return [md, page, *pareto_plots(board, out_dir / "plots", suite, budget)]
    except OSError as exc:
        raise KdbenchError(f"cannot write the report into {out_dir}: {exc.strerror or exc} "
                           f"({exc.filename or out_dir}); pass --out a writable folder"
                           ) from exc
