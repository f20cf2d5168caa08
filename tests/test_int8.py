"""The INT8 deployment track: PT2E quantization, its artifact, compiled accuracy, failures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.board import latency_key, leaderboard
from kdbench.benchmarks.deploy import (
    CompiledProgram,
    DeployError,
    deploy_targets,
    export_program,
    program_report,
    quantize_int8,
)
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.method import Compressed
from kdbench.benchmarks.registry import METHODS, lookup
from kdbench.benchmarks.table import render_table
from kdbench.benchmarks.teachers import TeacherInfo

pytest.importorskip("torchao")

SHAPE = (3, 16, 16)
# INT8 accuracy may trail fp32 by at most this many points on the easy task below
INT8_TOLERANCE_PP = 2.0


class SmallCNN(nn.Module):
    def __init__(self, width: int = 16, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes told apart by which colour channel and image half is bright."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, *SHAPE, generator=g) * 0.5
    for i, label in enumerate(y.tolist()):
        half = slice(0, 8) if label % 2 else slice(8, 16)
        x[i, label // 2, half] += 1.5
    return x, y


def _accuracy(model, x, y) -> float:
    with torch.inference_mode():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def test_deploy_targets_reject_unknown_names():
    assert deploy_targets(("int8",), ("fp32", "int8")) == ("int8",)
    with pytest.raises(ConfigError, match="unknown deploy target 'int4'; allowed: fp32, int8"):
        deploy_targets(("int4",), where="--deploy")


def test_int8_accuracy_of_a_trained_model_is_within_tolerance_of_fp32():
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = _task(512, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        for i in range(0, 512, 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    x_test, y_test = _task(400, seed=1)
    fp32 = _accuracy(model, x_test, y_test)
    assert fp32 > 90  # the task is learnt, so the comparison means something

    program = quantize_int8(model, [x[:128], x[128:256]], SHAPE)  # training inputs only
    assert program.calibration_images == 256 and program.export_strict
    compiled = CompiledProgram(program.module, SHAPE, (64,))  # 400 = 6 chunks + 16 padded
    int8 = _accuracy(compiled, x_test, y_test)
    assert abs(int8 - fp32) <= INT8_TOLERANCE_PP, (fp32, int8)
    with torch.inference_mode():  # the compiled program runs what the converted graph says
        diff = (compiled(x_test) - program.module(x_test)).abs().max()
    assert diff < 0.1
    assert set(compiled.compile_s) == {64}


def test_int8_artifact_is_about_a_quarter_of_fp32_for_conv_weights():
    model = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(128, 128, 3, padding=1)).eval()
    fp32 = program_report(export_program(model, SHAPE).module, SHAPE)
    program = quantize_int8(model, [torch.randn(16, *SHAPE)], SHAPE)
    int8 = program_report(program.module, SHAPE)
    conv_weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Conv2d))
    assert int8.int8_weights == conv_weights  # every conv weight is stored as int8
    assert 8.0 < int8.bits_per_weight < 8.2  # the fp32 biases are the only wider weights
    assert fp32.bits_per_weight == 32.0
    assert 0.22 < int8.artifact_bytes / fp32.artifact_bytes < 0.32
    # the weights alone: int8 elements at 1 byte, scales and biases beside them
    assert fp32.weight_bytes == 4 * sum(p.numel() for p in model.parameters())
    assert conv_weights <= int8.weight_bytes < 0.26 * fp32.weight_bytes
    assert int8.weight_bytes < int8.artifact_bytes  # the file also holds the graph
    # the dead fp32 originals that PT2E keeps beside the int8 copies are not shipped
    assert "float32" not in int8.dtypes or int8.dtypes["float32"] < conv_weights / 10


def test_board_size_ratio_compares_weight_bytes_with_the_teachers(tmp_path):
    from test_results import make_record

    from kdbench.benchmarks.board import leaderboard
    from kdbench.benchmarks.records import load_records, write_record

    for seed in range(2):
        record = make_record("kd", seed, 70.0)
        record.weight_bytes, record.teacher_weight_bytes = 250, 1000
        write_record(record, tmp_path)
    board = leaderboard(load_records(tmp_path))
    assert board.loc[0, "size_ratio"] == 0.25 and board.loc[0, "weight_bytes"] == 250
    assert "size×" in [c.header for c in render_table(board).columns]


class DataDependent(nn.Module):
    """A branch on a tensor's value: torch.export (strict and not) cannot capture it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.mean() > 0:
            h = h * 2
        return self.fc(h.mean((2, 3)))


def test_export_failure_is_a_deploy_error_naming_the_stage():
    with pytest.raises(DeployError, match=r"^export: ") as info:
        quantize_int8(DataDependent().eval(), [torch.randn(4, *SHAPE)], SHAPE)
    assert info.value.stage == "export"


def test_a_failed_deployment_is_recorded_not_replaced_by_fp32(make_harness, make_context):
    harness = make_harness(measure_latency=False, deploy=["int8"])
    teacher = DataDependent().eval()
    ctx = make_context(teacher)
    method = lookup(METHODS, "kd")()
    method.name = "kd"
    out = Compressed(model=DataDependent().eval())
    info = TeacherInfo("resnet14", "t.pt", "0" * 64, {"top1": 1.0, "top5": 5.0}, "user")
    fp32 = harness.measure(ctx, method, "kd", out, teacher, info, 1.0)
    record = harness.measure_deployed(ctx, "kd", out, teacher, info, fp32, "int8")
    assert fp32.deploy == "fp32" and fp32.deploy_status == "ok"
    assert record.deploy == "int8" and record.deploy_status.startswith("failed: export: ")
    assert record.metrics == {} and record.latency == [] and record.artifact_bytes is None
    assert record.extras["deploy"]["failed_stage"] == "export"

    records = []
    for r in (fp32, record):
        data = r.__dict__.copy()
        records.append(data)
    board = leaderboard(records)
    assert list(board["deploy"]) == ["fp32", "int8"]  # side by side, fp32 first
    assert board["metric_mean"].isna().tolist() == [False, True]
    assert "failed" in board.loc[1, "deploy_status"]
    render_table(board)  # a failed row renders (NaN metric, status in the notes)


def test_compiled_latency_has_columns_of_its_own():
    eager = {"setting": {"device": "cpu", "threads": 1, "batch": 64}}
    compiled = {"setting": {"device": "cpu", "threads": 1, "batch": 64, "mode": "compiled"}}
    assert latency_key(eager) == "cpu_t1_b64"
    assert latency_key(compiled) == "cpu_compiled_t1_b64"


def test_cli_rejects_an_unknown_deploy_target(capsys, tmp_path):
    from kdbench.benchmarks.cli import main

    code = main(["run", "--suite", "cifar100", "--deploy", "int4", "--results-dir",
                 str(tmp_path), "--cache-dir", str(tmp_path), "--quiet"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "--deploy or the smoke budget's deploy" in err
    assert "unknown deploy target 'int4'; allowed: fp32, int8" in err
