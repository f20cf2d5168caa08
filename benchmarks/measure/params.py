"""What the deployed model is: parameters, bytes, sparsity and leftovers of the exported program.

Parameters are counted on the ``torch.export`` program (README.md, "What is measured"): only
tensors the exported graph actually reads, tied weights once (``parameters()`` of a PT2E
model still holds the dead fp32 weights next to the int8 ones the graph uses). A model that
cannot be exported is still counted (unique ``parameters()``), with the reason recorded, so
one odd submission never stops the harness.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.nn.utils import parametrize

from kdbench.benchmarks.measure.flops import count_macs

_FILTER_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class ModelReport:
    """Size and deployability of one model; JSON-serialisable via ``dataclasses.asdict``."""

    params: int  # parameters read by the exported graph (unique parameters() if not exported)
    buffers: int  # buffer elements read by the exported graph, likewise
    params_module: int  # unique parameters() of the eager module, for comparison
    params_nonzero: int
    nonzero_fraction: float
    zero_filters: int  # all-zero output filters/rows over every conv/linear layer
    zero_filters_by_layer: dict[str, int]  # only layers that have any
    macs: int | None
    flops: int | None  # 2 * macs
    artifact_bytes: int | None  # bytes of torch.export.save(ep); None when not exported
    state_dict_bytes: int
    exported: bool
    export_strict: bool | None  # which export mode produced the program
    export_error: str | None  # why strict export failed (also when non-strict then worked)
    macs_error: str | None
    problems: list[str] = field(default_factory=list)
    # bytes of the tensors the deployed graph reads (weights and buffers): the model's size
    # without the program's graph, code or stored example input
    weight_bytes: int = 0


@contextlib.contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode and give every submodule back its own train/eval flag."""
    saved = [(m, m.training) for root in modules for m in root.modules()]
    try:
        for root in modules:
            root.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


def inspect_model(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> ModelReport:
    """Count what ``model`` deploys as; never raises for an unexportable or uncountable model."""
    inputs = tuple(example_inputs)
    with evaluating(model):
        ep, strict, export_error = _export(model, inputs)
        if ep is not None:
            params, buffers = _graph_tensors(ep, "parameters"), _graph_tensors(ep, "buffers")
            counted: nn.Module = ep.module()
        else:
            params, buffers = _unique(model.parameters()), _unique(model.buffers())
            counted = model
        macs, macs_error = _macs(counted, inputs)
    n_params = _numel(params)
    nonzero = sum(int(torch.count_nonzero(t)) for t in params)
    by_layer = zero_filters_by_layer(model)
    return ModelReport(
        params=n_params,
        buffers=_numel(buffers),
        params_module=_numel(_unique(model.parameters())),
        params_nonzero=nonzero,
        nonzero_fraction=nonzero / n_params if n_params else 1.0,
        zero_filters=sum(by_layer.values()),
        zero_filters_by_layer=by_layer,
        macs=macs,
        flops=None if macs is None else 2 * macs,
        artifact_bytes=None if ep is None else _artifact_bytes(ep),
        state_dict_bytes=_state_dict_bytes(model),
        exported=ep is not None,
        export_strict=strict,
        export_error=export_error,
        macs_error=macs_error,
        problems=deployment_problems(model),
        weight_bytes=sum(t.numel() * t.element_size() for t in (*params, *buffers)),
    )


def assert_deployable(model: nn.Module) -> None:
    """Raise ``ValueError`` listing every prune/hook/parametrization leftover in ``model``."""
    problems = deployment_problems(model)
    if problems:
        raise ValueError("model is not a plain deployable module:\n  " + "\n  ".join(problems))


def deployment_problems(model: nn.Module) -> list[str]:
    """Human-readable findings that make ``model`` not honestly deployed."""
    problems: list[str] = []
    for name, module in model.named_modules():
        where = name or "<root>"
        problems += _prune_leftovers(where, module)
        problems += _hooks(where, module)
        if parametrize.is_parametrized(module):
            tensors = ", ".join(module.parametrizations.keys())
            problems.append(f"{where}: parametrized tensors ({tensors}); remove_parametrizations")
    return problems


def zero_filters_by_layer(model: nn.Module) -> dict[str, int]:
    """All-zero output filters (conv) / rows (linear) per layer, for layers that have any."""
    counts = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, _FILTER_LAYERS) and isinstance(weight, torch.Tensor):
            zeros = int((_per_output(module, weight.detach()).abs().sum(1) == 0).sum())
            if zeros:
                counts[name or "<root>"] = zeros
    return counts


def _per_output(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """Weight as (output channels, everything else)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # (in, out/groups, *k): regroup so that rows are output channels
        groups = module.groups
        w = weight.unflatten(0, (groups, -1)).transpose(1, 2)
        return w.flatten(0, 1).flatten(1)
    return weight.flatten(1)


def _prune_leftovers(where: str, module: nn.Module) -> list[str]:
    found = [
        f"{where}: parameter '{n}' (torch.nn.utils.prune leftover; call prune.remove)"
        for n, _ in module.named_parameters(recurse=False)
        if n.endswith("_orig")
    ]
    found += [
        f"{where}: buffer '{n}' (torch.nn.utils.prune mask; call prune.remove)"
        for n, _ in module.named_buffers(recurse=False)
        if n.endswith("_mask")
    ]
    return found


def _hooks(where: str, module: nn.Module) -> list[str]:
    found = []
    for kind, hooks in (("forward pre-hook", module._forward_pre_hooks),
                        ("forward hook", module._forward_hooks)):
        found += [f"{where}: {kind} {_hook_name(hook)} still registered" for hook in hooks.values()]
    return found


def _hook_name(hook: object) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__


def _export(
    model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> tuple[ExportedProgram | None, bool | None, str | None]:
    """Export strictly, else non-strictly; return (program, strict used, first error)."""
    errors = []
    for strict in (True, False):
        try:
            ep = torch.export.export(model, inputs, strict=strict)
        except Exception as exc:  # any export failure must leave the harness running
            errors.append(f"{'strict' if strict else 'non-strict'}: {_first_line(exc)}")
            continue
        return ep, strict, "; ".join(errors) or None
    return None, None, "; ".join(errors)


def _graph_tensors(ep: ExportedProgram, kind: str) -> list[torch.Tensor]:
    """Unique parameter or buffer tensors that some node of the exported graph reads."""
    signature = ep.graph_signature
    lifted = signature.inputs_to_parameters if kind == "parameters" else signature.inputs_to_buffers
    used = {n.name for n in ep.graph.nodes if n.op == "placeholder" and n.users}
    return _unique(_lookup(ep, fqn) for name, fqn in lifted.items() if name in used)


def _lookup(ep: ExportedProgram, fqn: str) -> torch.Tensor:
    # non-persistent buffers are kept in ep.constants, not in ep.state_dict
    return ep.state_dict[fqn] if fqn in ep.state_dict else ep.constants[fqn]


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Drop tied duplicates: the same tensor, or the same view of the same storage."""
    seen, out = set(), []
    for t in tensors:
        key = id(t) if t.is_meta else (
            t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def _numel(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def _macs(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int | None, str | None]:
    try:
        return count_macs(module, inputs), None
    except Exception as exc:  # a model the counter cannot run is reported, not fatal
        return None, _first_line(exc)


def _artifact_bytes(ep: ExportedProgram) -> int | None:
    buffer = io.BytesIO()
    try:
        torch.export.save(ep, buffer)
    except Exception:  # e.g. custom ops without a serializer: size unknown, counts still valid
        return None
    return len(buffer.getvalue())


def _state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
