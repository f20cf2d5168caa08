"""Measuring a returned model deployed as something other than eager fp32 (``--deploy``).

``int8``: torchao PT2E x86 quantization compiled with torch.compile, timed against the fp32
teacher exported and compiled the same way; ``onnx`` / ``onnx-int8``: exported to ONNX
(statically quantized for onnx-int8) and run by onnxruntime, timed against the teacher in
onnxruntime. Each target's record is the fp32 record with the deployed program's figures.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.benchmarks import distributed
from kdbench.benchmarks.artifacts import sha256_of
from kdbench.benchmarks.config import LatencyConfig, Pair
from kdbench.benchmarks.deploy import (
    CALIBRATION_IMAGES,
    QUANTIZER,
    CompiledProgram,
    DeployError,
    export_program,
    program_report,
    quantize_int8,
    torchao_version,
)
from kdbench.benchmarks.deploy_onnx import (
    ONNX_TARGETS,
    OrtProgram,
    export_onnx,
    initializer_bytes,
    quantize_onnx_int8,
    runtime_versions,
    weight_bits,
)
from kdbench.benchmarks.deploy_onnx import QUANTIZER as ORT_QUANTIZER
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.evaluators import run_evaluators
from kdbench.benchmarks.measurement import settings_for, time_against
from kdbench.benchmarks.method import Compressed, RunContext
from kdbench.benchmarks.records import RunRecord
from kdbench.benchmarks.teachers import TeacherInfo


class DeployedMeasurer:
    """Measures deployed programs for one harness; compiles or exports each teacher once."""

    def __init__(self, *, input_shape: Sequence[int], latency: LatencyConfig | None,
                 batch_sizes: Sequence[int], evaluators: Sequence[str], results_dir: Path,
                 cache_dir: Path, deployed: Callable[[nn.Module, str], nn.Module],
                 artifacts_dir: Callable[[str, Pair, int], Path],
                 config_hash: Callable[[dict[str, Any], str, str, str], str]):
        self.input_shape = tuple(input_shape)
        self.latency = latency  # None: not timed
        self.batch_sizes = tuple(batch_sizes)
        self.evaluators = tuple(evaluators)
        self.results_dir, self.cache_dir = results_dir, cache_dir
        self.deployed, self.artifacts_dir, self.config_hash = deployed, artifacts_dir, config_hash
        self._compiled_teachers: dict[str, CompiledProgram] = {}
        self._onnx_teachers: dict[str, OrtProgram] = {}

    def measure(self, ctx: RunContext, name: str, out: Compressed, teacher: nn.Module,
                teacher_info: TeacherInfo, fp32: RunRecord, target: str) -> RunRecord:
        """The record of ``out.model`` deployed as ``target`` (int8), measured like fp32.

        Accuracy, artifact bytes and latency are those of the compiled INT8 program; params and
        MACs are the float graph's (logical weights, MACs run in int8), with the stored bits per
        weight. Latency is compiled INT8 vs the compiled fp32 teacher. A failure at any stage
        gives a record with ``deploy_status`` "failed: ..." and no metrics, never an fp32 copy.
        """
        if target not in ("int8", *ONNX_TARGETS):  # deploy_targets admits nothing else
            raise ConfigError(f"no deployment path for {target!r}")
        start = time.perf_counter()
        base = dataclasses.replace(
            fp32, run_id=hashlib.sha1(f"{fp32.run_id}/{target}".encode()).hexdigest()[:16],
            deploy=target, macs_dtype=target, latency=[], metrics={}, artifacts={},
            config_hash=self.config_hash(fp32.config, fp32.teacher, teacher_info.sha256,
                                         target))
        try:
            if distributed.current().distributed:
                raise DeployError("harness", RuntimeError(
                    "int8 deployment is measured in a single process; run it without torchrun"))
            if target == "int8":
                record = self._measure_int8(ctx, out, teacher, teacher_info, base)
            else:
                record = self._measure_onnx(ctx, name, out, teacher, teacher_info, base, target)
        except DeployError as exc:
            versions = {"torchao": torchao_version()} if target == "int8" else runtime_versions()
            return dataclasses.replace(
                base, deploy_status=f"failed: {exc}", artifact_bytes=None,
                notes=[*fp32.notes, f"{target} deployment failed at {exc.stage}"],
                extras={**fp32.extras, "deploy": {
                    "target": target, "failed_stage": exc.stage, **versions,
                    "quantizer": QUANTIZER if target == "int8" else ORT_QUANTIZER}})
        record.wall_time_s = fp32.wall_time_s + time.perf_counter() - start
        return record

    def _measure_int8(self, ctx: RunContext, out: Compressed, teacher: nn.Module,
                      teacher_info: TeacherInfo, base: RunRecord) -> RunRecord:
        shape = self.input_shape
        calibration = self._calibration_batches(ctx)
        program = quantize_int8(out.model, calibration, shape)
        size = program_report(program.module, shape)
        batches = self.latency.batch_sizes if self.latency is not None else ()
        compiled = CompiledProgram(program.module, shape, batches)
        metrics, evaluated_with, latency = self._score_and_time(
            ctx, compiled, lambda: self._compiled_teacher(teacher, teacher_info, batches),
            "compiled")
        details = {
            "target": "int8", "quantizer": QUANTIZER, "torchao": torchao_version(),
            "export_strict": program.export_strict, "export_error": program.export_error,
            "calibration": {"split": "train", "batches": program.calibration_batches,
                            "images": program.calibration_images},
            "quantize_s": program.quantize_s, "compile_s": compiled.compile_s,
            "program": dataclasses.asdict(size), "fp32_artifact_bytes": base.artifact_bytes,
            "latency_mode": "torch.compile (inductor, freezing) vs the compiled fp32 teacher",
            "cpu_capability": base.environment.get("aten_cpu_capability"),
            "isa_flags": base.environment.get("isa_flags"),
        }
        if evaluated_with:
            details["evaluators"] = evaluated_with
        return dataclasses.replace(
            base, metrics=metrics, artifact_bytes=size.artifact_bytes,
            weight_bytes=size.weight_bytes,
            bits_per_weight=size.bits_per_weight, latency=latency,
            model_report={**base.model_report, "macs_dtype": "int8",
                          "artifact_bytes": size.artifact_bytes},
            notes=[*base.notes, f"int8 (PT2E x86, compiled); MACs are the float graph's "
                                f"run in int8, {size.bits_per_weight:.2f} bits/weight"],
            extras={**base.extras, "deploy": details})

    def _measure_onnx(self, ctx: RunContext, name: str, out: Compressed, teacher: nn.Module,
                      teacher_info: TeacherInfo, base: RunRecord, target: str) -> RunRecord:
        """``out.model`` exported to ONNX (quantized for onnx-int8) and run by onnxruntime:
        accuracy evaluated, latency against the teacher exported the same way (fp32 ONNX)."""
        shape = self.input_shape
        folder = self.artifacts_dir(name, ctx.pair, ctx.seed)
        cpu_model = self.deployed(copy.deepcopy(out.model).cpu().eval(), name)
        path = export_onnx(cpu_model, shape, folder / "model.onnx")
        if target == "onnx-int8":
            path = quantize_onnx_int8(path, folder / "model.int8.onnx",
                                      self._calibration_batches(ctx))
        threads = sorted({s.threads for s in settings_for("cpu", self.batch_sizes)})
        program = OrtProgram(path, threads)
        metrics, evaluated_with, latency = self._score_and_time(
            ctx, program, lambda: self._onnx_teacher(teacher, teacher_info, threads), "ort")
        int8 = target == "onnx-int8"
        bits = weight_bits(path, base.params) if int8 else 32.0
        details = {"target": target, **runtime_versions(),
                   "quantizer": ORT_QUANTIZER if int8 else None,
                   "latency_mode": "onnxruntime CPU EP vs the fp32 teacher in onnxruntime",
                   "providers": ["CPUExecutionProvider"],
                   "fp32_artifact_bytes": base.artifact_bytes}
        if evaluated_with:
            details["evaluators"] = evaluated_with
        return dataclasses.replace(
            base, metrics=metrics, artifact_bytes=path.stat().st_size, bits_per_weight=bits,
            weight_bytes=initializer_bytes(path),
            latency=latency, macs_dtype="int8" if int8 else "fp32",
            artifacts={"onnx": {"path": str(path.relative_to(self.results_dir)),
                                "sha256": sha256_of(path), "bytes": path.stat().st_size}},
            notes=[*base.notes, f"{target} (onnxruntime CPU); MACs are the float graph's"
                                + (f" run in int8, {bits:.2f} bits/weight" if int8 else "")],
            extras={**base.extras, "deploy": details})

    def _score_and_time(self, ctx: RunContext, program: nn.Module,
                        teacher_program: Callable[[], nn.Module], mode: str
                        ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
        """A deployed program's metrics (the suite's evaluators, on CPU) and its latency
        against the teacher deployed the same way (``mode``: its board columns)."""
        cpu_ctx = dataclasses.replace(ctx, device=torch.device("cpu"))
        try:
            metrics, evaluated_with = run_evaluators(self.evaluators, program, cpu_ctx)
        except Exception as exc:  # e.g. an evaluator that needs gradients through the model
            raise DeployError("evaluate", exc) from exc
        latency: list[dict[str, Any]] = []
        if self.latency is not None:
            teacher = teacher_program()
            try:
                timed = time_against(teacher, program, self.input_shape, self.latency)
                latency = [_mode_entry(r, mode) for r in timed]
            except Exception as exc:  # a program that runs once but not in a loop
                raise DeployError("latency", exc) from exc
        return metrics, evaluated_with, latency

    def _onnx_teacher(self, teacher: nn.Module, info: TeacherInfo,
                      threads: Sequence[int]) -> OrtProgram:
        """The fp32 teacher as ONNX in onnxruntime (exported once per checkpoint, cached)."""
        if info.sha256 not in self._onnx_teachers:
            path = self.cache_dir / "onnx" / f"teacher-{info.sha256[:16]}.onnx"
            if not path.is_file():
                cpu_teacher = self.deployed(copy.deepcopy(teacher).cpu().eval(), "teacher")
                try:
                    export_onnx(cpu_teacher, self.input_shape, path)
                except DeployError as exc:
                    raise DeployError("onnx export of the fp32 teacher", exc) from exc
            self._onnx_teachers[info.sha256] = OrtProgram(path, threads)
        return self._onnx_teachers[info.sha256]

    def _calibration_batches(self, ctx: RunContext) -> list[torch.Tensor]:
        """Training-split inputs (no augmentation) for the observers; never test data."""
        images = min(CALIBRATION_IMAGES, len(ctx.train_split))
        split = ctx.train_split.subset(images, seed=0)
        return [b.x.cpu() for b in ctx.loader(split, train=False, batch_size=64)]

    def _compiled_teacher(self, teacher: nn.Module, info: TeacherInfo,
                          batches: Sequence[int]) -> CompiledProgram:
        """The fp32 teacher exported and compiled exactly as the INT8 programs (once each)."""
        if info.sha256 not in self._compiled_teachers:
            try:
                exported = export_program(teacher, self.input_shape)
            except DeployError as exc:
                raise DeployError("export of the fp32 teacher", exc) from exc
            self._compiled_teachers[info.sha256] = CompiledProgram(
                exported.module, self.input_shape, batches)
        return self._compiled_teachers[info.sha256]



def _mode_entry(result: Any, mode: str) -> dict[str, Any]:
    """A latency entry marked with its runtime track (compiled, ort): its own board columns."""
    entry = dataclasses.asdict(result)
    entry["setting"]["mode"] = mode
    return entry
