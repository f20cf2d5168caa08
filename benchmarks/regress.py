"""Regression gate: re-run the smoke suites and compare them with committed baselines.

``results/baselines/<suite>_smoke.csv`` holds, per (pair, method), the structural figures
(params, MACs and their ratios to the teacher), the seed-0 accuracy with the spread over
the baseline's seeds, and the CPU speed-ups. A check run trains seed 0 only and compares:

- structural figures must match exactly (they do not depend on training noise);
- accuracy may move by at most ``ACC_Z`` standard deviations of the baseline's seeds, and
  never less than one test image (``100 / n_test`` percentage points), so the tolerance
  comes from the measured spread, not from a number picked by hand;
- speed-ups vs the teacher may not drop by more than ``SPEEDUP_RTOL`` (relative): they
  are ratios measured in one process, but still depend on the machine and its load, and a
  faster model is not a regression (the table still shows the move).

Rows that appear or disappear fail too: a new method needs ``--update`` in the same change.

Training noise is not the only thing that moves a figure: ATen, oneDNN and MKL pick other
CPU kernels on other CPUs, so the gate trains with them pinned (ATen and oneDNN to AVX2,
MKL to its reproducible COMPATIBLE branch; ``benchmarks.isa``) and every baseline row
states the kernels it was made with (``isa``, e.g. ``AVX2+MKL_CBWR=COMPATIBLE``) and the
sha256 of its teacher. A check compares only with baseline rows of the kernels it ran
with, and says so first when its teachers are not the baseline's bit for bit; a machine
that cannot run the pinned kernels (not x86-64, or no AVX2) needs baselines of its own,
made there with ``--update``, which keeps the rows of every other kernel set.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from kdbench.benchmarks.board import leaderboard, runs_frame
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.records import load_records

if TYPE_CHECKING:
    from kdbench.benchmarks.config import RegressGate

ACC_Z = 3.0
SPEEDUP_RTOL = 0.5  # without CIs in the baseline: a drop of more than half fails
SPEEDUP_CI_RTOL = 0.10  # with CIs: fails when the CI lies wholly > 10 % below the baseline's
KEY = ["suite", "data_source", "teacher", "student", "method"]
STRUCTURAL = ["params", "macs", "params_ratio", "macs_ratio"]
CSV_DIGITS = 10  # significant digits of the floats in a baseline CSV
RATIO_RTOL = 10.0 ** -(CSV_DIGITS - 1)
SPEEDUPS = ["speedup_cpu_t1_b1", "speedup_cpu_t1_b64"]
ISA = "isa"  # the CPU kernels the baseline row's run used (benchmarks.isa.kernels_label)
TEACHER_SHA = "teacher_sha256"  # the teacher the row's student learned from


def baseline_path(baselines_dir: Path, suite: str) -> Path:
    return Path(baselines_dir) / f"{suite}_smoke.csv"


def baseline_frame(results_dir: Path, suite: str) -> pd.DataFrame:
    """Baseline rows from the smoke records of several seeds: seed-0 values + seed spread."""
    records = load_records(results_dir, suite, "smoke")
    if not records:
        raise KdbenchError(f"no {suite} smoke records under {Path(results_dir) / 'runs'}: "
                           "run the gate without --reuse (or point --results-dir at a gate "
                           "run's results)")
    runs = _deploy_rows(runs_frame(records))
    board = _deploy_rows(leaderboard(records))
    split = sorted(m for m in board["method"] if "#" in m)
    if split:  # a baseline's seed spread is of one configuration only
        raise KdbenchError(f"the {suite} smoke records under {results_dir} are of more than one "
                           f"configuration for {', '.join(split)}: a baseline row needs its "
                           "seeds of one configuration; re-run them in one gate run (without "
                           "--reuse)")
    board = board.set_index(KEY)
    seed0 = runs[runs["seed"] == 0].set_index(KEY)
    out = pd.DataFrame(index=seed0.index)
    for col in STRUCTURAL:
        out[col] = seed0[col]
    out["metric_name"] = seed0["metric_name"]
    out["metric_seed0"] = seed0["metric"]
    out["metric_mean"] = board["metric_mean"]
    out["metric_std"] = board["metric_std"]
    out["n_seeds"] = board["n"]
    out["n_test"] = seed0["test_images"]
    for col in SPEEDUPS:
        out[col] = seed0.get(col, math.nan)
        for side in ("ci_low", "ci_high"):
            out[f"{side}_{col}"] = seed0.get(f"{side}_{col}", math.nan)
    out[ISA] = seed0[ISA]
    out[TEACHER_SHA] = seed0[TEACHER_SHA]
    return out.reset_index().sort_values(KEY, ignore_index=True)


def _deploy_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Name non-fp32 deployments ``method@int8`` so that each is a baseline row of its own."""
    if "deploy" not in frame:
        return frame
    deployed = frame["deploy"].fillna("fp32") != "fp32"
    frame = frame.copy()
    frame.loc[deployed, "method"] = frame.loc[deployed, "method"] + "@" + frame.loc[
        deployed, "deploy"]
    return frame


