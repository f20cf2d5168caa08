"""The student trained alone: the baseline a distillation method has to beat."""

from __future__ import annotations

import torch.nn.functional as F

from benchmarks.method import Compressed, Method, RunContext
from benchmarks.registry import METHODS


@METHODS.register_module("scratch")
class Scratch(Method):
    """Student architecture, random init, cross-entropy on the labels only."""

    def run(self, ctx: RunContext) -> Compressed:
        student = ctx.build_student()
        ctx.fit(student, lambda batch, logits: F.cross_entropy(logits, batch.y))
        return Compressed(model=student)
