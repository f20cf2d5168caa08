"""``kdbench run --mlflow`` and ``kdbench mlflow``: each record becomes one MLflow run whose
params are the resolved method config and whose metrics are the record's figures, logged
once however often it is asked; a missing or unusable tracking store is a clear error."""

from __future__ import annotations

import pytest
from test_record_configuration import TINY_SUITE

from kdbench.benchmarks import mlflow_log
from kdbench.benchmarks.cli import main
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.records import load_records

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (kdbench[mlflow]) is not "
                             "installed; nox -s tests installs it")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    suite = tmp / "tiny-digits.py"
    suite.write_text(TINY_SUITE)
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    assert main(["run", "--suite", str(suite), "--methods", "kd", "--results-dir",
                 str(tmp / "results"), "--cache-dir", str(tmp / "cache"), "--no-latency",
                 "--quiet", "--mlflow", uri]) == 0
    [record] = load_records(tmp / "results")
    return tmp, uri, record


def _runs(uri: str, record: dict) -> list:
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"kdbench/{record['suite']}/{record['budget']}")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id])


def test_a_run_is_logged_with_its_config_and_figures(logged):
    _, uri, record = logged
    [run] = _runs(uri, record)
    assert run.data.tags["kdbench.run_id"] == record["run_id"]
    assert run.data.metrics["top1"] == pytest.approx(record["metrics"]["top1"])
    assert run.data.metrics["params"] == record["params"]
    assert run.data.metrics["macs_ratio"] == pytest.approx(record["macs_ratio"])
    assert run.data.params["seed"] == str(record["seed"])
    assert run.data.params["config_hash"] == record["config_hash"]
    for key, value in record["config"].items():
        assert f"method.{key}" in run.data.params, key
        if isinstance(value, str):
            assert run.data.params[f"method.{key}"] == value


def test_logging_again_adds_no_run(logged):
    tmp, uri, record = logged
    assert main(["mlflow", "--suite", record["suite"], "--budget", record["budget"],
                 "--results-dir", str(tmp / "results"), "--uri", uri]) == 0
    assert len(_runs(uri, record)) == 1


def test_an_unusable_tracking_uri_is_named_before_any_training(tmp_path):
    with pytest.raises(ConfigError, match="cannot use this tracking URI"):
        mlflow_log.check("nosuchscheme://nowhere")


def test_logging_a_suite_without_records_says_so(tmp_path, capsys):
    assert main(["mlflow", "--suite", "digits", "--results-dir", str(tmp_path),
                 "--uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    captured = capsys.readouterr()
    assert "norunrecordsforsuite'digits'" in "".join((captured.out + captured.err).split())