@dataclass
class Check:
    suite: str
    pair: str
    method: str
    figure: str
    baseline: float
    now: float
    tolerance: str
    ok: bool

    @property
    def moved(self) -> bool:
        if isinstance(self.baseline, float) and math.isnan(self.baseline):
            return not (isinstance(self.now, float) and math.isnan(self.now))
        # beyond the CSV's precision: a value read back from the baseline is not a move
        return not math.isclose(self.baseline, self.now, rel_tol=RATIO_RTOL, abs_tol=1e-12)


def accuracy_tolerance(row: pd.Series) -> float:
    """ACC_Z seed standard deviations, at least one test image, in percentage points."""
    one_image = 100.0 / float(row["n_test"])
    std = row["metric_std"]
    return max(ACC_Z * std if not math.isnan(std) else 0.0, one_image)


def compare(baseline: pd.DataFrame, current: pd.DataFrame) -> list[Check]:
    """Every figure of every row, checked against the baseline."""
    base = baseline.set_index(KEY)
    now = current.set_index(KEY)
    checks: list[Check] = []
    for key in sorted(set(base.index) | set(now.index)):
        suite, _, teacher, student, method = key
        pair = f"{teacher}→{student}"
        if key not in now.index:
            checks.append(Check(suite, pair, method, "row", 1, math.nan, "present", False))
            continue
        if key not in base.index:
            checks.append(Check(suite, pair, method, "row", math.nan, 1,
                                "in baseline (run --update)", False))
            continue
        b, n = base.loc[key], now.loc[key]
        for col in STRUCTURAL:
            # params and MACs are integers; the ratios are stored with CSV_DIGITS significant
            # digits, so "exact" for them means equal to that precision
            same = math.isclose(float(b[col]), float(n[col]), rel_tol=RATIO_RTOL, abs_tol=0.0)
            checks.append(Check(suite, pair, method, col, float(b[col]), float(n[col]),
                                "exact", same))
        tol = accuracy_tolerance(b)
        delta = abs(float(n["metric_seed0"]) - float(b["metric_seed0"]))
        checks.append(Check(suite, pair, method, f"{b['metric_name']} (seed 0)",
                            float(b["metric_seed0"]), float(n["metric_seed0"]),
                            f"±{tol:.2f} pp", delta <= tol + 1e-9))
        for col in SPEEDUPS:
            if math.isnan(float(b.get(col, math.nan))):
                continue
            checks.append(speedup_check(suite, pair, method, col, b, n))
    return checks


def speedup_check(suite: str, pair: str, method: str, col: str, base: pd.Series,
                  now: pd.Series) -> Check:
    """A speed-up regresses when its CI lies wholly more than SPEEDUP_CI_RTOL below the
    baseline's CI (timing noise widens a CI, it does not fail the gate); a baseline
    without CIs falls back to a flat SPEEDUP_RTOL drop."""
    def value(row: pd.Series, name: str) -> float:
        v = row.get(name, math.nan)
        return math.nan if v is None else float(v)

    bv, nv = value(base, col), value(now, col)
    b_low, n_high = value(base, f"ci_low_{col}"), value(now, f"ci_high_{col}")
    if not (math.isnan(b_low) or math.isnan(n_high)):
        ok = n_high >= (1 - SPEEDUP_CI_RTOL) * b_low
        return Check(suite, pair, method, col, bv, nv,
                     f"CI not wholly > {SPEEDUP_CI_RTOL:.0%} below the baseline's", ok)
    ok = not math.isnan(nv) and nv >= (1 - SPEEDUP_RTOL) * bv
    return Check(suite, pair, method, col, bv, nv, f"≥ −{SPEEDUP_RTOL:.0%}", ok)


