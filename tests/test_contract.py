"""The plugin contract, checked over every registered method on the smoke budget.

For each method: the run record is complete and honest (metric in range, params and MACs
measured on the returned model, last-epoch accuracy, teacher hash), the returned model is
deployable (no prune masks, no hooks) and, unless the method is the teacher row itself, it
is not simply the teacher handed back.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from benchmarks.measure import count_macs
from benchmarks.measure.params import deployment_problems
from benchmarks.registry import METHODS, known
from benchmarks.results import RunRecord
from benchmarks.runner import Harness
from benchmarks.teachers import sha256_file

REQUIRED = {f.name for f in dataclasses.fields(RunRecord)}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


@pytest.mark.parametrize("method", known(METHODS))
def test_method_honours_the_contract(method, make_harness, monkeypatch):
    harness = make_harness()
    returned = {}
    measure = Harness.measure

    def spy(self, ctx, m, name, out, teacher, info, wall):
        returned[name] = (out.model, teacher)
        return measure(self, ctx, m, name, out, teacher, info, wall)

    monkeypatch.setattr(Harness, "measure", spy)
    paths = harness.run([method], seeds=[0])
    assert paths, f"{method} wrote no record"
    for path in paths:
        record = json.loads(path.read_text())
        assert set(record) >= REQUIRED, f"missing fields {REQUIRED - set(record)}"
        model, teacher = returned[record["method"]]

        assert record["data_source"] == "synthetic"  # the fixture marks itself
        assert record["accuracy_statistic"] == "last_epoch"
        assert 0.0 <= record["metrics"]["top1"] <= record["metrics"]["top5"] <= 100.0
        assert record["teacher_checkpoint"]["sha256"] == sha256_file(
            harness.teachers.dir / record["teacher_checkpoint"]["path"].split("/")[-1])

        # Size and cost are measured by the harness on exactly the returned model.
        unique = {id(p): p.numel() for p in model.parameters()}
        assert record["params"] == sum(unique.values())
        assert record["macs"] == count_macs(model.cpu(), (torch.randn(1, 3, 32, 32),))
        assert record["flops"] == 2 * record["macs"]
        assert record["params_ratio"] == pytest.approx(record["params"] / record["teacher_params"])
        assert record["latency"], "latency vs the teacher was not measured"
        assert all(entry["speedup"] > 0 for entry in record["latency"])

        assert deployment_problems(model) == []
        assert not any(n.endswith(("weight_orig", "weight_mask"))
                       for n, _ in model.named_parameters())
        if method != "teacher":
            assert not _same_weights(model, teacher), f"{method} returned the teacher unchanged"
