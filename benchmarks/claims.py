"""Paper claims as data, tested on the board's rows: does each method do what its paper says?

A method declares its paper's claims next to its config (``Method.claims``, a tuple of
``Claim``); a claim names a leaderboard row (the method, one of its control rows such as
``pruned_kd:finetune``, or a baseline), the row it must beat, a metric and a direction. The
harness tests every claim on the run records of a suite/budget, per pair and data source:

- Δ = mean(row) − mean(reference) over seeds (the same sign convention for "lower" claims),
  its 95 % Welch interval (Welch–Satterthwaite df) and the two-sided Welch p-value of
  H0: Δ = the margin on the claimed side;
- verdict "holds" when the interval of the claimed advantage (Δ − margin for "higher",
  −Δ − margin for "lower") lies entirely above 0, "contradicted" when it lies entirely below,
  "not shown" otherwise, "not run" when a row, or the metric, has no records ("not
  applicable" when no run of the suite reports the metric, e.g. rank-1 on a classification
  suite). With fewer
  than 3 seeds on either side the verdict is "not shown (n<3)", never holds or contradicted.
- A reference of ``teacher`` means the teacher each run of the row was measured against, as
  its own records carry it (its metrics, ratios and speed-ups of 1, its params/MACs), as the
  leaderboard's Δ vs teacher does; artifact_bytes/bits_per_weight, which records do not
  carry for the teacher, come from the ``teacher`` row's records.
- Structural metrics (params_ratio, macs_ratio, ...) are usually the same for every seed: when
  both sides are constant the difference is exact (no sampling error): the interval is the
  point Δ, p is 0 (1 when Δ equals the margin) and the verdict follows the inequality, with a
  note saying so. One constant side is fine for Welch (its variance term is 0).

The verdicts are a report, not a gate: ``kdbench claims`` always exits 0.

This module is imported by ``benchmarks.method`` (every plugin declares claims), so its
top level stays light: pandas, scipy and the record readers load only to evaluate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.benchmarks.atomic import write_text, write_via
from kdbench.benchmarks.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from rich.table import Table

# Quality metrics, as the evaluators name them in a record's ``metrics`` (percent).
QUALITY_METRICS = ("top1", "top5", "robust_top1", "rank1", "rank5", "rank10", "mAP", "AP50",
                   "AP75")
# Figures of the measured model (runs_frame columns); usually constant over seeds.
STRUCTURAL_METRICS = ("params_ratio", "macs_ratio", "params", "macs", "artifact_bytes",
                      "weight_bytes", "size_ratio", "bits_per_weight")
SPEEDUP_PREFIX = "speedup_"  # e.g. speedup_cpu_t1_b1, speedup_cpu_compiled_t1_b1
DIRECTIONS = ("higher", "lower")
ALPHA = 0.05
MIN_SEEDS = 3
# Metrics of opt-in evaluators (--evaluators robust): missing means not run, not inapplicable.
OPT_IN_METRICS = ("robust_top1",)
VERDICTS = ("holds", "contradicted", "not shown", "not shown (n<3)", "not run",
            "not applicable")
PAIR_KEYS = ["suite", "dataset", "data_source", "budget", "teacher", "student"]
COLUMNS = [
    "method", "text", "row", "beats", "metric", "direction", "margin", "deploy",
    "beats_deploy", *PAIR_KEYS, "row_mean", "beats_mean", "delta", "ci_low", "ci_high", "df",
    "p", "n_row", "n_beats", "paper", "paper_note", "verdict", "note",
]


@dataclass(frozen=True)
class Claim:
    """One claim of a method's paper, as a test on two leaderboard rows.

    ``row`` is claimed to beat ``beats`` on ``metric`` in ``direction`` by more than
    ``margin`` (in the metric's units): Δ = mean(row) − mean(beats) must exceed ``margin``
    ("higher") or fall below −``margin`` ("lower"). "Within an accuracy drop of X points of
    the teacher" is row vs ``teacher``, "higher", margin −X. ``deploy``/``beats_deploy`` pick
    the deployment of each row (fp32, int8). ``paper`` is the paper's own figure (for Δ or the
    value, ``paper_note`` says which and where it is from).
    """

    row: str
    beats: str
    metric: str
    text: str
    direction: str = "higher"
    margin: float = 0.0
    paper: float | None = None
    paper_note: str = ""
    deploy: str = "fp32"
    beats_deploy: str = "fp32"

    def __post_init__(self) -> None:
        if not is_known_metric(self.metric):
            raise ConfigError(
                f"claim {self.text!r}: unknown metric {self.metric!r}; allowed: "
                f"{', '.join((*QUALITY_METRICS, *STRUCTURAL_METRICS))} or "
                f"{SPEEDUP_PREFIX}<setting> (e.g. speedup_cpu_t1_b1)")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"claim {self.text!r}: direction must be one of "
                              f"{', '.join(DIRECTIONS)}; got {self.direction!r}")
        if not self.row or not self.beats or (
                self.row == self.beats and self.deploy == self.beats_deploy):
            raise ConfigError(f"claim {self.text!r}: row and beats must name two different "
                              f"rows; got {self.row!r} and {self.beats!r}")
        if not isinstance(self.margin, (int, float)) or not math.isfinite(self.margin):
            raise ConfigError(f"claim {self.text!r}: margin must be a finite number; "
                              f"got {self.margin!r}")
        from kdbench.benchmarks.deploy import DEPLOY_TARGETS

        for key in ("deploy", "beats_deploy"):
            if getattr(self, key) not in DEPLOY_TARGETS:
                raise ConfigError(f"claim {self.text!r}: {key} must be one of "
                                  f"{', '.join(DEPLOY_TARGETS)}; got {getattr(self, key)!r}")

    @property
    def sign(self) -> int:
        return 1 if self.direction == "higher" else -1

    def renamed(self, old: str, new: str) -> Claim:
        """The claim for a variant ``new`` of method ``old`` (``old:ctl`` -> ``new:ctl``)."""
        def swap(name: str) -> str:
            base, sep, control = name.partition(":")
            return f"{new}{sep}{control}" if base == old else name
        return replace(self, row=swap(self.row), beats=swap(self.beats))


def is_known_metric(name: str) -> bool:
    return name in QUALITY_METRICS or name in STRUCTURAL_METRICS or (
        name.startswith(SPEEDUP_PREFIX) and len(name) > len(SPEEDUP_PREFIX))


# ---- which claims a suite's board is tested on ------------------------------------------
def declared_claims(suite: str | None = None,
                    records: Iterable[Mapping[str, Any]] | None = None,
                    ) -> dict[str, tuple[Claim, ...]]:
    """Every registered method's claims (loaded as ``kdbench list methods`` does).

    A suite that names the methods it runs (``default_methods``, e.g. a detection suite)
    is tested on their claims alone. A suite's variants (e.g. ``lma_k4``) get their base
    method's claims on their own rows, when ``records`` has runs of them (or always, without
    ``records``).
    """
    from kdbench.benchmarks.config import known_suites, load_suite
    from kdbench.benchmarks.registry import METHODS, known

    config = load_suite(suite) if suite in known_suites() else None  # imports its task
    names = known(METHODS)
    if config is not None:
        if config.default_methods:
            names = [n for n in names if n in config.default_methods]
        names = [n for n in names if _runs_on(config, n)]
    out = {name: tuple(getattr(METHODS.get(name), "claims", ())) for name in names}
    out = {name: claims for name, claims in out.items() if claims}
    if config is not None:
        ran = None if records is None else {r["method"].partition(":")[0] for r in records}
        for name, variant in config.variants.items():
            if variant.method in out and (ran is None or name in ran):
                out[name] = tuple(c.renamed(variant.method, name) for c in out[variant.method])
    return out


def _runs_on(suite: Any, name: str) -> bool:
    """Whether method ``name`` supports a pair of some budget of ``suite`` (its ``supports``
    decides; e.g. a detection method on a classification suite does not)."""
    from kdbench.benchmarks.planning import build_method

    for budget in suite.budgets.values():
        try:
            method = build_method(suite, budget, name, {})
        except Exception:  # a config this budget rejects: the claim is still the method's
            return True
        if any(method.supports(pair) is None for pair in budget.pairs):
            return True
    return False


# ---- evaluation -------------------------------------------------------------------------
def _runs(records: list[Mapping[str, Any]]) -> pd.DataFrame:
    """runs_frame plus each run's teacher figures (``teacher:<metric>`` columns)."""
    import pandas as pd

    from kdbench.benchmarks.board import runs_frame

    runs = runs_frame(records)
    if runs.empty:
        return pd.DataFrame(columns=[*PAIR_KEYS, "method", "deploy", "seed"])
    teacher = pd.DataFrame([{f"teacher:{k}": v for k, v in r["teacher_metrics"].items()}
                            for r in records], index=runs.index)
    return pd.concat([runs, teacher], axis=1)