def markdown_report(checks: list[Check], update: bool = False) -> str:
    """A markdown diff table of what moved (and every failure), plus a summary line.

    With ``update`` the table is the change a baseline rewrite makes: nothing fails.
    """
    rows = [c for c in checks if c.moved or not c.ok]
    failed = [] if update else [c for c in checks if not c.ok]
    lines = ["| suite | pair | method | figure | baseline | now | Δ | tolerance | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        delta = c.now - c.baseline if not (math.isnan(c.now) or math.isnan(c.baseline)) \
            else math.nan
        lines.append(f"| {c.suite} | {c.pair} | {c.method} | {c.figure} | {_fmt(c.baseline)} | "
                     f"{_fmt(c.now)} | {_fmt(delta, signed=True)} | {c.tolerance} | "
                     f"{_status(c, update)} |")
    if len(lines) == 2:
        lines.append("| – | – | – | nothing moved | | | | | pass |")
    if update:
        verdict = f"{len(rows)} figure(s) changed by the update"
    elif failed:
        verdict = (f"**{len(failed)} regression(s)** in {len(checks)} checks: "
                   + ", ".join(sorted({f"{c.method} {c.figure}" for c in failed})))
    else:
        verdict = f"all {len(checks)} checks pass"
    return "\n".join([*lines, "", verdict]) + "\n"


def _status(check: Check, update: bool) -> str:
    if not update:
        return "pass" if check.ok else "**FAIL**"
    if check.figure == "row":
        return "added" if math.isnan(check.baseline) else "removed"
    return "updated"


def _fmt(value: float, signed: bool = False) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):+,}" if signed else f"{int(value):,}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


# Which suites the gate runs, which methods each compares and on what data come from the
# suites themselves: their ``regress`` section (``benchmarks.config.RegressGate``).
REGRESS_THREADS = 2
CACHE_DIR = "{cache_dir}"  # in a gate's dataset strings: the gate's cache folder


def gated_suites() -> list[str]:
    """The suites the gate runs by default: those with a ``regress`` section."""
    from kdbench.benchmarks.config import SUITES_DIR, known_suites, raw_suite

    # read from the files: finding the gated suites imports no suite's task package
    return [name for name in known_suites()
            if raw_suite(SUITES_DIR / f"{name}.py").get("regress") is not None]


def gate_of(suite: str) -> RegressGate:
    """The suite's ``regress`` section (a suite without one: run every method as it is)."""
    from kdbench.benchmarks.config import RegressGate, load_suite

    return load_suite(suite).regress or RegressGate()


def dataset_overrides(suite: str, cache_dir: Path) -> dict:
    """The suite's gate dataset overrides, ``{cache_dir}`` filled in with ``cache_dir``."""
    def fill(value: Any) -> Any:
        if not isinstance(value, str) or CACHE_DIR not in value:
            return value
        if value.startswith(f"{CACHE_DIR}/"):
            return str(Path(cache_dir) / value[len(CACHE_DIR) + 1:])
        return value.replace(CACHE_DIR, str(Path(cache_dir)))

    return {key: fill(value) for key, value in gate_of(suite).dataset.items()}


def run_smoke(suite: str, seeds: list[int], results_dir: Path, cache_dir: Path,
              methods: list[str] | None = None) -> None:
    """Run ``methods`` (default: the suite's default methods) on ``suite``'s smoke budget."""
    import torch

    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.isa import active_kernels
    from kdbench.benchmarks.options import RunOptions
    from kdbench.benchmarks.runner import Harness

    torch.set_num_threads(REGRESS_THREADS)
    # Teachers of the gate's own ISA only: one a user's unpinned run cached is another model.
    teachers = Path(cache_dir) / f"regress-{active_kernels()}"
    harness = Harness(load_suite(suite), "smoke", RunOptions(
        results_dir=results_dir, cache_dir=teachers,
        dataset_overrides=dataset_overrides(suite, cache_dir), force=True))
    harness.run(methods, seeds)


