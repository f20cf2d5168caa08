"""Intermediate features: taking them with temporary hooks, and the losses defined on them.

Methods that distil or regress inner feature maps (block outputs, stage outputs) take them
through ``capture``: forward hooks that exist only inside a ``with`` block, so the model a
method returns never carries a hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Seen:
    """The first positional input and the output of one module in the latest forward pass."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


@contextlib.contextmanager
def capture(modules: Sequence[nn.Module]) -> Iterator[list[Seen]]:
    """Record each module's input and output during forward passes inside the block.

    Yields one ``Seen`` per module (in the given order), overwritten by every forward;
    the hooks are removed on exit, also when the block raises.
    """
    seen = [Seen() for _ in modules]
    handles = [m.register_forward_hook(_recorder(record)) for m, record in zip(
        modules, seen, strict=True)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _recorder(record: Seen):
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        record.input = args[0] if args else None
        record.output = output
    return hook


def unit_hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Batch mean of ‖ŝ − t̂‖² where ŝ, t̂ are each sample's map scaled to unit L2 norm.

    Lies in [0, 4] whatever the map size (= 2 − 2·cosine similarity), so one weight suits
    every stage; the teacher side is detached.
    """
    s = F.normalize(student.flatten(1).float(), dim=1)
    t = F.normalize(teacher.detach().flatten(1).float(), dim=1)
    return (s - t).pow(2).sum(dim=1).mean()


def attention_map(feature: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: channel mean of squared activations, flattened, unit L2."""
    return F.normalize(feature.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two attention maps (RepDistiller's ``Attention`` term).

    Maps must have the same spatial size; channel counts may differ.
    """
    return (attention_map(student) - attention_map(teacher.detach())).pow(2).mean()
