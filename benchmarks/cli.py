"""``kdbench`` command line: run | leaderboard | compare | list."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.panel import Panel

from kdbench.benchmarks.config import BUDGETS, known_suites, load_suite
from kdbench.benchmarks.console import console, log_width, show_leaderboard
from kdbench.benchmarks.errors import ConfigError, KdbenchError, RunsFailedError
from kdbench.benchmarks.mlflow_log import DEFAULT_URI as MLFLOW_DEFAULT_URI
from kdbench.benchmarks.options import (
    add_run_options,
    dataset_overrides_from,
    parse_assignments,
    parse_method_overrides,
    parse_methods,
    parse_seeds,
    run_options_from,
)
from kdbench.benchmarks.registry import DATASETS, METHODS, MODELS, known
from kdbench.benchmarks.sweep import add_parser as add_sweep_parser
from kdbench.benchmarks.sweep import cmd_sweep
from kdbench.benchmarks.teachers import default_cache_dir

# Moved to benchmarks.options / benchmarks.console; importable from here as before.
__all__ = ["console", "dataset_overrides_from", "log_width", "main", "parse_assignments",
           "parse_method_overrides", "parse_methods", "parse_seeds", "show_leaderboard"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run methods on a suite and update its leaderboard")
    add_run_options(run)  # the options `kdbench sweep` takes too (benchmarks.options)
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--wide", action="store_true", help="print every leaderboard column")

    board = sub.add_parser("leaderboard", help="aggregate run records into the leaderboard")
    board.add_argument("--suite", default="cifar100")
    board.add_argument("--budget", default="smoke", choices=BUDGETS)
    board.add_argument("--results-dir", type=Path, default=Path("results"))
    board.add_argument("--csv", type=Path, help="where to write the CSV "
                       "(default: RESULTS/leaderboard/SUITE_BUDGET.csv)")
    board.add_argument("--wide", action="store_true", help="print every column (data, pair, "
                       "labels, all speed-ups, notes)")

    compare = sub.add_parser("compare", help="Welch test between two methods, per pair")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.add_argument("--suite", default="cifar100")
    compare.add_argument("--budget", default="smoke", choices=BUDGETS)
    compare.add_argument("--results-dir", type=Path, default=Path("results"))

    report = sub.add_parser("report", help="markdown table, HTML page and Pareto plots")
    report.add_argument("--suite", default="cifar100")
    report.add_argument("--budget", default="smoke", choices=BUDGETS)
    report.add_argument("--results-dir", type=Path, default=Path("results"))
    report.add_argument("--out", type=Path, help="output folder "
                        "(default: RESULTS/report/SUITE_BUDGET)")
    report.add_argument("--format", choices=("html", "json", "model-index"), default="html",
                        help="html: markdown + HTML page + plots (default); json: the board "
                        "as one versioned JSON document; model-index: the rows as Hugging "
                        "Face model-index YAML")

    export = sub.add_parser("export", help="write a leaderboard row's model (as measured) "
                            "and its model card")
    export.add_argument("row", help="the row's method name, e.g. kd or pruned_kd:finetune")
    export.add_argument("--suite", default="cifar100")
    export.add_argument("--budget", default="smoke", choices=BUDGETS)
    export.add_argument("--seed", type=int, default=0, help="which seed's run (default 0)")
    export.add_argument("--pair", help="TEACHER-STUDENT, when the row ran on several pairs")
    export.add_argument("--format", choices=("pt2", "onnx", "safetensors"), default="pt2")
    export.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    export.add_argument("--results-dir", type=Path, default=Path("results"))

    claims = sub.add_parser("claims", help="test every method's declared paper claims on the "
                            "suite's run records (a report: always exits 0)")
    claims.add_argument("--suite", default="cifar100")
    claims.add_argument("--budget", default="smoke", choices=BUDGETS)
    claims.add_argument("--results-dir", type=Path, default=Path("results"))

    mlflow = sub.add_parser("mlflow", help="log a suite's run records to MLflow (runs logged "
                            "before are skipped)")
    mlflow.add_argument("--suite", default="cifar100")
    mlflow.add_argument("--budget", default="smoke", choices=BUDGETS)
    mlflow.add_argument("--results-dir", type=Path, default=Path("results"))
    mlflow.add_argument("--uri", default=MLFLOW_DEFAULT_URI,
                        help=f"MLflow tracking URI (default {MLFLOW_DEFAULT_URI})")

    regress = sub.add_parser("regress", help="re-run the smoke suites and compare them with "
                             "results/baselines (exit 1 on a regression)")
    regress.add_argument("--suites", default=None,
                         help="comma-separated (default: the suites with a regress section)")
    regress.add_argument("--methods", default="", metavar="NAME[,NAME]",
                         help="only these methods' rows (default: all); with --update the "
                         "other rows of the baseline are kept")
    regress.add_argument("--update", action="store_true",
                         help="rewrite the baselines (3 seeds) and show what changed")
    regress.add_argument("--reuse", action="store_true",
                         help="compare the records already in --results-dir, run nothing")
    regress.add_argument("--allow-fewer-seeds", action="store_true",
                         help="let --update rewrite rows from fewer seeds than the baseline "
                         "has (their tolerances shrink)")
    regress.add_argument("--baselines", type=Path, default=Path("results/baselines"))
    regress.add_argument("--results-dir", type=Path, default=Path("results/regress"))
    regress.add_argument("--cache-dir", type=Path, default=None)
    regress.add_argument("--markdown", type=Path, help="also write the report to this file")
    regress.add_argument("--no-isa-pin", action="store_true",
                         help="train with this machine's fastest CPU kernels instead of the "
                              "AVX2 kernels the baselines are made with (then only baselines "
                              "of this machine's ISA compare)")

    add_sweep_parser(sub)

    new = sub.add_parser("new-method", help="scaffold methods/NAME.py and its contract test")
    new.add_argument("name")
    new.add_argument("--root", type=Path, default=Path("."), help="the kdbench checkout")

    lst = sub.add_parser("list", help="list registered names")
    lst.add_argument("what", choices=["methods", "models", "datasets", "suites"])
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from kdbench.benchmarks import api
    from kdbench.benchmarks.records import load_records
    from kdbench.benchmarks.table import duration_text

    suite = load_suite(args.suite)
    options, methods, seeds = run_options_from(args, suite)

    def announce(harness: Any, plan: Any) -> None:
        data = harness.data
        if data.notice:
            console.print(Panel(escape(data.notice), title=f"data: {data.data_source}",
                                style="yellow"))
        console.print(f"suite {suite.name} · budget {args.budget} · {data.name} "
                      f"({data.data_source}) · {len(plan.methods)} methods × "
                      f"{len(plan.pairs)} pairs × {len(plan.seeds)} seeds = {plan.total} runs "
                      f"· device {harness.device}")
        planned.append(plan.total)

    planned: list[int] = []
    started = time.perf_counter()
    try:
        result = api.run(suite, methods, budget=args.budget, seeds=seeds, options=options,
                         on_plan=announce)
    except RunsFailedError:
        # The runs that succeeded are on the board before the failures are reported.
        if _primary() and load_records(args.results_dir, suite.name, args.budget):
            show_leaderboard(suite.name, args.budget, args.results_dir,
                             metrics=suite.table_metrics, wide=args.wide)
        raise
    finally:
        if planned:
            console.print(f"{planned[0]} runs in {duration_text(time.perf_counter() - started)} "
                          "wall time (runs with a record of this configuration are skipped)")
    if not _primary():  # under torchrun: rank 0 wrote the records and reports them
        return 0
    return show_leaderboard(suite.name, args.budget, args.results_dir,
                            metrics=suite.table_metrics, wide=args.wide,
                            built=(result.board, result.leaderboard_csv))


def cmd_leaderboard(args: argparse.Namespace) -> int:
    runs = Path(args.results_dir) / "runs" / args.suite
    if args.suite not in known_suites() and not runs.is_dir():
        # neither a suite of the project nor one whose records are here (a custom suite file)
        raise KdbenchError(f"unknown suite {args.suite!r}: no records under {runs}; known "
                           f"suites: {', '.join(known_suites())}")
    return show_leaderboard(args.suite, args.budget, args.results_dir, args.csv,
                            wide=args.wide)


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kdbench.benchmarks.board import runs_frame
    from kdbench.benchmarks.records import load_records
    from kdbench.benchmarks.stats import summarize, welch_p

    runs = runs_frame(load_records(args.results_dir, args.suite, args.budget))
    if runs.empty:
        raise KdbenchError(f"no run records for {args.suite}/{args.budget} in {args.results_dir}")
    for name in (args.a, args.b):
        if name not in set(runs["method"]):
            raise ConfigError(f"no runs of method {name!r} in {args.suite}/{args.budget}; "
                              f"methods with runs: {', '.join(sorted(set(runs['method'])))}")
    table = Table(title=f"{args.a} vs {args.b} · {args.suite} · {args.budget}")
    for col in ("data", "pair", args.a, args.b, "Δ", "Welch p", "verdict"):
        table.add_column(col)
    for (source, t, s), grp in runs.groupby(["data_source", "teacher", "student"]):
        a = grp.loc[grp["method"] == args.a, "metric"].tolist()
        b = grp.loc[grp["method"] == args.b, "metric"].tolist()
        if not a or not b:
            continue
        sa, sb, p = summarize(a), summarize(b), welch_p(a, b)
        if math.isnan(p):
            verdict = "untestable (n<2)"
        elif p >= 0.05:
            verdict = "tied"
        else:
            verdict = f"{args.a if sa.mean > sb.mean else args.b} better"
        table.add_row(source, f"{t}→{s}", f"{sa.mean:.2f} (n={sa.n})", f"{sb.mean:.2f} (n={sb.n})",
                      f"{sa.mean - sb.mean:+.2f}", f"{p:.3f}", verdict)
    Console().print(table)
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    from kdbench.benchmarks.claims import claims_frame, declared_claims, render_claims, write_claims
    from kdbench.benchmarks.records import load_records

    records = load_records(args.results_dir, args.suite, args.budget)
    if not records:
        raise KdbenchError(f"no run records for {args.suite}/{args.budget} under "
                           f"{args.results_dir}/runs; run `kdbench run` first")
    frame = claims_frame(records, declared_claims(args.suite, records))
    out = Console() if sys.stdout.isatty() else Console(width=200)
    out.print(render_claims(frame, title=f"paper claims · {args.suite} · {args.budget}"))
    for path in write_claims(frame, args.results_dir, args.suite, args.budget):
        console.print(f"wrote {path}")
    return 0  # the verdicts are a report, not a gate


def cmd_mlflow(args: argparse.Namespace) -> int:
    from kdbench.benchmarks import mlflow_log
    from kdbench.benchmarks.records import record_paths

    found = record_paths(args.results_dir, args.suite, args.budget)
    if not found:
        raise KdbenchError(f"no run records for suite {args.suite!r} ({args.budget} budget) "
                           f"under {args.results_dir / 'runs'}")
    new = mlflow_log.log_records(found, args.uri)
    console.print(f"MLflow {args.uri}: {new} new runs logged, {len(found) - new} logged "
                  f"before (experiment kdbench/{args.suite}/{args.budget})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kdbench.benchmarks.export import export

    for path in export(args.results_dir, args.suite, args.budget, args.row, args.format,
                       args.out, seed=args.seed, pair=args.pair):
        console.print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kdbench.benchmarks.board import leaderboard
    from kdbench.benchmarks.claims import claims_frame, declared_claims
    from kdbench.benchmarks.records import load_records
    from kdbench.benchmarks.report import write_report

    records = load_records(args.results_dir, args.suite, args.budget)
    if not records:
        raise KdbenchError(f"no run records for {args.suite}/{args.budget} under "
                           f"{args.results_dir}/runs; run `kdbench run` first")
    out = args.out or args.results_dir / "report" / f"{args.suite}_{args.budget}"
    board = leaderboard(records)
    if args.format != "html":
        console.print(f"wrote {write_portable(board, out, args, records[0]['dataset'])}")
        return 0
    claims = claims_frame(records, declared_claims(args.suite, records))
    runs_curves = Path(args.results_dir) / "artifacts" / args.suite / args.budget
    curves = runs_curves if any(runs_curves.rglob("events.out.tfevents.*")) else None
    for path in write_report(board, out, args.suite, args.budget, claims, curves=curves):
        console.print(f"wrote {path}")
    if curves is not None:
        console.print(f"training curves: tensorboard --logdir {curves}")
    return 0


def write_portable(board, out: Path, args: argparse.Namespace, dataset: str) -> Path:
    """``leaderboard.json`` or ``model-index.yaml`` into ``out`` (atomically)."""
    import json

    from kdbench.benchmarks.atomic import write_text
    from kdbench.benchmarks.portable import board_document, model_index

    if args.format == "json":
        path = out / "leaderboard.json"
        text = json.dumps(board_document(board, args.suite, args.budget), indent=2) + "\n"
    else:
        path = out / "model-index.yaml"
        text = model_index(board, args.suite, args.budget, dataset)
    write_text(text, path)
    return path


def cmd_regress(args: argparse.Namespace) -> int:
    from kdbench.benchmarks import isa
    from kdbench.benchmarks.regress import regress

    # Training must see the pinned kernels from torch's import on: re-run in a child process.
    if not (args.reuse or args.no_isa_pin or isa.is_pinned()):
        reason = isa.cannot_pin()
        if reason is None:
            pin = " ".join(f"{k}={v}" for k, v in isa.PIN.items())
            console.print(f"kdbench regress: CPU kernels pinned ({pin}), "
                          "the kernels of the baselines")
            return subprocess.call(isa.pinned_command(args.argv), env=isa.pinned_env())
        console.print(f"kdbench regress: cannot pin the CPU kernels to {isa.PINNED_ISA}: "
                      f"{reason}; only baselines made on this machine's ISA can compare")
    if isa.is_pinned() and not args.reuse and isa.active_isa() != isa.PINNED_ISA:
        raise KdbenchError(f"the CPU kernels were pinned to {isa.PINNED_ISA} but torch "
                           f"dispatches to {isa.active_isa()}; this torch build or CPU cannot "
                           "run the baselines' kernels (try --no-isa-pin with baselines of "
                           "this machine's ISA)")
    from kdbench.benchmarks.regress import gated_suites

    suites = [s.strip() for s in (args.suites or ",".join(gated_suites())).split(",")
              if s.strip()]
    for suite in suites:
        load_suite(suite)  # unknown names fail before anything runs
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    passed, report = regress(suites, args.baselines, args.results_dir,
                             args.cache_dir or default_cache_dir(), update=args.update,
                             reuse=args.reuse, methods=methods,
                             allow_fewer_seeds=args.allow_fewer_seeds)
    print(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    return 0 if passed or args.update else 1


def cmd_new_method(args: argparse.Namespace) -> int:
    from kdbench.benchmarks.scaffold import new_method

    for path in new_method(args.name, args.root):
        console.print(f"wrote {path}")
    console.print(f"next: edit methods/{args.name}.py, then `nox -s bench-cifar100 -- "
                  f"--methods {args.name}` and `nox -s tests`")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from kdbench.benchmarks.registry import load_task_packages

    load_task_packages()  # every suite's task: its models, datasets and methods are listed
    names = {"methods": lambda: known(METHODS), "models": lambda: known(MODELS),
             "datasets": lambda: known(DATASETS), "suites": known_suites}[args.what]()
    print("\n".join(names))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s", handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    handlers = {"run": cmd_run, "leaderboard": cmd_leaderboard, "compare": cmd_compare,
        "list": cmd_list,
        "report": cmd_report, "regress": cmd_regress, "new-method": cmd_new_method,
        "sweep": cmd_sweep, "claims": cmd_claims, "export": cmd_export,
        "mlflow": cmd_mlflow}
    # SIGTERM (a scheduler's preemption, `kill`) stops a run like Ctrl-C: no record, the
    # last epoch checkpoint kept for --resume.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return handlers[args.command](args)
    except KdbenchError as exc:
        console.print(f"[bold red]kdbench: error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        console.print("kdbench: interrupted; finished runs are saved, re-run with --resume "
                      "to continue the others from their last checkpoint")
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _primary() -> bool:
    from kdbench.benchmarks import distributed

    return distributed.current().primary


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
