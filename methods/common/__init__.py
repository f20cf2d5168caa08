"""Pieces shared by several methods; each lives here once.

- ``losses``: the Hinton KD term.
- ``pruning``: physical channel pruning (Torch-Pruning dependency graph), L1 filter
  pruning, unstructured magnitude masks folded into weights.
- ``bn``: BatchNorm recalibration (Adaptive BN).
- ``surgery``: generic module replacement.
"""

from methods.common.bn import recalibrate_bn
from methods.common.losses import kd_kl
from methods.common.pruning import (
    apply_masks,
    classifier_of,
    coupled_layers,
    keep_channels,
    l1_filter_prune,
    magnitude_masks,
)
from methods.common.surgery import replace_modules

__all__ = [
    "apply_masks",
    "classifier_of",
    "coupled_layers",
    "kd_kl",
    "keep_channels",
    "l1_filter_prune",
    "magnitude_masks",
    "recalibrate_bn",
    "replace_modules",
]
