"""Adversarial training pieces for the shared ``fit`` loop: PGD in the forward, KD on x'.

The examples are crafted against the model being trained (in eval mode, in [0, 1] pixel
space, through the harness's attack), then the model sees them in train mode. The teacher,
if any, only ever reads the finished examples: it is never attacked and never updated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.attacks import PGDConfig, PixelSpace, pgd, to_pixels
from benchmarks.data import Batch
from benchmarks.train import LossFn
from methods.common.losses import kd_kl


class AdversarialOutput(NamedTuple):
    logits: torch.Tensor  # the model's logits on x'
    x_adv: torch.Tensor  # x', normalised like the loader's batches


class AdversarialForward:
    """A ``fit`` forward: craft x' = PGD(x) against the model, return its logits on x'."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], attack: PGDConfig,
                 generator: torch.Generator | None = None):
        self.mean, self.std, self.attack, self.generator = mean, std, attack, generator

    def __call__(self, model: nn.Module, batch: Batch) -> AdversarialOutput:
        pixel_model = PixelSpace(model, self.mean, self.std)
        x01 = to_pixels(batch.x, self.mean, self.std)
        x_adv = pixel_model.normalize(
            pgd(pixel_model, x01, batch.y, self.attack, generator=self.generator))
        return AdversarialOutput(model(x_adv), x_adv)


def adversarial_kd_loss(teacher: nn.Module | None, alpha: float, temperature: float) -> LossFn:
    """``(1 − α)·CE(f(x'), y) + α·T²·KL(σ(f_T(x')/T) ‖ σ(f(x')/T))``; plain CE when α = 0."""

    def loss(batch: Batch, out: AdversarialOutput) -> torch.Tensor:
        ce = F.cross_entropy(out.logits, batch.y)
        if teacher is None or alpha == 0:
            return ce
        with torch.no_grad():
            t_logits = teacher(out.x_adv)
        return (1 - alpha) * ce + alpha * kd_kl(out.logits, t_logits, temperature)

    return loss