def gate_methods(suite: str, methods: list[str] | None) -> list[str] | None:
    """The methods to run and compare on ``suite``: ``methods`` (None: all) within the
    suite's gated set (its ``regress.methods``); [] when none of them is gated there."""
    allowed = gate_of(suite).methods
    if allowed is None:
        return methods
    return list(allowed) if methods is None else [m for m in methods if m in allowed]


def of_methods(frame: pd.DataFrame, methods: list[str] | None) -> pd.Series:
    """Rows produced by ``methods`` (a method's control rows ``name:control`` included)."""
    if not methods:
        return pd.Series(True, index=frame.index)
    return frame["method"].str.split(":").str[0].isin(methods)


def regress(suites: list[str], baselines_dir: Path, results_dir: Path, cache_dir: Path, *,
            update: bool = False, reuse: bool = False,
            methods: list[str] | None = None,
            allow_fewer_seeds: bool = False) -> tuple[bool, str]:
    """Run (unless ``reuse``) and compare, or rewrite the baselines with ``update``.

    ``methods`` limits both to those methods' rows: an update then replaces only their rows
    and keeps the rest of the baseline (e.g. adding one new method). Only baseline rows of
    the ISA the runs used are compared or replaced. Returns (passed, report).
    """
    reports, passed = [], True
    for suite in suites:
        suite_methods = gate_methods(suite, methods)
        if suite_methods == []:
            reports.append(f"### {suite}\n\nnone of {', '.join(methods or [])} is gated on "
                           f"{suite} (it gates {', '.join(gate_of(suite).methods or ())})\n")
            continue
        if not reuse:
            run_smoke(suite, [0, 1, 2] if update else [0], results_dir, cache_dir,
                      suite_methods)
        current = baseline_frame(results_dir, suite)
        current = current[of_methods(current, suite_methods)]
        isa = runs_isa(current, results_dir, suite)
        path = baseline_path(baselines_dir, suite)
        every_isa = read_baseline(path) if path.exists() else current.iloc[0:0]
        old = every_isa[every_isa[ISA] == isa]
        if update:
            kept = old[of_methods(old, suite_methods)]
            if not allow_fewer_seeds:
                refuse_fewer_seeds(kept, current, path)
            replaced = (every_isa[ISA] == isa) & of_methods(every_isa, suite_methods)
            merged = pd.concat([every_isa[~replaced], current]).sort_values(
                [*KEY, ISA], ignore_index=True)
            write_baseline(merged, path)
            reports.append(f"### {suite}: baseline rewritten for ISA {isa} ({path})\n\n"
                           + markdown_report(compare(kept, current), update=True)
                           + tolerance_changes(kept, current))
            continue
        if not path.exists():
            passed = False
            reports.append(f"### {suite}\n\nno baseline at {path}; create it with "
                           "`nox -s regress -- --update`\n")
            continue
        if old.empty:
            raise KdbenchError(
                f"{path} has no baseline rows for the ISA these runs used ({isa}); it has "
                f"{', '.join(sorted(set(every_isa[ISA]))) or 'none'}. Comparing across ISAs "
                "would report kernel differences as regressions: run the gate with the "
                "kernels pinned (the default on x86-64 with AVX2), or create baselines for "
                f"{isa} on this machine with `nox -s regress -- --update`")
        checks = compare(old[of_methods(old, suite_methods)], current)
        passed &= all(c.ok for c in checks)
        reports.append(f"### {suite} (ISA {isa})\n\n" + other_teacher(old, current)
                       + markdown_report(checks))
    return passed, "\n".join(reports)


