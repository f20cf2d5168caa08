"""``kdbench export``: a leaderboard row's model, as it was measured, in a chosen format,
with a model card (markdown with ``model-index`` YAML front matter) from its records.

The artifact is checked against the sha256 in its record before anything is written, and
nothing in the output folder is overwritten.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kdbench.benchmarks.artifacts import PROGRAM, WEIGHTS, verified
from kdbench.benchmarks.atomic import write_text
from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.errors import ConfigError, KdbenchError
from kdbench.benchmarks.portable import model_index
from kdbench.benchmarks.records import load_records

FORMATS = ("pt2", "onnx", "safetensors")


def find_run(results_dir: Path, suite: str, budget: str, row: str, seed: int,
             pair: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fp32 record of ``row`` with ``seed`` (and ``pair`` "teacher-student"), and every
    record of that row (for the model card's statistics)."""
    records = [r for r in load_records(results_dir, suite, budget)
               if r.get("deploy", "fp32") == "fp32"]
    of_row = [r for r in records if r["method"] == row]
    if not of_row:
        rows = sorted({r["method"] for r in records})
        raise KdbenchError(f"no successful run of {row!r} in {suite}/{budget} under "
                           f"{results_dir}/runs; rows with runs: {', '.join(rows) or 'none'}")
    pairs = sorted({f"{r['teacher']}-{r['student']}" for r in of_row})
    if pair is None and len(pairs) > 1:
        raise ConfigError(f"{row!r} ran on {len(pairs)} pairs; choose one with --pair "
                          f"({', '.join(pairs)})")
    chosen = pair or pairs[0]
    of_pair = [r for r in of_row if f"{r['teacher']}-{r['student']}" == chosen]
    if not of_pair:
        raise ConfigError(f"{row!r} has no runs on pair {chosen!r}; its pairs: "
                          f"{', '.join(pairs)}")
    run = next((r for r in of_pair if r["seed"] == seed), None)
    if run is None:
        seeds = ", ".join(str(s) for s in sorted(r["seed"] for r in of_pair))
        raise ConfigError(f"{row!r} on {chosen} has no run with seed {seed}; its seeds: {seeds}")
    return run, of_pair


def export_run(run: dict[str, Any], fmt: str, out: Path, results_dir: Path) -> Path:
    """Write ``run``'s model as ``fmt`` into ``out``; returns the file."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    name = {"pt2": PROGRAM, "safetensors": WEIGHTS, "onnx": "model.onnx"}[fmt]
    target = out / name
    if target.exists():
        raise KdbenchError(f"{target} exists; export into an empty folder (nothing was "
                           "overwritten)")
    source = verified(run, "safetensors" if fmt == "safetensors" else "pt2", results_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "onnx":
            _to_onnx(source, target)
        else:
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(target)
    except OSError as exc:
        raise KdbenchError(f"cannot write {target}: {exc.strerror or exc}; --out must be a "
                           "writable folder") from exc
    return target


def _to_onnx(program_path: Path, target: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as exc:
        raise KdbenchError("exporting ONNX needs the onnx and onnxscript packages: pip "
                           "install onnx onnxscript") from exc
    import torch

    program = torch.export.load(program_path)
    example = program.example_inputs[0]
    tmp = target.with_name(f".{target.name}.tmp")
    torch.onnx.export(program, example, str(tmp), dynamo=True, external_data=False)
    tmp.replace(target)


def model_card(run: dict[str, Any], runs: list[dict[str, Any]], fmt: str, file: Path) -> str:
    """Markdown with ``model-index`` YAML front matter, generated from the row's records."""
    board = leaderboard(runs)
    front = model_index(board, run["suite"], run["budget"], run["dataset"])
    row = board.iloc[0]
    env = run.get("environment") or {}
    latency = []
    for entry in run.get("latency", []):
        s = entry["setting"]
        latency.append(f"| {s['device']} | {s['threads']} | {s['batch']} | "
                       f"{entry['student']['stats']['median_ms']:.3f} | {entry['speedup']:.2f}× |")
    lines = [
        "---", front.rstrip(), "---", "",
        f"# {run['method']}: {run['teacher']} → {run['student']} ({run['suite']}, "
        f"{run['budget']} budget)", "",
        f"Exported by `kdbench export` as `{file.name}` ({fmt}) from the seed-{run['seed']} run "
        f"(config hash `{run.get('config_hash', '')}`, teacher sha256 "
        f"`{run['teacher_checkpoint'].get('sha256', '')[:16]}…`).", "",
        f"- {run['metric_name']}: {row['metric_mean']:.2f} ± {row['metric_std']:.2f} "
        f"(mean ± std over {int(row['n'])} seeds, the last epoch; this run: "
        f"{run['metrics'][run['metric_name']]:.2f}) on {run['test_images']} "
        f"{run['data_source']} test images",
        f"- parameters {run['params']:,} ({run['params_ratio']:.3f}× the teacher), MACs "
        f"{run['macs']:,} ({run['macs_ratio']:.3f}×), counted on the exported model",
    ]
    if latency:
        lines += ["", f"Latency of this run on {env.get('cpu') or env.get('cpu_model') or 'CPU'}"
                  " (median; speed-up against the teacher, interleaved in one process):", "",
                  "| device | threads | batch | median ms | speed-up |", "|---|---|---|---|---|",
                  *latency]
    return "\n".join(lines) + "\n"


def export(results_dir: Path, suite: str, budget: str, row: str, fmt: str, out: Path,
           seed: int = 0, pair: str | None = None) -> list[Path]:
    run, runs = find_run(results_dir, suite, budget, row, seed, pair)
    card = out / "README.md"
    if card.exists():
        raise KdbenchError(f"{card} exists; export into an empty folder (nothing was "
                           "overwritten)")
    file = export_run(run, fmt, out, results_dir)
    write_text(model_card(run, runs, fmt, file), card)
    return [file, card]

