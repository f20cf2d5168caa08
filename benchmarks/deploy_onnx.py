"""ONNX Runtime as a measured deploy target: ``--deploy onnx`` and ``--deploy onnx-int8``.

``export_onnx`` writes the model with ``torch.onnx`` (the dynamo exporter, batch dimension
free); ``quantize_onnx_int8`` quantizes it with ONNX Runtime's static quantization (QDQ,
per-channel symmetric int8 weights, uint8 activations) calibrated on the same training
images as the torchao INT8 path; ``OrtProgram`` runs a file in ``onnxruntime`` (CPU
execution provider) behind the ``nn.Module`` call the evaluators and the latency harness
make. Its intra-op threads follow ``torch.get_num_threads()`` (one session per thread count,
created before timing), so the harness's explicit 1-thread / all-threads settings hold for
ONNX Runtime too. A failure at any stage raises ``DeployError`` naming the stage.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdbench.benchmarks.deploy import MAX_BATCH, DeployError

ONNX_TARGETS = ("onnx", "onnx-int8")
QUANTIZER = ("onnxruntime quantize_static (QDQ; int8 per-channel symmetric weights, uint8 "
             "per-tensor activations, MinMax calibration)")


def runtime_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def _needs(package: str) -> None:
    try:
        __import__(package)
    except ImportError as exc:
        raise DeployError("runtime", RuntimeError(
            f"the {package} package is missing: pip install onnx onnxscript onnxruntime")
        ) from exc


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: Path) -> Path:
    """``model`` (eval mode, CPU) as an ONNX file with a free batch dimension."""
    _needs("onnxscript")
    example = (torch.randn(2, *input_shape),)  # batch 2: a size-1 dim would specialise
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.onnx.export(model.eval(), example, str(path), dynamo=True,
                          dynamic_shapes=({0: batch},), external_data=False)
    except Exception as exc:
        raise DeployError("onnx export", exc) from exc
    return path


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over the calibration batches."""

    def __init__(self, input_name: str, batches: Sequence[torch.Tensor]):
        self._items = iter([{input_name: b.contiguous().numpy()} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_onnx_int8(fp32: Path, out: Path, calibration: Sequence[torch.Tensor]) -> Path:
    """Static INT8 quantization of the ONNX file ``fp32`` into ``out``."""
    _needs("onnxruntime")
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared))
            name = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]
                                        ).get_inputs()[0].name
            quantize_static(str(prepared), str(out), _Calibration(name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError("onnxruntime quantize", exc) from exc
    return out


def initializer_bytes(path: Path) -> int:
    """Bytes of the ONNX file's stored tensors (weights, scales, zero points)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def weight_bits(path: Path, params: int) -> float:
    """Stored bits per logical weight: the file's initializer bytes over the float graph's
    parameter count (int8 weights: about 8, plus their scales)."""
    return 8.0 * initializer_bytes(path) / max(1, params)


class OrtProgram(nn.Module):
    """An ONNX file run by onnxruntime on CPU, called like the model it was exported from."""

    def __init__(self, path: Path, thread_counts: Sequence[int] = ()):
        super().__init__()
        _needs("onnxruntime")
        self.path = Path(path)
        self._sessions: dict[int, Any] = {}
        for threads in (*thread_counts, torch.get_num_threads()):
            self._session(threads)  # created up front: never inside a timed call

    def _session(self, threads: int):
        if threads not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                session = ort.InferenceSession(str(self.path), options,
                                               providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise DeployError("onnxruntime session", exc) from exc
            self._sessions[threads] = (session, session.get_inputs()[0].name)
        return self._sessions[threads]

    def train(self, mode: bool = True) -> OrtProgram:
        return self  # an inference session has no train mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session, name = self._session(torch.get_num_threads())
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run(None, {name: array})[0])
