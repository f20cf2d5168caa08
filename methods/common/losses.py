"""Distillation losses shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
          temperature: float, *, detach_teacher: bool = True) -> torch.Tensor:
    """Hinton et al. 2015: T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), mean over the batch.

    The T² factor keeps the gradient scale independent of T. The teacher side is
    detached so no gradient can reach a teacher through this loss, unless
    ``detach_teacher=False``: online KD (e.g. OKDDip) lets the gradient reach the
    targets, which are themselves built from trained branches.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    target = teacher_logits.detach() if detach_teacher else teacher_logits
    # Both sides as log-probabilities: identical logits give exactly zero.
    log_p_teacher = F.log_softmax(target.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean",
                    log_target=True) * (t * t)
