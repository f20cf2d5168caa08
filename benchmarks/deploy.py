"""INT8 deployment on CPU: torchao's PT2E flow with the x86 Inductor quantizer.

The flow is the one of torchao's tutorial ``pt2e_quant_x86_inductor`` (pytorch/ao); what the
board shows of it is in README.md, "INT8 deployment and the hybrid low-rank method".

One job: turn the fp32 model a method returned into the program that would be deployed as INT8,
and describe that program. ``quantize_int8`` exports the model (dynamic batch), inserts observers
with ``X86InductorQuantizer`` (static, per-channel symmetric int8 weights, per-tensor affine
uint8 activations), calibrates on training batches only and converts. ``CompiledProgram`` is
what gets timed and scored: the program compiled by Inductor with frozen weights, once per batch
size before any timing (compile time is excluded), exactly as the fp32 teacher it is compared
with (``export_program`` + ``CompiledProgram`` for both: compiled vs compiled).

A failure at any stage raises ``DeployError`` naming the stage; the harness records it in the
run's ``deploy_status`` and never falls back to fp32 silently.
"""

from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from kdbench.benchmarks.errors import ConfigError, KdbenchError

# fp32: the eager model as returned (always measured); int8: torchao PT2E + torch.compile;
# onnx / onnx-int8: ONNX Runtime on CPU (benchmarks.deploy_onnx)
DEPLOY_TARGETS = ("fp32", "int8", "onnx", "onnx-int8")
CALIBRATION_IMAGES = 1024  # training images run through the observers before convert
MAX_BATCH = 4096  # upper bound of the exported program's dynamic batch dimension
# Frozen weights let Inductor constant-fold the int8 weight prepacking (the PT2E x86 recipe);
# dynamic threads keep one compiled kernel valid for every thread count the harness times.
# ``freezing`` must be set in Inductor's config: passing it through torch.compile(options=...)
# leaves the onednn prepack ops unfolded and compilation fails (checked on torch 2.14.1).
INDUCTOR_CONFIG = {"freezing": True, "cpp.dynamic_threads": True}
QUANTIZER = ("torchao PT2E X86InductorQuantizer (static; int8 per-channel weights, "
             "uint8 per-tensor activations)")


class DeployError(KdbenchError):
    """Deploying a model as INT8 failed at ``stage`` (export, prepare, calibrate, ...)."""

    def __init__(self, stage: str, exc: BaseException):
        self.stage = stage
        super().__init__(f"{stage}: {_first_line(exc)}")


def deploy_targets(*sources: Iterable[str], where: str = "deploy") -> tuple[str, ...]:
    """The non-fp32 targets named in ``sources``, in order, each once; unknown names are errors."""
    targets: list[str] = []
    for source in sources:
        for name in source:
            if name not in DEPLOY_TARGETS:
                raise ConfigError(f"{where}: unknown deploy target {name!r}; allowed: "
                                  f"{', '.join(DEPLOY_TARGETS)}")
            if name != "fp32" and name not in targets:
                targets.append(name)
    return tuple(targets)


def torchao_version() -> str | None:
    try:
        import torchao
    except ImportError:
        return None
    return getattr(torchao, "__version__", None)


@dataclass
class ExportedModel:
    """An exported program's module (dynamic batch) and how it was exported."""

    module: GraphModule
    strict: bool
    export_error: str | None  # why strict export failed, when non-strict then worked


def export_program(model: nn.Module, input_shape: Sequence[int]) -> ExportedModel:
    """``torch.export`` of ``model`` on CPU in eval mode with a dynamic batch dimension.

    Strict export first: non-strict export groups every call of a reused module into one
    source partition and ``prepare_pt2e`` then rejects it (pytorch/ao#4478).
    """
    model = copy.deepcopy(model).cpu().eval()
    example = (torch.randn(2, *input_shape),)  # batch 2: sizes 0/1 would be specialised
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    errors = []
    for strict in (True, False):
        try:
            ep = torch.export.export(model, example, dynamic_shapes=dynamic, strict=strict)
        except Exception as exc:  # the caller turns this into a recorded deploy failure
            errors.append(f"{'strict' if strict else 'non-strict'}: {_first_line(exc)}")
            continue
        return ExportedModel(ep.module(), strict, "; ".join(errors) or None)
    raise DeployError("export", RuntimeError("; ".join(errors)))


@dataclass
class Int8Program:
    """The converted PT2E program and how it was made."""

    module: GraphModule
    export_strict: bool
    export_error: str | None
    calibration_batches: int
    calibration_images: int
    quantize_s: float