def _values(rows: pd.DataFrame, metric: str) -> list[float]:
    col = f"metric:{metric}" if metric in QUALITY_METRICS else metric
    if col not in rows.columns:
        return []
    return [float(v) for v in rows[col].tolist() if v is not None and not _isnan(v)]


def _teacher_values(own: pd.DataFrame, pair_runs: pd.DataFrame, metric: str) -> list[float]:
    """The teacher each run of ``own`` was compared with, from those runs' records."""
    if metric in QUALITY_METRICS:
        col = f"teacher:{metric}"
        if col in own.columns:
            return [float(v) for v in own[col].tolist() if not _isnan(v)]
        return []
    if metric in ("params_ratio", "macs_ratio") or metric.startswith(SPEEDUP_PREFIX):
        return [1.0] * len(own)  # the teacher against itself, by definition
    if metric in ("params", "macs"):
        return [float(v) for v in own[f"teacher_{metric}"].tolist()]
    teacher = pair_runs[(pair_runs["method"] == "teacher") & (pair_runs["deploy"] == "fp32")]
    return _values(teacher, metric)


def _isnan(value: Any) -> bool:
    try:
        return math.isnan(value)
    except TypeError:
        return value is None


def verdict(claim: Claim, n_row: int, n_beats: int, lo: float, hi: float) -> str:
    """The verdict from the interval [lo, hi] of Δ (see the module docstring)."""
    if n_row == 0 or n_beats == 0:
        return "not run"
    if min(n_row, n_beats) < MIN_SEEDS:
        return "not shown (n<3)"
    low, high = sorted((claim.sign * lo - claim.margin, claim.sign * hi - claim.margin))
    if low > 0:
        return "holds"
    if high < 0:
        return "contradicted"
    return "not shown"


