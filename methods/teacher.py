"""The teacher row: the uncompressed model every compression method is compared with."""

from __future__ import annotations

from kdbench.benchmarks.method import Compressed, Method, RunContext
from kdbench.benchmarks.registry import METHODS


@METHODS.register_module("teacher")
class Teacher(Method):
    """Train the teacher with cross-entropy (through the shared teacher cache) and report it.

    Its record is the reference row of the board: ratios and speed-ups of 1 by definition,
    measured like every other row.
    """

    reference = "teacher"

    def run(self, ctx: RunContext) -> Compressed:
        return Compressed(model=ctx.teacher().model)