def quantize_int8(model: nn.Module, calibration: Iterable[torch.Tensor],
                  input_shape: Sequence[int]) -> Int8Program:
    """Static INT8 of ``model`` by PT2E + ``X86InductorQuantizer``, calibrated on ``calibration``.

    ``calibration`` must yield training-split inputs (never test data). Weights the converted
    graph no longer reads (PT2E keeps the fp32 originals next to the int8 copies) are dropped.
    """
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as exc:
        raise DeployError("import torchao", exc) from exc
    start = time.perf_counter()
    exported = export_program(model, input_shape)
    try:
        config = get_default_x86_inductor_quantization_config()
        quantizer = X86InductorQuantizer().set_global(config)
        prepared = prepare_pt2e(exported.module, quantizer)
    except Exception as exc:
        raise DeployError("prepare_pt2e", exc) from exc
    batches = images = 0
    try:
        with torch.no_grad():
            for x in calibration:
                prepared(x.detach().cpu().float().contiguous())
                batches, images = batches + 1, images + x.shape[0]
    except Exception as exc:
        raise DeployError("calibrate", exc) from exc
    if not images:
        raise DeployError("calibrate", ValueError("no calibration batches were given"))
    try:
        converted = convert_pt2e(prepared)
    except Exception as exc:
        raise DeployError("convert_pt2e", exc) from exc
    drop_unread_tensors(converted)
    return Int8Program(converted, exported.strict, exported.export_error, batches, images,
                       time.perf_counter() - start)


def drop_unread_tensors(gm: GraphModule) -> int:
    """Delete parameters and buffers that no ``get_attr`` node of ``gm`` reads; returns how many."""
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    dropped = 0
    for name in names:
        if name in read:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if hasattr(owner, attr):
            delattr(owner, attr)
            dropped += 1
    gm.delete_all_unused_submodules()
    return dropped


@dataclass
class ProgramReport:
    """Size of a deployed program: serialized bytes and its tensors by storage type."""

    artifact_bytes: int  # torch.export.save of the program
    int8_weights: int  # elements stored as int8 (the quantized conv/linear weights)
    float_weights: int  # float elements lifted as parameters (e.g. BN-folded biases)
    other_tensors: int  # elements of the remaining tensors (scales, zero points)
    bits_per_weight: float  # stored bits per weight element: (8·int8 + 32·float) / both
    dtypes: dict[str, int] = field(default_factory=dict)  # elements per dtype
    weight_bytes: int = 0  # bytes of every stored tensor (weights, scales, zero points)


def program_report(module: nn.Module, input_shape: Sequence[int]) -> ProgramReport:
    """Serialize ``module`` as an exported program and count what it stores."""
    try:
        ep = torch.export.export(module, (torch.randn(2, *input_shape),), dynamic_shapes=(
            {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},), strict=False)
        buffer = io.BytesIO()
        torch.export.save(ep, buffer)
    except Exception as exc:
        raise DeployError("serialize", exc) from exc
    signature = ep.graph_signature
    params = set(signature.inputs_to_parameters.values())
    tensors = {**ep.state_dict, **ep.constants}
    dtypes: dict[str, int] = {}
    int8 = floats = other = stored = 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        stored += t.numel() * t.element_size()
        dtypes[str(t.dtype).removeprefix("torch.")] = dtypes.get(
            str(t.dtype).removeprefix("torch."), 0) + t.numel()
        if t.dtype == torch.int8:
            int8 += t.numel()
        elif t.is_floating_point() and name in params:
            floats += t.numel()
        else:
            other += t.numel()
    weights = int8 + floats
    bits = (8 * int8 + 32 * floats) / weights if weights else 32.0
    return ProgramReport(len(buffer.getvalue()), int8, floats, other, bits, dtypes, stored)


class CompiledProgram(nn.Module):
    """``program`` under ``torch.compile`` (Inductor, frozen weights), compiled up front.

    Compiles once per batch size in ``batch_sizes`` before it is ever timed (compile time is
    recorded in ``compile_s``, never in a latency). Other batch sizes (e.g. evaluation batches)
    run through the largest compiled one in chunks, the last one zero-padded: every op of an
    eval-mode, statically quantized CNN is per-sample, so the outputs are those of the
    deployed program without another compilation. Without ``batch_sizes`` each new shape
    compiles on first use. Always runs under ``inference_mode`` and in eval mode, so the
    compiled graphs' guards hold for timing and scoring alike.
    """

    def __init__(self, program: nn.Module, input_shape: Sequence[int],
                 batch_sizes: Sequence[int] = ()):
        super().__init__()
        self.program = program  # exported graphs are already in eval semantics
        self.input_shape = tuple(input_shape)
        object.__setattr__(self, "_compiled", torch.compile(program, dynamic=False,
                                                             fullgraph=True))
        self.compile_s: dict[int, float] = {}
        for batch in batch_sizes:
            start = time.perf_counter()
            try:
                self(torch.randn(batch, *self.input_shape))
            except Exception as exc:
                raise DeployError("torch.compile", exc) from exc
            self.compile_s[batch] = time.perf_counter() - start

    def train(self, mode: bool = True) -> CompiledProgram:
        # A frozen exported program has no train mode (its train() raises); stay as compiled.
        return self

    def forward(self, x: torch.Tensor) -> Any:
        if self.compile_s and x.shape[0] not in self.compile_s:
            return self._chunked(x, max(self.compile_s))
        if x.is_inference():  # e.g. evaluation batches: same guards as the timed inputs
            with torch.inference_mode(False):
                x = x.clone()
        with torch._inductor.config.patch(INDUCTOR_CONFIG), torch.inference_mode():
            return self._compiled(x)


    def _chunked(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        outputs = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start:start + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = torch.cat([chunk, chunk.new_zeros(batch - n, *chunk.shape[1:])])
            outputs.append(self(chunk)[:n])
        return torch.cat(outputs)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
