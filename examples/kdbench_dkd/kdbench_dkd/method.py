"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

The KD loss splits into a target-class term (TCKD: binary KL on the target vs. the rest)
and a non-target term (NCKD: KL between the distributions over the non-target classes),
weighted separately: L = CE + warm-up · (α·TCKD + β·NCKD). Defaults follow the authors'
CIFAR-100 configs (α=1, β=8, T=4, 20 warm-up epochs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from kdbench import Compressed, Method, RunContext

MASKED = 1000.0  # subtracted from the target logit to drop it from the non-target softmax


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    t = temperature
    gt = F.one_hot(target, student.shape[1]).bool()
    p_s, p_t = F.softmax(student / t, dim=1), F.softmax(teacher / t, dim=1)
    # Binary (target, non-target) probabilities.
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1)
    tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean") * t * t
    log_nt_s = F.log_softmax(student / t - MASKED * gt, dim=1)
    nt_t = F.softmax(teacher / t - MASKED * gt, dim=1)
    nckd = F.kl_div(log_nt_s, nt_t, reduction="batchmean") * t * t
    return alpha * tckd + beta * nckd


class DKD(Method):
    """CE + warm-up-scaled (α·TCKD + β·NCKD) from the frozen teacher."""

    label = "Zhao et al. 2022"

    @dataclass(frozen=True)
    class Config:
        alpha: float = 1.0
        beta: float = 8.0
        temperature: float = 4.0
        warmup_epochs: int = 20

    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {"warmup_epochs": 1}}

    def run(self, ctx: RunContext) -> Compressed:
        student, teacher, cfg = ctx.build_student(), ctx.teacher(), self.cfg
        ramp = {"now": 0.0}  # linear warm-up of the distillation terms over the first epochs

        def loss(batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return F.cross_entropy(logits, batch.y) + ramp["now"] * dkd_loss(
                logits, t_logits, batch.y, cfg.alpha, cfg.beta, cfg.temperature)

        def set_ramp(state) -> None:  # also right after a resume
            ramp["now"] = min(1.0, (state.epoch + 1) / max(1, cfg.warmup_epochs))

        ctx.fit(student, loss, before_epoch=set_ramp)
        return Compressed(model=student)
