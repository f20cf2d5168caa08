"""The leaderboard in formats other tools read: one versioned JSON document, and the rows
as Hugging Face ``model-index`` YAML (the metadata block of a model card).

Both are derived from the board (never edited by hand) and say which statistic a number is:
the last epoch's metric, mean and sample std over seeds, the 95 % t-interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import jsonschema
import pandas as pd
import yaml

JSON_SCHEMA_VERSION = 1
ACCURACY_STATISTIC = "last_epoch"  # every record's metric is its last epoch's (no best-epoch)

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_SPEEDUP = {"type": "object", "required": ["median", "ci_low", "ci_high", "noise"],
            "properties": {"median": _NUMBER_OR_NULL, "ci_low": _NUMBER_OR_NULL,
                           "ci_high": _NUMBER_OR_NULL,
                           "noise": {"enum": ["ok", "warn", "rerun", None]}}}
_ROW = {
    "type": "object",
    "required": ["method", "teacher", "student", "data_source", "deploy", "n", "seeds",
                 "metric", "params", "macs", "params_ratio", "macs_ratio", "teacher_sha256",
                 "config_hash", "reference", "delta_vs_reference", "speedups"],
    "properties": {
        "method": {"type": "string"}, "teacher": {"type": "string"},
        "student": {"type": "string"}, "data_source": {"enum": ["real", "synthetic"]},
        "deploy": {"type": "string"}, "n": {"type": "integer", "minimum": 1},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "metric": {"type": "object", "required": ["name", "mean", "std", "ci_low", "ci_high"],
                   "properties": {"name": {"type": "string"}, "mean": _NUMBER_OR_NULL,
                                  "std": _NUMBER_OR_NULL, "ci_low": _NUMBER_OR_NULL,
                                  "ci_high": _NUMBER_OR_NULL}},
        "params": {"type": "number"}, "macs": {"type": "number"},
        "params_ratio": {"type": "number"}, "macs_ratio": {"type": "number"},
        "teacher_sha256": {"type": "array", "items": {"type": "string"}},
        "config_hash": {"type": "string"}, "reference": {"type": "string"},
        "delta_vs_reference": _NUMBER_OR_NULL,
        "speedups": {"type": "object", "additionalProperties": _SPEEDUP},
    },
}
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "kdbench leaderboard",
    "type": "object",
    "required": ["schema", "schema_version", "suite", "budget", "accuracy_statistic",
                 "aggregate", "interval", "rows"],
    "properties": {
        "schema": {"const": "kdbench-leaderboard"},
        "schema_version": {"const": JSON_SCHEMA_VERSION},
        "suite": {"type": "string"}, "budget": {"type": "string"},
        "accuracy_statistic": {"const": ACCURACY_STATISTIC},
        "aggregate": {"type": "string"}, "interval": {"type": "string"},
        "rows": {"type": "array", "items": _ROW},
    },
}


def _number(value: Any) -> float | None:
    """A JSON number, or null for a missing/NaN value (JSON has no NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _speedups(row: pd.Series) -> dict[str, dict[str, Any]]:
    out = {}
    for col in row.index:
        if col.startswith("speedup_") and _number(row[col]) is not None:
            key = col.removeprefix("speedup_")
            noise = row.get(f"noise_speedup_{key}")
            out[key] = {"median": _number(row[col]),
                        "ci_low": _number(row.get(f"ci_low_speedup_{key}")),
                        "ci_high": _number(row.get(f"ci_high_speedup_{key}")),
                        "noise": noise if isinstance(noise, str) else None}
    return out


def _rows(board: pd.DataFrame) -> Iterable[pd.Series]:
    ok = board if "status" not in board else board[board["status"].fillna("ok") == "ok"]
    return (r for _, r in ok.iterrows())


def board_document(board: pd.DataFrame, suite: str, budget: str) -> dict[str, Any]:
    """The leaderboard as one JSON-serialisable document, checked against ``JSON_SCHEMA``."""
    rows = []
    for r in _rows(board):
        rows.append({
            "method": r["method"], "teacher": r["teacher"], "student": r["student"],
            "data_source": r["data_source"], "deploy": r.get("deploy", "fp32"),
            "n": int(r["n"]), "seeds": [int(s) for s in str(r["seeds"]).split(",") if s],
            "metric": {"name": r["metric_name"], "mean": _number(r["metric_mean"]),
                       "std": _number(r["metric_std"]), "ci_low": _number(r["ci_low"]),
                       "ci_high": _number(r["ci_high"])},
            "params": float(r["params"]), "macs": float(r["macs"]),
            "params_ratio": float(r["params_ratio"]), "macs_ratio": float(r["macs_ratio"]),
            "teacher_sha256": [s for s in str(r.get("teacher_sha256") or "").split(",") if s],
            "config_hash": str(r.get("config_hash") or ""), "reference": r["reference"],
            "delta_vs_reference": _number(r["delta_vs_reference"]),
            "speedups": _speedups(r),
        })
    document = {"schema": "kdbench-leaderboard", "schema_version": JSON_SCHEMA_VERSION,
                "suite": suite, "budget": budget, "accuracy_statistic": ACCURACY_STATISTIC,
                "aggregate": "mean and sample std over seeds; speed-ups: median over seeds, "
                             "CI the envelope of the seeds' CIs",
                "interval": "95 % t-interval over seeds", "rows": rows}
    jsonschema.validate(document, JSON_SCHEMA)
    return document


def model_index(board: pd.DataFrame, suite: str, budget: str, dataset: str) -> str:
    """The rows as ``model-index`` YAML: one model per row, its metrics with n and std."""
    models = []
    for r in _rows(board):
        metrics = [{"type": "accuracy" if r["metric_name"].startswith("top") else
                    r["metric_name"], "name": f"{r['metric_name']} (mean of {int(r['n'])} "
                    f"seeds, last epoch)", "value": round(float(r["metric_mean"]), 4)}]
        std = _number(r["metric_std"])
        if std is not None:
            metrics.append({"type": "std", "name": f"{r['metric_name']} std over seeds",
                            "value": round(std, 4)})
        metrics += [{"type": "params", "name": "parameters", "value": int(float(r["params"]))},
                    {"type": "macs", "name": "MACs (exported model)",
                     "value": int(float(r["macs"]))}]
        for key, s in _speedups(r).items():
            metrics.append({"type": "speedup", "name": f"speed-up vs teacher, {key}",
                            "value": round(s["median"], 4)})
        deploy = "" if r.get("deploy", "fp32") == "fp32" else f" ({r['deploy']})"
        models.append({
            "name": f"{r['method']}{deploy} {r['teacher']}->{r['student']} ({suite}, {budget})",
            "results": [{"task": {"type": "image-classification"},
                         "dataset": {"name": dataset, "type": suite, "split": "test",
                                     "config": f"{r['data_source']} data"},
                         "metrics": metrics}]})
    return yaml.safe_dump({"model-index": models}, sort_keys=False, allow_unicode=True)
