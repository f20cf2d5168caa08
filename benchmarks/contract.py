"""The plugin contract check, usable from any test suite (in-tree or out-of-tree plugins).

``check_contract("mine", workdir)`` runs method ``mine`` through the real harness on the
CIFAR-100 suite's smoke budget over a small generated dataset in the official format, and
raises ``ContractViolation`` listing every way the run broke the contract: an incomplete or
dishonest record, size/cost not measured on the returned model, masks or hooks left in it,
or (for anything but the teacher row) the teacher handed back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.data import write_cifar100
from kdbench.benchmarks.measure import count_macs
from kdbench.benchmarks.measure.params import deployment_problems
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.records import RunRecord
from kdbench.benchmarks.runner import Harness
from kdbench.benchmarks.teachers import sha256_file

REQUIRED_FIELDS = {f.name for f in dataclasses.fields(RunRecord)}


class ContractViolation(AssertionError):
    """A method's run broke the plugin contract; the message lists every problem."""


class RecordingHarness(Harness):
    """A harness that keeps what each method returned, to check it against its record."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.returned: dict[str, tuple[nn.Module, nn.Module]] = {}

    def measure(self, ctx, method, name, out, teacher, teacher_info, wall):
        self.returned[name] = (out.model, teacher)
        return super().measure(ctx, method, name, out, teacher, teacher_info, wall)


def fixture_data(root: Path) -> Path:
    """A 500-train / 200-test CIFAR-100 directory in the official layout (written once)."""
    if not (root / "cifar-100-python" / "meta").exists():
        write_cifar100(root, n_train_per_class=5, n_test_per_class=2, seed=0)
    return root


def check_contract(method: str, workdir: Path | str, *, cache_dir: Path | str | None = None,
                   data_root: Path | str | None = None) -> list[dict[str, Any]]:
    """Run ``method`` (seed 0, smoke budget) and check every record it wrote.

    Returns the records; raises ``ContractViolation`` naming each problem found.
    """
    workdir = Path(workdir)
    harness = RecordingHarness(load_suite("cifar100"), "smoke", RunOptions(
        results_dir=workdir / "results", cache_dir=Path(cache_dir or workdir / "cache"),
        dataset_overrides={"root": str(fixture_data(Path(data_root or workdir / "data"))),
                           "download": False, "synthetic_fallback": False},
        force=True,
    ))
    paths = harness.run([method], seeds=[0])
    if not paths:
        raise ContractViolation(f"{method}: the run wrote no record")
    records = [json.loads(p.read_text()) for p in paths]
    problems = [f"{r['method']}: {p}" for r in records
                for p in record_problems(r, *harness.returned[r["method"]], harness, method)]
    if problems:
        raise ContractViolation("plugin contract broken:\n  " + "\n  ".join(problems))
    return records


def record_problems(record: dict[str, Any], model: nn.Module, teacher: nn.Module,
                    harness: Harness, method: str) -> list[str]:
    """Everything wrong with one record and the model it describes."""
    problems = []
    missing = REQUIRED_FIELDS - set(record)
    if missing:
        problems.append(f"record lacks fields {sorted(missing)}")
        return problems
    metrics = record["metrics"]
    if not 0.0 <= metrics["top1"] <= metrics["top5"] <= 100.0:
        problems.append(f"accuracies out of range or top1 > top5: {metrics}")
    if record["accuracy_statistic"] != "last_epoch":
        problems.append(f"accuracy_statistic is {record['accuracy_statistic']!r}, not last_epoch")
    teacher_file = harness.teachers.dir / Path(record["teacher_checkpoint"]["path"]).name
    if record["teacher_checkpoint"]["sha256"] != sha256_file(teacher_file):
        problems.append("teacher sha256 does not match the cached teacher checkpoint")

    unique = {id(p): p.numel() for p in model.parameters()}
    if record["params"] != sum(unique.values()):
        problems.append(f"params {record['params']} != {sum(unique.values())} counted on the "
                        "returned model")
    macs = count_macs(model.cpu(), (torch.randn(1, *harness.data.input_shape),))
    if record["macs"] != macs or record["flops"] != 2 * macs:
        problems.append(f"MACs {record['macs']} / FLOPs {record['flops']} do not match "
                        f"{macs} MACs counted on the returned model")
    if abs(record["params_ratio"] - record["params"] / record["teacher_params"]) > 1e-9:
        problems.append("params_ratio is not params / teacher_params")
    if not record["latency"] or not all(e["speedup"] > 0 for e in record["latency"]):
        problems.append("latency against the teacher was not measured")

    problems += [f"returned model is not deployable: {p}" for p in deployment_problems(model)]
    if method != "teacher" and same_weights(model, teacher):
        problems.append("returned the teacher unchanged")
    return problems


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
