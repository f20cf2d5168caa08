"""The fashion-mnist suite: real format, whole test split, and a harness run end to end."""

from __future__ import annotations

import dataclasses

import pytest

from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.data.fashion_mnist import write_fashion_mnist
from kdbench.benchmarks.errors import DatasetError


def test_every_budget_scores_the_whole_test_set_and_never_falls_back():
    suite = load_suite("fashion-mnist")
    assert suite.dataset["type"] == "fashion_mnist"
    assert suite.dataset["synthetic_fallback"] is False
    assert set(suite.budgets) == {"smoke", "short", "full"}
    assert all(b.test_subset is None for b in suite.budgets.values())
    assert suite.budgets["smoke"].train_subset and suite.budgets["full"].train_subset is None
    assert suite.budgets["short"].seeds == 5


def test_missing_data_is_an_error_naming_where_it_looked(tmp_path, monkeypatch):
    from kdbench.benchmarks.data import fashion_mnist
    from kdbench.benchmarks.runner import load_dataset

    monkeypatch.setattr(fashion_mnist, "DEBIAN_FOLDER", tmp_path / "no-debian")
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(load_suite("fashion-mnist"), {"root": str(tmp_path), "download": False})


@pytest.mark.slow
def test_a_smoke_run_on_idx_files_gives_a_real_record_of_exactly_what_ran(tmp_path):
    from kdbench.benchmarks.options import RunOptions
    from kdbench.benchmarks.records import load_records
    from kdbench.benchmarks.runner import Harness

    root = tmp_path / "data"
    write_fashion_mnist(root / "fashion-mnist", n_train_per_class=30, n_test_per_class=10)
    suite = load_suite("fashion-mnist")
    smoke = suite.budgets["smoke"]
    tiny = dataclasses.replace(smoke, train=smoke.train.replace(epochs=1),
                               teacher_train=smoke.teacher_recipe.replace(epochs=1))
    harness = Harness(dataclasses.replace(suite, budgets={"smoke": tiny}), "smoke", RunOptions(
        results_dir=tmp_path / "results", cache_dir=tmp_path / "cache",
        dataset_overrides={"root": str(root), "download": False},
        measure_latency=False, progress=False))
    harness.run(["scratch"], [0])
    (record,) = [r for r in load_records(tmp_path / "results", "fashion-mnist", "smoke")
                 if r["method"] == "scratch"]
    assert record["dataset"] == "fashion_mnist" and record["test_images"] == 100
    assert record["data_source"] == "synthetic"  # the fixture writer marks its files
    # the zoo model as it runs on 3 x 32 x 32 padded images: resnet8 with 10 classes
    from kdbench.benchmarks.registry import build_model

    model = build_model("resnet8", num_classes=10)
    assert record["params"] == sum(p.numel() for p in model.parameters())
