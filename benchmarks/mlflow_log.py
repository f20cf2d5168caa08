"""Optional MLflow logging of finished runs (``kdbench run --mlflow [URI]``).

Each record becomes one MLflow run in the experiment ``kdbench/<suite>/<budget>``: params are
the run's resolved method config (``method.<key>``) and what identifies it (pair, seed,
deploy target, config hash, teacher sha256); metrics are the record's figures as the
leaderboard reads them (accuracy metrics, params, MACs and their ratios, weight bytes, median
latencies and speed-ups per setting, wall time). The record stays the source of truth: a run
already logged (same ``kdbench.run_id`` tag) is not logged twice.

The default store is SQLite inside ``./mlruns`` (MLflow's file store is in maintenance mode
and refuses to start without an opt-out); any tracking URI MLflow accepts works, e.g. a
tracking server's ``http://host:5000``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kdbench.benchmarks.board import runs_frame
from kdbench.benchmarks.errors import ConfigError

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
INSTALL_HINT = "pip install 'kdbench[mlflow]' (mlflow-skinny with SQLAlchemy and Alembic)"
# Leaderboard columns that are labels, not figures (logged as tags).
_TAG_COLUMNS = ("method", "suite", "budget", "data_source", "deploy", "deploy_status", "notes",
                "isa", "config_hash", "teacher_sha256", "created", "macs_dtype")


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ConfigError(f"--mlflow needs MLflow: {INSTALL_HINT}") from exc
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        # sqlite:///rel/path.db -> "/rel/path.db" (relative); sqlite:////abs -> "//abs"
        db = Path(parsed.path[1:])
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def check(uri: str) -> None:
    """Fail now, naming the fix, when MLflow is missing or refuses ``uri``."""
    try:
        _client(uri).search_experiments(max_results=1)
    except ConfigError:
        raise
    except Exception as exc:  # MLflow raises many kinds for a bad store
        raise ConfigError(f"--mlflow {uri}: MLflow cannot use this tracking URI "
                          f"({type(exc).__name__}: {exc}); the default is {DEFAULT_URI}"
                          ) from exc


def log_records(records: list[tuple[Path, dict[str, Any]]], uri: str = DEFAULT_URI) -> int:
    """Log records already on disk (``kdbench mlflow``); returns how many were new."""
    check(uri)
    return sum(log_record(record, path, uri)[1] for path, record in records)


def _logged(client: Any, record: dict[str, Any]) -> str | None:
    """The MLflow run id of ``record`` if it was logged before, else None."""
    experiment = client.get_experiment_by_name(_experiment(record))
    if experiment is None:
        return None
    done = client.search_runs([experiment.experiment_id],
                              f"tags.`kdbench.run_id` = '{record['run_id']}'", max_results=1)
    return done[0].info.run_id if done else None


def _experiment(record: dict[str, Any]) -> str:
    return f"kdbench/{record['suite']}/{record['budget']}"


def _params(record: dict[str, Any]) -> dict[str, str]:
    params = {f"method.{k}": v if isinstance(v, str) else json.dumps(v)
              for k, v in sorted((record.get("config") or {}).items())}
    params.update({"pair": f"{record['teacher']}->{record['student']}",
                   "seed": str(record["seed"]), "deploy": record.get("deploy", "fp32"),
                   "config_hash": record.get("config_hash", ""),
                   "teacher_sha256": (record.get("teacher_checkpoint") or {}).get("sha256", "")})
    return params


def figures(record: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """The record's leaderboard figures (finite numbers) and labels, as MLflow sees them."""
    row = runs_frame([record]).iloc[0].to_dict()
    metrics, tags = {}, {}
    for key, value in row.items():
        name = key.removeprefix("metric:")
        if key in _TAG_COLUMNS or isinstance(value, str):
            tags[f"kdbench.{name}"] = str(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and key not in ("seed", "metric"):
            metrics[name] = float(value)
    if "wall_time_s" in record:
        metrics["wall_time_s"] = float(record["wall_time_s"])
    return metrics, tags


def log_record(record: dict[str, Any], record_path: Path,
               uri: str = DEFAULT_URI) -> tuple[str, bool]:
    """Log one record as an MLflow run; returns its MLflow run id and whether it is new (a
    record logged before keeps its run)."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    logged = _logged(client, record)
    if logged is not None:
        return logged, False
    name = _experiment(record)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else client.create_experiment(name))
    label = f"{record['method']} {record['teacher']}->{record['student']} seed {record['seed']}"
    if record.get("deploy", "fp32") != "fp32":
        label += f" [{record['deploy']}]"
    metrics, tags = figures(record)
    tags.update({"kdbench.run_id": record["run_id"], "kdbench.record": str(record_path)})
    run = client.create_run(experiment_id, run_name=label)
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())],
                     params=[Param(k, v) for k, v in _params(record).items()],
                     tags=[RunTag(k, v) for k, v in sorted(tags.items())])
    client.set_terminated(run.info.run_id)
    return run.info.run_id, True
