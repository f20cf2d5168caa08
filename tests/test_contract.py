"""The plugin contract, checked over every registered method on the smoke budget.

For each method: the run record is complete and honest (metric in range, params and MACs
measured on the returned model, last-epoch accuracy, teacher hash), the returned model is
deployable (no prune masks, no hooks) and, unless the method is the teacher row itself, it
is not simply the teacher handed back. The check itself lives in ``benchmarks.contract`` so
out-of-tree plugins can run it in their own tests.
"""

from __future__ import annotations

import pytest

from kdbench.benchmarks.contract import check_contract
from kdbench.benchmarks.registry import METHODS, known


@pytest.mark.parametrize("method", known(METHODS))
def test_method_honours_the_contract(method, cifar_root, cache_dir, tmp_path):
    records = check_contract(method, tmp_path, cache_dir=cache_dir, data_root=cifar_root)
    assert {r["method"].split(":")[0] for r in records} == {method}
    assert all(r["data_source"] == "synthetic" for r in records)  # the fixture marks itself