def other_teacher(baseline: pd.DataFrame, current: pd.DataFrame) -> str:
    """A warning when the gate's teachers are not the baseline's bit for bit: then every
    student moves with them, and the report must say why before it lists the moves."""
    if TEACHER_SHA not in baseline:
        return ""
    def by_pair(frame: pd.DataFrame) -> pd.Series:
        known = frame[frame[TEACHER_SHA].fillna("").astype(str) != ""]
        return known.groupby(["teacher", "student"])[TEACHER_SHA].first().astype(str)

    was, now = by_pair(baseline), by_pair(current)
    lines = [f"- {t}→{s}: teacher sha256 {now[(t, s)][:12]}, the baseline's {was[(t, s)][:12]}"
             for t, s in sorted(set(was.index) & set(now.index)) if was[(t, s)] != now[(t, s)]]
    if not lines:
        return ""
    return ("**The teachers differ from the baseline's**, so every figure below that "
            "depends on training moves with them. Either the change under test alters "
            "teacher training, or this machine's pinned kernels compute other floats than "
            "the baseline machine's (`benchmarks/isa.py` says what is pinned):\n\n"
            + "\n".join(lines) + "\n\n")


def refuse_fewer_seeds(baseline: pd.DataFrame, current: pd.DataFrame, path: Path) -> None:
    """An update from fewer seeds than the baseline has would shrink its tolerances (a
    1-seed row has no std): refused unless asked for."""
    both = baseline.set_index(KEY)[["n_seeds"]].join(
        current.set_index(KEY)[["n_seeds"]].rename(columns={"n_seeds": "n_seeds_now"}),
        how="inner")
    fewer = both[both["n_seeds_now"] < both["n_seeds"]]
    if not fewer.empty:
        rows = ", ".join(f"{k[-1]} ({int(r.n_seeds)} -> {int(r.n_seeds_now)} seeds)"
                         for k, r in fewer.iterrows())
        raise KdbenchError(f"--update would rewrite {path} from fewer seeds than it has: {rows}; "
                           "the accuracy tolerance comes from the seeds' std. Run the update "
                           "without --reuse (it runs 3 seeds), or pass --allow-fewer-seeds")


def tolerance_changes(baseline: pd.DataFrame, current: pd.DataFrame) -> str:
    """The accuracy tolerances an update changes (they come from the seed std)."""
    base, now = baseline.set_index(KEY), current.set_index(KEY)
    lines = []
    for key in sorted(set(base.index) & set(now.index)):
        before, after = accuracy_tolerance(base.loc[key]), accuracy_tolerance(now.loc[key])
        if abs(before - after) >= 0.005:
            lines.append(f"| {key[2]}→{key[3]} | {key[-1]} | ±{before:.2f} pp | "
                         f"±{after:.2f} pp |")
    if not lines:
        return "\nAccuracy tolerances: unchanged.\n"
    return ("\nAccuracy tolerances changed by the update:\n\n| pair | method | before | after |\n"
            "|---|---|---|---|\n" + "\n".join(lines) + "\n")


def write_baseline(frame: pd.DataFrame, path: Path) -> None:
    """Replace the baseline CSV atomically; a read-only folder is a clear error."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(tmp, index=False, float_format=f"%.{CSV_DIGITS}g")
        os.replace(tmp, path)
    except OSError as exc:
        raise KdbenchError(f"cannot write the baseline {path}: {exc.strerror or exc}; the "
                           "baselines folder must be writable (nothing there was changed)"
                           ) from exc
    finally:
        tmp.unlink(missing_ok=True)


def read_baseline(path: Path) -> pd.DataFrame:
    """A baseline CSV; one without the ``isa`` column predates per-ISA baselines."""
    frame = pd.read_csv(path, dtype={TEACHER_SHA: str, ISA: str})
    if ISA not in frame:
        raise KdbenchError(f"{path} has no {ISA!r} column (baselines made before the gate "
                           "pinned its CPU kernels); rewrite it with `nox -s regress -- "
                           "--update`")
    return frame


def runs_isa(current: pd.DataFrame, results_dir: Path, suite: str) -> str:
    """The one ISA the smoke records of ``suite`` ran with; mixed or unknown is an error."""
    isas = set(current[ISA].dropna()) if ISA in current else set()
    if len(isas) != 1 or len(current[ISA].dropna()) != len(current):
        found = ", ".join(sorted(isas)) or "none recorded"
        raise KdbenchError(f"the {suite} smoke records under {results_dir} do not share one "
                           f"CPU instruction set ({found}); re-run them in one gate run "
                           "(without --reuse)")
    return isas.pop()