def evaluate_claim(claim: Claim, pair_runs: pd.DataFrame) -> dict[str, Any]:
    """Test ``claim`` on the runs of one pair (one suite, budget and data source)."""
    from kdbench.benchmarks.stats import welch_diff

    def rows(name: str, deploy: str) -> pd.DataFrame:
        return pair_runs[(pair_runs["method"] == name) & (pair_runs["deploy"] == deploy)]

    own = rows(claim.row, claim.deploy)
    a = _values(own, claim.metric)
    if claim.beats == "teacher":
        b = _teacher_values(own, pair_runs, claim.metric)
    else:
        b = _values(rows(claim.beats, claim.beats_deploy), claim.metric)
    diff = welch_diff(a, b, 1 - ALPHA, null=claim.sign * claim.margin)
    result = dict(row_mean=_mean(a), beats_mean=_mean(b), delta=diff.delta,
                  ci_low=diff.ci_low, ci_high=diff.ci_high, df=diff.df, p=diff.p,
                  n_row=len(a), n_beats=len(b))
    notes = []
    for name, deploy, runs, values in ((claim.row, claim.deploy, own, a),
                                       (claim.beats, claim.beats_deploy, None, b)):
        label = name + ("" if deploy == "fp32" or name == "teacher" else f" · {deploy}")
        if values:
            continue
        if runs is None and name != "teacher":
            runs = rows(name, deploy)
        if runs is not None and runs.empty:
            notes.append(f"no records of {label}")
        else:
            notes.append(f"no {claim.metric} in the records of {label}")
    if diff.exact:
        notes.append("exact: both sides constant over seeds, no sampling error")
    result["verdict"] = verdict(claim, len(a), len(b), diff.ci_low, diff.ci_high)
    if claim.metric in QUALITY_METRICS and claim.metric not in OPT_IN_METRICS \
            and not _values(pair_runs, claim.metric):
        # no run of this suite reports the metric (rank-1 of a ReID claim on classification)
        result["verdict"] = "not applicable"
        notes = [f"the suite reports no {claim.metric}"]
    result["note"] = "; ".join(notes)
    return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def claims_frame(records: Iterable[Mapping[str, Any]],
                 claims_by_method: Mapping[str, Iterable[Claim]]) -> pd.DataFrame:
    """One row per (method, claim, pair × data source) where the claim's row ran; a claim
    whose row has no records at all gets one "not run" row."""
    import pandas as pd

    runs = _runs(list(records))
    out = []
    for method, claims in claims_by_method.items():
        for claim in claims:
            base = dict(method=method, text=claim.text, row=claim.row, beats=claim.beats,
                        metric=claim.metric, direction=claim.direction, margin=claim.margin,
                        deploy=claim.deploy, beats_deploy=claim.beats_deploy,
                        paper=math.nan if claim.paper is None else claim.paper,
                        paper_note=claim.paper_note)
            ran = runs[(runs["method"] == claim.row) & (runs["deploy"] == claim.deploy)]
            if ran.empty:
                label = claim.row + ("" if claim.deploy == "fp32" else f" · {claim.deploy}")
                out.append({**base, **dict.fromkeys(PAIR_KEYS, ""), "n_row": 0, "n_beats": 0,
                            "verdict": "not run", "note": f"no records of {label}"})
                continue
            for key, _ in ran.groupby(PAIR_KEYS, sort=True, dropna=False):
                mask = (runs[PAIR_KEYS] == pd.Series(key, index=PAIR_KEYS)).all(axis=1)
                out.append({**base, **dict(zip(PAIR_KEYS, key, strict=True)),
                            **evaluate_claim(claim, runs[mask])})
    frame = pd.DataFrame(out, columns=COLUMNS)
    return frame.astype({"n_row": int, "n_beats": int}) if not frame.empty else frame


