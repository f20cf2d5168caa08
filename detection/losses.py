"""The distillation terms of ``ctkd`` (after Gao et al. 2021) on CenterNet's three maps.

Gao et al., Transactions of the Institute of Measurement and Control 43(13):2888-2898, 2021
(see ``detection/ctkd.py`` for how the terms are combined).

All maps are at the head's resolution (stride 4): heatmaps ``(B, C, H, W)`` as pre-sigmoid
logits, size/offset maps ``(B, 2, H, W)``, neck features ``(B, F, H, W)``. Normalisers follow
mmdet's ``CenterNetHead.loss_by_feat``: ``avg_factor`` = number of positive heatmap cells for the
heatmap terms, twice that for the 2-channel size/offset terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.models.losses import l1_loss
from mmdet.models.losses.gaussian_focal_loss import gaussian_focal_loss
from torch import Tensor

from kdbench.benchmarks.errors import ConfigError

# CenterNet's own clamp of sigmoid outputs; keeps a teacher cell from rounding to exactly 1 in
# float32 (a logit above ~17 would), so that only retained ground-truth centres are positives.
PROB_EPS = 1e-4


def softening_temperature(progress: float, tau0: float, soften_fraction: float) -> float:
    """Early distribution softening: tau0 at the start, linearly down to 1 at ``soften_fraction``.

    ``progress`` is the fraction of training done (0 at the first iteration, 1 at the end);
    tau = 1 + (tau0 - 1) * max(0, 1 - progress / soften_fraction), so tau is 1 from
    ``soften_fraction`` of the schedule on and never increases.
    """
    if tau0 < 1:
        raise ConfigError(f"tau0 must be >= 1 (1 turns softening off), got {tau0}")
    if not 0 < soften_fraction <= 1:
        raise ConfigError(f"soften_fraction must be in (0, 1], got {soften_fraction}")
    if progress < 0:
        raise ValueError(f"training progress must be >= 0, got {progress}")
    return 1.0 + (tau0 - 1.0) * max(0.0, 1.0 - progress / soften_fraction)


def soft_heatmap(logits: Tensor, tau: float) -> Tensor:
    """sigmoid(logits / tau), clamped to [PROB_EPS, 1 - PROB_EPS]."""
    return (logits / tau).sigmoid().clamp(PROB_EPS, 1 - PROB_EPS)


def heatmap_kd_target(teacher_logits: Tensor, gt_heatmap: Tensor, tau: float,
                      retain_positives: bool = True) -> Tensor:
    """The teacher's softened heatmap, with the ground-truth positives put back.

    Gaussian focal loss counts a cell as positive only where the target is exactly 1, which a
    teacher's sigmoid output never is; substituting the raw teacher map would drop every positive
    term. Positive sample retaining takes the elementwise max with the ground-truth Gaussian map,
    which is exactly 1 at every object centre and so restores those positives.
    """
    target = soft_heatmap(teacher_logits, tau)
    return torch.maximum(target, gt_heatmap) if retain_positives else target


def heatmap_focal_kd(student_logits: Tensor, kd_target: Tensor, tau: float,
                     avg_factor: float) -> Tensor:
    """mmdet's Gaussian focal loss (alpha 2, gamma 4) of sigmoid(student/tau) against the target.

    Not zero when student equals teacher: focal loss is not a divergence.
    """
    return gaussian_focal_loss(soft_heatmap(student_logits, tau), kd_target, alpha=2.0,
                               gamma=4.0, reduction="mean", avg_factor=avg_factor)


def heatmap_kl_kd(student_logits: Tensor, teacher_logits: Tensor, gt_heatmap: Tensor, tau: float,
                  avg_factor: float) -> Tensor:
    """Ablation variant: per-cell binary KL(teacher || student) at temperature tau, times tau².

    Each cell is weighted by max(ground-truth Gaussian, teacher's max class probability) so that
    object regions dominate the flat background; zero when student equals teacher.
    """
    s, t = student_logits / tau, teacher_logits / tau
    p_t = t.sigmoid()
    kl = (p_t * (F.logsigmoid(t) - F.logsigmoid(s))
          + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s)))
    weight = torch.maximum(gt_heatmap, p_t.amax(dim=1, keepdim=True))
    return (kl * weight).sum() * tau**2 / avg_factor


def response_kd(student_map: Tensor, teacher_map: Tensor, centre_weight: Tensor,
                avg_factor: float) -> Tensor:
    """L1 between student and teacher size (or offset) maps on the ground-truth centre cells."""
    return l1_loss(student_map, teacher_map, centre_weight, reduction="mean",
                   avg_factor=avg_factor)


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint: mean squared error between (adapted) student and teacher neck features."""
    return F.mse_loss(student_feature, teacher_feature)


def align_to(teacher_map: Tensor, student_map: Tensor) -> Tensor:
    """Bilinearly resize a teacher map to the student's spatial size when the two differ."""
    if teacher_map.shape[-2:] == student_map.shape[-2:]:
        return teacher_map
    return F.interpolate(teacher_map, size=student_map.shape[-2:], mode="bilinear",
                         align_corners=False)
