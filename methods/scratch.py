"""The student trained alone: the baseline a distillation method has to beat."""

from __future__ import annotations

from kdbench.benchmarks.method import Compressed, Method, RunContext
from kdbench.benchmarks.registry import METHODS


@METHODS.register_module("scratch")
class Scratch(Method):
    """Student architecture, random init, trained on the labels only (cross-entropy for image
    data; a task with its own objective, e.g. detection, trains it its way)."""

    def run(self, ctx: RunContext) -> Compressed:
        student = ctx.build_student()
        ctx.train_alone(student)
        return Compressed(model=student)