# ---- output -----------------------------------------------------------------------------
def claims_paths(results_dir: Path, suite: str, budget: str) -> tuple[Path, Path]:
    """results/leaderboard/<suite>_<budget>_claims.csv and .md, next to the board's CSV."""
    from kdbench.benchmarks.board import leaderboard_path

    board = leaderboard_path(results_dir, suite, budget)
    stem = f"{board.stem}_claims"
    return board.with_name(f"{stem}.csv"), board.with_name(f"{stem}.md")


def _num(value: Any, spec: str = ".2f") -> str:
    if value is None or _isnan(value):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return format(value, spec)


def _p(value: Any) -> str:
    if value is None or _isnan(value):
        return "–"
    return "<0.001" if value < 1e-3 else f"{value:.3f}"


def _cells(r: Mapping[str, Any]) -> dict[str, str]:
    # the claimed inequality on Δ: higher by more than the margin, or lower by more than it
    threshold = r["margin"] if r["direction"] == "higher" else -r["margin"]
    claimed = f"Δ {'>' if r['direction'] == 'higher' else '<'} {threshold + 0.0:g}"
    deploy = "" if r["deploy"] == "fp32" else f" · {r['deploy']}"
    beats_deploy = "" if r["beats_deploy"] == "fp32" else f" · {r['beats_deploy']}"
    paper = _num(r["paper"], ".4g")
    if r["paper_note"]:
        paper = f"{paper} ({r['paper_note']})" if paper != "–" else r["paper_note"]
    verdict_text = r["verdict"] + (f" ({r['note']})" if r["note"] else "")
    return {
        "method": str(r["method"]),
        "claim": f"{r['text']} [{r['row']}{deploy} vs {r['beats']}{beats_deploy}]",
        "pair": f"{r['teacher']}→{r['student']}" if r["teacher"] else "–",
        "metric": f"{r['metric']}: {claimed}",
        "Δ": _num(r["delta"], "+.3g"),
        "95% CI": (f"[{_num(r['ci_low'], '+.3g')}, {_num(r['ci_high'], '+.3g')}]"
                   if not _isnan(r["ci_low"]) else "–"),
        "p": _p(r["p"]), "n (row/ref)": f"{r['n_row']}/{r['n_beats']}",
        "paper": paper, "verdict": verdict_text,
    }


def source_line(source: str) -> str:
    if source == "synthetic":
        return ("data_source=synthetic: generated data (a stand-in in the dataset's format), "
                "not comparable with the papers' figures")
    if not source:
        return "no records of the claim's row on this board"
    return f"data_source={source}: the dataset's own data"


