"""Writing what a run produced: its run record (measured model), or its failure record.

A record is assembled from the run's parts — the method and its config, the measured model,
the teacher, the environment — and written atomically; a record is written only for a model
that was measured, a failure record only for a run that raised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kdbench.benchmarks import mlflow_log
from kdbench.benchmarks.config import Budget, Pair, SuiteConfig
from kdbench.benchmarks.data import ImageDataset
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.measure import fingerprint
from kdbench.benchmarks.measurement import Measurement
from kdbench.benchmarks.method import Compressed, Method, RunContext, config_dict
from kdbench.benchmarks.records import FailedRun, RunRecord, read_record, write_failure
from kdbench.benchmarks.supervised import supervised
from kdbench.benchmarks.teachers import TeacherInfo

log = logging.getLogger("kdbench")


def run_id(*parts: object) -> str:
    """A run's id: unique per write (it includes the time)."""
    key = "/".join(str(p) for p in (*parts, time.time_ns()))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fp32_record(*, suite: SuiteConfig, budget: Budget, data: ImageDataset, ctx: RunContext,
                method: Method, name: str, out: Compressed, metrics: dict[str, float],
                evaluated_with: dict[str, Any], measurement: Measurement,
                teacher_metrics: dict[str, float], teacher_info: TeacherInfo, wall: float,
                artifacts: dict[str, Any], config_hash: str) -> RunRecord:
    """The record of a returned model measured as eager fp32 (the board's main row)."""
    report, t_report = measurement.report, measurement.teacher_report
    return RunRecord(
        run_id=run_id(suite.name, budget.name, name, ctx.pair.label, ctx.seed),
        created=now(),
        suite=suite.name, dataset=data.name, data_source=data.data_source,
        budget=budget.name, method=name, method_label=method.label,
        teacher=ctx.pair.teacher, student=ctx.pair.student, seed=ctx.seed,
        metric_name=suite.metric, metrics=metrics, accuracy_statistic="last_epoch",
        teacher_metrics=teacher_metrics,
        teacher_checkpoint={"sha256": teacher_info.sha256, "source": teacher_info.source,
                            "path": teacher_info.path, "seed": ctx.teacher_seed,
                            "shared_by_seeds": budget.teacher_seed is not None},
        reference=method.reference,
        params=report.params, params_nonzero=report.params_nonzero, macs=report.macs,
        flops=report.flops, artifact_bytes=report.artifact_bytes,
        weight_bytes=report.weight_bytes, teacher_weight_bytes=t_report.weight_bytes,
        teacher_params=t_report.params, teacher_macs=t_report.macs,
        params_ratio=report.params / t_report.params,
        macs_ratio=report.macs / t_report.macs,
        model_report=dataclasses.asdict(report),
        latency=[dataclasses.asdict(r) for r in measurement.latency],
        wall_time_s=wall, notes=list(out.notes), extras={**out.extras, **(
            {"evaluators": evaluated_with} if evaluated_with else {})},
        config=config_dict(method.cfg),
        # the task's own schedule when its models train another way (an mmdet config's)
        recipe=supervised(data).recipe_of(out.model) or dataclasses.asdict(budget.train),
        environment=fingerprint(), test_images=len(ctx.test_split),
        config_hash=config_hash, artifacts=artifacts,
    )


def record_failure(*, suite: SuiteConfig, budget: Budget, data: ImageDataset, name: str,
                   pair: Pair, seed: int, exc: Exception, results_dir: Path) -> None:
    """Write the failure record of a run that raised (the run's own error stays the one
    reported: a failure to write it is logged, not raised)."""
    failed = FailedRun(
        run_id=run_id(name, pair.label, seed), created=now(),
        suite=suite.name, dataset=data.name, data_source=data.data_source,
        budget=budget.name, method=name, teacher=pair.teacher, student=pair.student,
        seed=seed, error=str(exc), error_type=type(exc).__name__, environment=fingerprint())
    try:
        path = write_failure(failed, results_dir)
    except KdbenchError as write_exc:
        log.error("could not record the failure of %s: %s", name, write_exc)
    else:
        log.error("%s %s seed %d failed; recorded in %s", name, pair.label, seed, path)


def log_to_mlflow(paths: Sequence[Path], uri: str) -> None:
    """Log the written records; a tracking failure never undoes a record (it is kept)."""
    for path in paths:
        try:
            mlflow_log.log_record(read_record(path), path, uri)
        except Exception as exc:  # any tracking error: warn, keep the record
            log.warning("  MLflow (%s) did not take %s: %s: %s; the record is kept, "
                        "`kdbench mlflow` logs it later", uri, path, type(exc).__name__, exc)
