"""The plugin contract, checked over every registered method on the smoke budget.

For each method: the run record is complete and honest (metric in range, params and MACs
measured on the returned model, last-epoch accuracy, teacher hash), the returned model is
deployable (no prune masks, no hooks) and, unless the method is the teacher row itself, it
is not simply the teacher handed back. The check itself lives in ``benchmarks.contract`` so
out-of-tree plugins can run it in their own tests.
"""

from __future__ import annotations

import pytest

from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.contract import check_contract
from kdbench.benchmarks.planning import build_method
from kdbench.benchmarks.registry import METHODS, known


def image_methods() -> list[str]:
    """Every registered method that runs on the CIFAR-100 smoke pair the check uses (a
    detection method, registered when a detection suite was loaded, is checked by
    ``tests/test_detection_suite.py`` on its own suite)."""
    suite = load_suite("cifar100")
    budget = suite.budget("smoke")
    return [name for name in known(METHODS)
            if build_method(suite, budget, name, {}).supports(budget.pairs[0]) is None]


@pytest.mark.parametrize("method", image_methods())
def test_method_honours_the_contract(method, cifar_root, cache_dir, tmp_path):
    records = check_contract(method, tmp_path, cache_dir=cache_dir, data_root=cifar_root)
    assert {r["method"].split(":")[0] for r in records} == {method}
    assert all(r["data_source"] == "synthetic" for r in records)  # the fixture marks itself
