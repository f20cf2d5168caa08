"""The leaderboard as JSON (validated against its schema) and as model-index YAML (parsed
back): every row with n, mean, std, CI, the statistic used and the teacher hash."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml
from test_results import make_record

from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.cli import main
from kdbench.benchmarks.portable import JSON_SCHEMA, board_document
from kdbench.benchmarks.records import load_records, write_record


@pytest.fixture()
def results(tmp_path):
    for method, accs in (("kd", (71.0, 72.0, 70.5)), ("scratch", (69.0, 68.0, 69.5))):
        for seed, acc in enumerate(accs):
            record = make_record(method, seed, acc, reference="scratch", speedup=2.0 + seed)
            record.latency[0].update(speedup_ci_low=1.5, speedup_ci_high=3.5, noise="warn")
            write_record(record, tmp_path)
    return tmp_path


def test_json_report_is_valid_against_its_schema_and_carries_the_statistics(results, capsys):
    assert main(["report", "--suite", "cifar100", "--results-dir", str(results),
                 "--format", "json", "--out", str(results / "out")]) == 0
    document = json.loads((results / "out" / "leaderboard.json").read_text())
    jsonschema.validate(document, JSON_SCHEMA)
    assert document["schema_version"] == 1 and document["accuracy_statistic"] == "last_epoch"
    kd = next(r for r in document["rows"] if r["method"] == "kd")
    assert kd["n"] == 3 and kd["seeds"] == [0, 1, 2]
    assert kd["metric"]["mean"] == pytest.approx(71.1667, abs=1e-3)
    assert kd["metric"]["ci_low"] < kd["metric"]["mean"] < kd["metric"]["ci_high"]
    assert kd["teacher_sha256"] == ["0" * 64]
    assert kd["speedups"]["cpu_t1_b1"] == {"median": 3.0, "ci_low": 1.5, "ci_high": 3.5,
                                           "noise": "warn"}
    assert kd["delta_vs_reference"] == pytest.approx(71.1667 - 68.8333, abs=1e-3)


def test_a_document_that_breaks_the_schema_is_refused(results):
    document = board_document(leaderboard(load_records(results)), "cifar100", "smoke")
    document["rows"][0]["n"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, JSON_SCHEMA)


def test_model_index_yaml_parses_back_with_every_row(results):
    assert main(["report", "--suite", "cifar100", "--results-dir", str(results),
                 "--format", "model-index", "--out", str(results / "out")]) == 0
    index = yaml.safe_load((results / "out" / "model-index.yaml").read_text())["model-index"]
    assert len(index) == 2
    kd = next(m for m in index if m["name"].startswith("kd "))
    [result] = kd["results"]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"]["split"] == "test"
    metrics = {m["type"]: m for m in result["metrics"]}
    assert metrics["accuracy"]["value"] == pytest.approx(71.1667, abs=1e-3)
    assert "mean of 3 seeds, last epoch" in metrics["accuracy"]["name"]
    assert metrics["std"]["value"] > 0 and metrics["params"]["value"] == 100
