"""Hinton KD: the whole plugin.

Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", NIPS Deep Learning
workshop (arXiv 1503.02531, 2015); defaults and the claim from RepDistiller (Tian, Krishnan &
Isola, ICLR 2020), see ``KD``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.method import Compressed, Method, RunContext
from kdbench.benchmarks.registry import METHODS
from kdbench.methods.common import kd_kl


@METHODS.register_module("kd")
class KD(Method):
    """Hinton et al. 2015: γ·CE on labels + α·T²·KL to the teacher's softened logits.

    Defaults are RepDistiller's CIFAR-100 protocol (T=4, γ=0.1, α=0.9).
    """

    # RepDistiller README (HobbitLong/RepDistiller, the code of Tian, Krishnan & Isola, ICLR
    # 2020; CIFAR-100, T=4): resnet32x4→resnet8x4 KD 73.33 vs the student alone 72.50
    # (+0.83); wrn_40_2→wrn_16_2 74.92 vs 73.26 (+1.66).
    claims = (
        Claim("kd", "scratch", "top1", paper=0.83,
              paper_note="Δ, RepDistiller README: resnet32x4→resnet8x4 73.33 vs 72.50",
              text="KD beats the same student trained alone on the labels"),
        # The same claim where a suite ranks by retrieval (ReID): identity-logit KD is the
        # baseline KDAS-ReID's paper distils with.
        Claim("kd", "scratch", "rank1",
              text="KD beats the same student trained alone on the identity labels (rank-1)"),
    )

    @dataclass(frozen=True)
    class Config:
        temperature: float = 4.0
        alpha: float = 0.9  # weight of the KD term
        gamma: float = 0.1  # weight of the cross-entropy term

    def run(self, ctx: RunContext) -> Compressed:
        student = ctx.build_student()
        teacher = ctx.teacher()
        cfg = self.cfg

        def loss(batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return cfg.gamma * F.cross_entropy(logits, batch.y) + cfg.alpha * kd_kl(
                logits, t_logits, cfg.temperature)

        ctx.fit(student, loss)
        return Compressed(model=student)
