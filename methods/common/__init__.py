"""Pieces shared by several methods; each lives here once.

- ``losses``: the Hinton KD term.
- ``pruning``: physical channel pruning (Torch-Pruning dependency graph), L1 filter
  pruning, unstructured magnitude masks folded into weights.
- ``bn``: BatchNorm recalibration (Adaptive BN).
- ``surgery``: generic module replacement.
- ``temperature``: dynamic KD temperature schedules (T0 decaying to exactly 1).
- ``branches``: cut a zoo model into shared trunk + branch head (online KD, e.g. OKDDip).
- ``lma_activation``: the LMA piecewise-linear activation module.
"""

from kdbench.methods.common.bn import recalibrate_bn
from kdbench.methods.common.losses import kd_kl
from kdbench.methods.common.pruning import (
    apply_masks,
    classifier_of,
    coupled_layers,
    keep_channels,
    l1_filter_prune,
    magnitude_masks,
)
from kdbench.methods.common.surgery import replace_modules
from kdbench.methods.common.temperature import dynamic_temperature, epoch_temperature

__all__ = [
    "apply_masks",
    "classifier_of",
    "coupled_layers",
    "dynamic_temperature",
    "epoch_temperature",
    "kd_kl",
    "keep_channels",
    "l1_filter_prune",
    "magnitude_masks",
    "recalibrate_bn",
    "replace_modules",
]
