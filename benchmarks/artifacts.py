"""What a run measured, kept next to its record: the ``torch.export`` program (``.pt2``) and
the weights as ``safetensors``, each with its sha256 in the record.

Saving never fails a run: a model that cannot be exported or serialised gets the reason in
the record instead of a file (its numbers are still valid).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn

from kdbench.benchmarks.atomic import write_via
from kdbench.benchmarks.errors import KdbenchError
from kdbench.benchmarks.teachers import sha256_file

PROGRAM = "model.pt2"
WEIGHTS = "model.safetensors"


sha256_of = sha256_file  # one file hash for teachers and artifacts


def _program(model: nn.Module, example: Sequence[torch.Tensor]) -> torch.export.ExportedProgram:
    """The exported program with a free batch dimension (any batch size runs), else with
    the example's shape fixed."""
    pair = tuple(torch.cat([x, x]) for x in example)  # batch 2: a size-1 dim would specialise
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        return torch.export.export(model, pair, dynamic_shapes=tuple({0: batch} for _ in pair),
                                   strict=False)
    except Exception:  # a model that fixes its batch size: keep the example's shape
        return torch.export.export(model, tuple(example), strict=False)


def save_artifacts(model: nn.Module, example: Sequence[torch.Tensor], folder: Path,
                   results_dir: Path) -> dict[str, Any]:
    """Save ``model`` (on CPU, in eval mode, as measured) into ``folder``; returns the
    record's ``artifacts`` entry: per format its path (relative to ``results_dir``), sha256
    and bytes, or its ``error``."""
    entries: dict[str, Any] = {}
    savers = {
        "pt2": (PROGRAM, lambda tmp: torch.export.save(_program(model, example), tmp)),
        "safetensors": (WEIGHTS, lambda tmp: save_model(model, tmp)),
    }
    for fmt, (name, write) in savers.items():
        path = folder / name
        try:
            # The temporary name keeps the suffix: torch.export.save warns about any other.
            write_via(path, write, keep_suffix=True)
        except Exception as exc:  # the run's numbers stand; say why there is no file
            entries[fmt] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        entries[fmt] = {"path": str(path.relative_to(results_dir)), "sha256": sha256_of(path),
                        "bytes": path.stat().st_size}
    return entries


def verified(record: dict[str, Any], fmt: str, results_dir: Path) -> Path:
    """The ``fmt`` artifact of ``record`` after checking its sha256 against the record."""
    entry = (record.get("artifacts") or {}).get(fmt)
    run = f"{record['method']} {record['teacher']}->{record['student']} seed {record['seed']}"
    if not entry:
        raise KdbenchError(f"the run {run} has no {fmt} artifact (runs made before kdbench "
                           "kept artifacts have none): re-run it with --force")
    if "error" in entry:
        raise KdbenchError(f"the run {run} could not save its {fmt} artifact: {entry['error']}")
    path = Path(results_dir) / entry["path"]
    if not path.is_file():
        raise KdbenchError(f"the {fmt} artifact {path} of {run} is missing; re-run it with "
                           "--force")
    if sha256_of(path) != entry["sha256"]:
        raise KdbenchError(f"the {fmt} artifact {path} of {run} no longer matches its record "
                           f"(sha256 {sha256_of(path)[:12]}…, recorded {entry['sha256'][:12]}…): "
                           "it was changed after the run; refusing to export it")
    return path
