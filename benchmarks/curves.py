"""Training curves in TensorBoard: with ``kdbench run --tensorboard`` each run writes event
files under its artifacts folder (``<artifacts>/tensorboard``).

The harness opens a writer around a run (``recording``); the shared training loop logs to
whatever writer is open, per epoch and per training phase (the ``fit`` call's name): the
loss, each loss term a method reports, the learning rate and the epoch time. The harness
adds the run's final figures. With no writer open, nothing is logged and nothing is imported.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_WRITER: contextvars.ContextVar[Any] = contextvars.ContextVar("kdbench_tensorboard",
                                                               default=None)


@contextlib.contextmanager
def recording(folder: Path | None) -> Iterator[Any]:
    """Open a TensorBoard writer on ``folder`` for the duration (None: record nothing)."""
    if folder is None:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    writer = SummaryWriter(log_dir=str(folder))
    token = _WRITER.set(writer)
    try:
        yield writer
    finally:
        _WRITER.reset(token)
        writer.close()


def log_epoch(phase: str, epoch: int, values: Mapping[str, float]) -> None:
    """``phase/name`` scalars at step ``epoch`` (1-based), when a writer is open."""
    writer = _WRITER.get()
    if writer is None:
        return
    for name, value in values.items():
        writer.add_scalar(f"{phase}/{name}", float(value), epoch)


def log_final(figures: Mapping[str, float]) -> None:
    """The run's final figures (metrics, params/MACs ratios) under ``final/``."""
    writer = _WRITER.get()
    if writer is None:
        return
    for name, value in figures.items():
        writer.add_scalar(f"final/{name}", float(value), 0)
    writer.flush()
