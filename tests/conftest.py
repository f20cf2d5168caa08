"""Shared fixtures: small datasets in the real on-disk formats and a harness on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KDBENCH_PROGRESS", "0")  # no progress bars in test logs


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A 500-train / 200-test CIFAR-100 directory written in the official pickle layout."""
    from kdbench.benchmarks.contract import fixture_data

    return fixture_data(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One teacher cache for the whole session, so each teacher is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_harness(cifar_root, cache_dir, tmp_path):
    """Build a Harness on the CIFAR-100 suite's smoke budget over the fixture data;
    keyword arguments: ``budget`` and any :class:`RunOptions` field."""
    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.options import RunOptions
    from kdbench.benchmarks.runner import Harness

    def make(budget="smoke", **changes):
        changes.setdefault("results_dir", tmp_path / "results")
        changes.setdefault("cache_dir", cache_dir)
        changes.setdefault("dataset_overrides", {"root": str(cifar_root), "download": False,
                                                 "synthetic_fallback": False})
        return Harness(load_suite("cifar100"), budget, RunOptions.of(**changes))

    return make


@pytest.fixture
def make_context(cifar_root, tmp_path):
    """Build a ``RunContext`` on the fixture data around a given (e.g. random) teacher.

    For calling a method's ``run`` or its steps directly in a unit test, without the
    harness's teacher training and measurement. ``recipe`` changes the smoke recipe.
    """
    import dataclasses
    import logging

    import torch

    from kdbench.benchmarks.config import Pair, load_suite
    from kdbench.benchmarks.method import RunContext
    from kdbench.benchmarks.runner import load_dataset

    suite = load_suite("cifar100")
    data = load_dataset(suite, {"root": str(cifar_root), "download": False,
                                "synthetic_fallback": False})

    def make(teacher, pair=("resnet14", "resnet8"), seed=0, **recipe):
        budget = suite.budget("smoke")
        budget = dataclasses.replace(budget, train=budget.train.replace(**recipe))
        return RunContext(
            suite=suite, budget=budget, pair=Pair(*pair), seed=seed, device=torch.device("cpu"),
            data=data, workdir=tmp_path / "work", log=logging.getLogger("kdbench.test"),
            teacher_provider=lambda: teacher, train_split=data.train, test_split=data.test,
            progress=False,
        )

    return make


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory) -> Path:
    """The detection suites' synthetic COCO set, small: 12 train / 6 val images of 128x128."""
    from kdbench.detection.synthetic import SyntheticCocoSpec, write_synthetic_coco

    root = tmp_path_factory.mktemp("synthetic-coco")
    return write_synthetic_coco(root, SyntheticCocoSpec(num_train=12, num_val=6, seed=0))
