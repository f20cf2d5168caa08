"""Shared fixtures: small datasets in the real on-disk formats and a harness on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KDBENCH_PROGRESS", "0")  # no progress bars in test logs


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A 500-train / 200-test CIFAR-100 directory written in the official pickle layout."""
    from benchmarks.data import write_cifar100

    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, n_train_per_class=5, n_test_per_class=2, seed=0)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One teacher cache for the whole session, so each teacher is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def make_harness(cifar_root, cache_dir, tmp_path):
    """Build a Harness on the CIFAR-100 suite's smoke budget over the fixture data."""
    from benchmarks.config import load_suite
    from benchmarks.runner import Harness

    def make(**kwargs):
        kwargs.setdefault("results_dir", tmp_path / "results")
        kwargs.setdefault("cache_dir", cache_dir)
        kwargs.setdefault("dataset_overrides", {"root": str(cifar_root), "download": False,
                                                "synthetic_fallback": False})
        return Harness(load_suite("cifar100"), kwargs.pop("budget", "smoke"), **kwargs)

    return make
