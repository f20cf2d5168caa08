"""ONNX Runtime as a deploy target: the exported model's accuracy is evaluated (not assumed),
its latency is timed in onnxruntime against the teacher exported the same way, and a failure
is a recorded deploy_status with its stage."""

from __future__ import annotations

import pytest
import torch
from test_record_configuration import TINY_SUITE

from kdbench.benchmarks.cli import main
from kdbench.benchmarks.deploy import DeployError
from kdbench.benchmarks.deploy_onnx import OrtProgram, export_onnx
from kdbench.benchmarks.records import load_records
from kdbench.benchmarks.registry import build_model

TIMED_SUITE = TINY_SUITE.replace(
    "latency=dict(enabled=False)",
    "latency=dict(batch_sizes=(1,), rounds=2, warmup=1, min_iters=1, max_iters=3, "
    "target_round_s=0.005)")


def _run(tmp_path, *extra):
    suite = tmp_path / "tiny-digits.py"
    suite.write_text(TIMED_SUITE)
    return main(["run", "--suite", str(suite), "--methods", "kd", "--results-dir",
                 str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), "--quiet",
                 "--deploy", "onnx,onnx-int8", *extra])


def test_onnx_and_onnx_int8_rows_are_evaluated_and_timed_in_onnxruntime(tmp_path):
    assert _run(tmp_path) == 0
    records = {r["deploy"]: r for r in load_records(tmp_path / "results")}
    assert set(records) == {"fp32", "onnx", "onnx-int8"}
    fp32, onnx, int8 = records["fp32"], records["onnx"], records["onnx-int8"]
    assert onnx["deploy_status"] == "ok" and int8["deploy_status"] == "ok"
    one_image = 100.0 / fp32["test_images"]
    assert abs(onnx["metrics"]["top1"] - fp32["metrics"]["top1"]) <= one_image + 1e-9
    assert 0.0 <= int8["metrics"]["top1"] <= 100.0
    assert int8["bits_per_weight"] < 16 and onnx["bits_per_weight"] == 32.0
    for record in (onnx, int8):
        modes = {e["setting"]["mode"] for e in record["latency"]}
        assert modes == {"ort"} and all(e["speedup"] > 0 for e in record["latency"])
        assert {e["setting"]["threads"] for e in record["latency"]} >= {1}
        assert record["artifacts"]["onnx"]["sha256"]
        assert record["extras"]["deploy"]["onnxruntime"]
    assert records["onnx"]["config_hash"] != fp32["config_hash"]


def test_a_failed_onnx_export_is_a_recorded_status_not_a_fallback(tmp_path, monkeypatch):
    from kdbench.benchmarks import deployed

    def broken(*args, **kwargs):
        raise DeployError("onnx export", RuntimeError("unsupported operator aten::weird"))

    monkeypatch.setattr(deployed, "export_onnx", broken)
    assert _run(tmp_path, "--no-latency") == 0
    records = {r["deploy"]: r for r in load_records(tmp_path / "results")}
    for target in ("onnx", "onnx-int8"):
        assert records[target]["deploy_status"].startswith("failed: onnx export: RuntimeError")
        assert records[target]["metrics"] == {}
        assert records[target]["extras"]["deploy"]["failed_stage"] == "onnx export"


def test_ort_program_follows_torch_threads_and_matches_the_model(tmp_path):
    model = build_model("resnet8", num_classes=10).eval()
    path = export_onnx(model, (3, 32, 32), tmp_path / "m.onnx")
    program = OrtProgram(path, thread_counts=(1, 2))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        program(x)
    finally:
        torch.set_num_threads(before)
    assert {1, 2} <= set(program._sessions)
    with pytest.raises(DeployError, match="onnxruntime session"):
        OrtProgram(tmp_path / "missing.onnx")
