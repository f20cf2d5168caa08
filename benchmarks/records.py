"""Run records: one JSON file per run (versioned, written atomically) and reading them back.

A record is the whole account of one run of one method on one pair with one seed; a run
that failed leaves a ``FailedRun`` beside where its record would be, and a record replaced
by a newer run is kept beside it, marked ``replaced``. The leaderboard is derived from the
records (``benchmarks.board``), never edited by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdbench.benchmarks.atomic import write_json
from kdbench.benchmarks.errors import KdbenchError

SCHEMA_VERSION = 1


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


def replaced_path(record: Path, run_id: str) -> Path:
    """Where a record replaced by a newer run (``--force``, another configuration) is kept."""
    return record.with_name(f"{record.stem}.replaced-{run_id}.json")


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
            write_json(old, replaced_path(path, old.get("run_id", "unknown")))
    write_json(asdict(record), path)
    failure_path(path).unlink(missing_ok=True)  # an earlier failed attempt is superseded
    return path


def write_failure(failed: FailedRun, results_dir: Path) -> Path:
    """Record a failed run beside its (absent or earlier) record; it never replaces one."""
    path = failure_path(record_path(results_dir, failed.suite, failed.budget,
                                    failed.data_source, failed.method, failed.teacher,
                                    failed.student, failed.seed))
    write_json(asdict(failed), path)
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