def md_cell(text: str) -> str:
    """A markdown table cell: HTML in a record field or claim text is shown, never rendered
    (escaping ``&`` and ``<`` is enough: no tag or entity can start without them)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


def markdown(frame: pd.DataFrame, suite: str, budget: str, heading: str = "##") -> str:
    """GitHub-flavoured markdown: one table per data source, claims never run last."""
    parts = [f"{heading} Paper claims · {suite} · {budget}",
             "Δ = mean(row) − mean(reference) over seeds, 95 % Welch interval, two-sided "
             "Welch p against the claimed margin; **holds** = the interval lies entirely "
             "on the claimed side of the margin (the metric column's inequality), with at least "
             f"{MIN_SEEDS} seeds a side; a reference `teacher` is the teacher each run was "
             "measured against."]
    if frame.empty:
        return "\n\n".join([*parts, "No claims declared."]) + "\n"
    sources = sorted(s for s in frame["data_source"].unique() if s) + (
        [""] if (frame["data_source"] == "").any() else [])
    header = ["method", "claim", "pair", "metric", "Δ", "95% CI", "p", "n (row/ref)", "paper",
              "verdict"]
    for source in sources:
        rows = frame[frame["data_source"] == source]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in rows.iterrows():
            cells = _cells(r)
            lines.append("| " + " | ".join(md_cell(cells[h]) for h in header) + " |")
        parts += [f"**{source_line(source)}**", "\n".join(lines)]
    return "\n\n".join(parts) + "\n"


def write_claims(frame: pd.DataFrame, results_dir: Path, suite: str,
                 budget: str) -> tuple[Path, Path]:
    """Write the claims CSV and markdown next to the leaderboard CSV (atomically)."""
    csv, md = claims_paths(results_dir, suite, budget)
    write_via(csv, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
    write_text(markdown(frame, suite, budget), md)
    return csv, md


VERDICT_STYLE = {"holds": "green", "contradicted": "bold red", "not shown": "yellow",
                 "not shown (n<3)": "yellow", "not run": "dim", "not applicable": "dim"}


def render_claims(frame: pd.DataFrame, title: str = "") -> Table:
    """A compact terminal table (rich); the CSV and markdown have every column."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    columns = ["data", "pair", "method", "claim", "metric", "Δ", "95% CI", "p", "n", "verdict"]
    for col in columns:
        table.add_column(col, overflow="fold")
    # claims whose row has no records at all come last
    ordered = frame.sort_values("data_source", key=lambda s: s == "", kind="stable")
    for _, r in ordered.iterrows():
        c = _cells(r)
        style = VERDICT_STYLE.get(r["verdict"], "")
        table.add_row(r["data_source"] or "–", c["pair"], escape(c["method"]),
                      escape(c["claim"]), c["metric"], c["Δ"], c["95% CI"], c["p"],
                      c["n (row/ref)"], f"[{style}]{escape(c['verdict'])}[/]")
    return table


def html(frame: pd.DataFrame, suite: str, budget: str) -> str:
    """The claims section of the report's HTML page (cells escaped), one table per source."""
    from markupsafe import escape

    header = ["method", "claim", "pair", "metric", "Δ", "95% CI", "p", "n (row/ref)", "paper",
              "verdict"]
    parts = [f"<h2>Paper claims · {escape(suite)} · {escape(budget)}</h2>",
             "<p>Δ = mean(row) − mean(reference) over seeds, 95 % Welch interval, Welch p "
             "against the claimed margin; <b>holds</b> = the interval lies entirely beyond the "
             f"margin on the claimed side, with at least {MIN_SEEDS} seeds a side.</p>"]
    if frame.empty:
        return "\n".join([*parts, "<p>No claims declared.</p>"])
    for source in sorted(frame["data_source"].unique(), key=lambda s: (s == "", s)):
        rows = frame[frame["data_source"] == source]
        kind = "synthetic" if source == "synthetic" else "real"
        parts.append(f'<p><span class="banner {kind}">{escape(source_line(source))}</span></p>')
        head = "".join(f'<th class="text">{escape(h)}</th>' for h in header)
        body = []
        for _, r in rows.iterrows():
            cells = _cells(r)
            body.append(f'<tr data-verdict="{escape(r["verdict"])}">' + "".join(
                f'<td class="text">{escape(cells[h])}</td>' for h in header) + "</tr>")
        parts.append(f'<table class="claims" data-source="{escape(source)}"><thead><tr>{head}'
                     f'</tr></thead><tbody>{"".join(body)}</tbody></table>')
    return "\n".join(parts)
