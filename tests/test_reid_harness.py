"""The reid-market1501 suite end to end: real loader on a generated Market-1501, the ``reid``
evaluator, embedding-network measurement, KDAS-ReID's record and the leaderboard columns."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.config import Pair, load_suite
from kdbench.benchmarks.contract import RecordingHarness
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measurement import ContractError, DeployedView
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.records import load_records
from kdbench.benchmarks.table import render_table
from kdbench.reid.evaluation import embedding_fn
from kdbench.reid.fixtures import write_market1501
from kdbench.reid.nas import build_derived

METHODS = ["kdas_reid"]


@pytest.fixture(scope="module")
def suite():
    """The shipped suite with a cheap pair and recipe (the rest exactly as shipped)."""
    suite = load_suite("reid-market1501")
    smoke = suite.budget("smoke")
    smoke = dataclasses.replace(
        smoke, pairs=(Pair("resnet10_reid", "resnet10_reid"),),
        train=smoke.train.replace(epochs=2), teacher_train=smoke.teacher_recipe.replace(epochs=2))
    return dataclasses.replace(suite, budgets={"smoke": smoke})


@pytest.fixture(scope="module")
def run(suite, tmp_path_factory):
    root = tmp_path_factory.mktemp("market")
    write_market1501(root, train_ids=6, test_ids=4, cameras_per_id=3, queries_per_id=1,
                     distractors=2)
    results = tmp_path_factory.mktemp("results")
    harness = RecordingHarness(suite, "smoke", RunOptions(
        results_dir=results, cache_dir=tmp_path_factory.mktemp("cache"),
        dataset_overrides={"root": str(root), "synthetic_fallback": False},
        measure_latency=False))
    harness.run(METHODS, seeds=[0])
    records = {r["method"]: r for r in load_records(results, suite.name, "smoke")}
    return harness, records


def test_records_carry_rank1_map_and_the_teachers_scores(run):
    _, records = run
    assert set(records) == set(METHODS)
    for r in records.values():
        assert (r["dataset"], r["data_source"], r["metric_name"]) == ("market1501", "synthetic",
                                                                      "rank1")
        m = r["metrics"]
        assert set(m) == {"rank1", "rank5", "rank10", "mAP"}
        assert 0 <= m["rank1"] <= m["rank5"] <= m["rank10"] <= 100 and 0 < m["mAP"] <= 100
        assert {"rank1", "mAP"} <= set(r["teacher_metrics"])
        details = r["extras"]["evaluators"]["reid"]
        assert details["input_size"] == [64, 32]  # the smoke budget's size
        assert (details["queries"], details["gallery"]) == (4, 4 * 5 + 2)


def test_the_embedding_network_is_measured_without_the_classifier(run):
    harness, records = run
    for name, r in records.items():
        model, _ = harness.returned[name]
        embed_params = sum(p.numel() for n, p in model.named_parameters()
                           if not n.startswith("classifier."))
        assert r["params"] == embed_params
        deployed = DeployedView(model.cpu().eval(), "embed")
        assert r["macs"] == count_macs(deployed, (torch.randn(1, 3, 64, 32),))
        assert r["params_ratio"] == pytest.approx(r["params"] / r["teacher_params"])


def test_kdas_record_rebuilds_the_measured_network(run):
    harness, records = run
    r = records["kdas_reid"]
    model, _ = harness.returned["kdas_reid"]
    rebuilt = build_derived(r["extras"]["architecture"], num_classes=6)
    rebuilt.load_state_dict(model.state_dict())
    assert r["extras"]["genotype"] == r["extras"]["architecture"]["genotype"]
    assert all(op != "none" for op, _ in r["extras"]["genotype"]["normal"])
    assert r["params_ratio"] < 0.5  # the paper's claim: under half the teacher
    assert r["extras"]["search"]["temperatures"] == [4.0, 1.0]  # T0 -> exactly 1 per epoch
    assert r["extras"]["retrain_temperatures"] == [4.0, 1.0]
    assert r["notes"] == ["student searched (the pair's student architecture is not used)"]


def test_leaderboard_shows_map(run, suite):
    harness, _ = run
    board = leaderboard(load_records(harness.results_dir, suite.name, "smoke"))
    assert {"mAP_mean", "rank5_mean", "teacher_metric_mean"} <= set(board.columns)
    assert board["teacher_metric_mean"].notna().all()
    columns = [c.header for c in render_table(board, metrics=suite.table_metrics).columns]
    at = columns.index("method")
    assert columns[at + 2:at + 5] == [f"{board['metric_name'].iloc[0]} ± std", "mAP", "rank5"]


def test_models_without_embed_are_refused_clearly(run):
    harness, _ = run
    with pytest.raises(ConfigError, match=r"needs model\.embed\(x\).*Linear has no embed"):
        embedding_fn(nn.Linear(2, 2))
    with pytest.raises(ContractError, match=r"deploys model\.embed\(x\), but the model of 'x'"):
        harness._deployed(nn.Linear(2, 2), "x")
