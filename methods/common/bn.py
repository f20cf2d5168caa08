"""BatchNorm recalibration ("Adaptive BN", Li et al. 2020): recompute running statistics.

A pruned or otherwise changed network keeps BN statistics that no longer describe its
activations; re-estimating them on training batches (never the test split) before scoring
is what makes a pruned sub-net's accuracy meaningful.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdbench.benchmarks.data import Batch


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], max_batches: int = 100,
                   layers: nn.Module | None = None) -> int:
    """Reset every BN layer's running stats and re-estimate them as a cumulative average.

    ``layers`` limits this to the BN layers inside it (e.g. one new block of a network whose
    other BN layers must keep their statistics); the batches still run through ``model``.
    Weights are untouched; the model's train/eval flags are given back. Returns the
    number of batches used.
    """
    bns = [m for m in (layers or model).modules() if isinstance(m, _BatchNorm)]
    saved = [(m, m.training) for m in model.modules()]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            model(batch.x)
            used += 1
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        for module, training in saved:
            module.training = training
    return used
