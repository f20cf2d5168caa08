"""Dynamic KD temperatures: start at T0, end at exactly 1 (KDAS-ReID; usable by any method).

The schedule is a function of training progress p in [0, 1]:
linear ``T = 1 + (T0 - 1)(1 - p)`` or cosine ``T = 1 + (T0 - 1)(1 + cos(pi p)) / 2``.
Both are T0 at p = 0, exactly 1 at p = 1 and non-increasing in between.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from annotated_types import Ge

# A method's config declares its schedule with these, and the config checker enforces them.
Schedule = Literal["linear", "cosine"]
InitialTemperature = Annotated[float, Ge(1)]  # T0: the schedule decays it to exactly 1


def dynamic_temperature(progress: float, t0: float, shape: Schedule = "linear") -> float:
    """The temperature at ``progress`` in [0, 1]."""
    if not 0 <= progress <= 1:
        raise ValueError(f"progress must be in [0, 1]; got {progress}")
    remaining = 1 - progress if shape == "linear" else (1 + math.cos(math.pi * progress)) / 2
    return 1.0 + (t0 - 1.0) * remaining


def epoch_temperature(epoch: int, epochs: int, t0: float, shape: Schedule = "linear") -> float:
    """Per-epoch schedule: epoch 0 trains at T0 and the last epoch at exactly 1.

    A one-epoch phase has no room for a schedule and trains at 1.
    """
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}); got {epoch}")
    return dynamic_temperature(epoch / (epochs - 1) if epochs > 1 else 1.0, t0, shape)
