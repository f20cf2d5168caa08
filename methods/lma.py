"""LMA: Light Multi-segment Activation for model compression (Xu et al., AAAI 2020).

Every ReLU of the student is replaced by an LMA layer (K-segment piecewise-linear
activation over the input's mean ± 3 std, 2K learnable scalars per layer; see
``methods/common/lma_activation.py``) and the student is trained from scratch with Hinton
KD as in the authors' code: 0.7 · T²·KL + 0.3 · CE with T = 2. The teacher keeps ReLU.
LMA adds no conv MACs, but its CPU cost is real: the harness times the returned model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch import nn

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Pair, RecipeChanges, TrainRecipe
from kdbench.benchmarks.method import (
    Compressed,
    FrozenTeacher,
    Method,
    PaperSchedule,
    RunContext,
    probe_model,
)
from kdbench.benchmarks.registry import METHODS
from kdbench.methods.common import kd_kl, replace_modules
from kdbench.methods.common.lma_activation import LMA, Implementation, Momentum

# main_wrn.py (CIFAR-100): SGD nesterov, momentum 0.9, lr 0.1, wd 5e-4, batch 128,
# 200 epochs, lr x0.2 after epochs 60, 120 and 160.
PAPER_SCHEDULE = PaperSchedule(dict(
    epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="multistep", milestones=(60, 120, 160), gamma=0.2, warmup_epochs=0,
), note="trained with LMA's own schedule, not the suite's")


def use_lma(model: nn.Module, num_segments: int, momentum: float = 0.99,
            impl: Implementation = "fused") -> int:
    """Replace every ``nn.ReLU`` of ``model`` by a fresh LMA layer; returns how many."""
    return replace_modules(model, lambda m: isinstance(m, nn.ReLU),
                           lambda _name, _relu: LMA(num_segments, momentum, impl))


def lma_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float, kd_weight: float) -> torch.Tensor:
    """kd_weight · T²·KL(teacher ‖ student) + (1 - kd_weight) · CE (the authors' weighting)."""
    return kd_weight * kd_kl(logits, teacher_logits, temperature) + (
        1.0 - kd_weight) * F.cross_entropy(logits, labels)


@METHODS.register_module("lma")
class LMAMethod(Method):
    """Student with every ReLU replaced by LMA, trained by KD from the teacher."""

    # README of the authors' code (motefly/LMA; Xu et al., AAAI 2020): CIFAR-10 Student 1,
    # 5 seeds, LMA-8 90.57 ± 0.20 vs ReLU 88.74 (the listed seeds' mean): +1.83 pp with the
    # same KD.
    claims = (
        Claim("lma", "lma:relu", "top1", paper=1.83,
              paper_note="Δ, LMA README: CIFAR-10 Student 1, LMA-8 90.57 vs ReLU 88.74",
              text="LMA activations beat ReLU in the same student under the same KD"),
    )

    @dataclass(frozen=True)
    class Config:
        num_segments: Annotated[int, Ge(1)] = 8  # K
        temperature: Annotated[float, Gt(0)] = 2.0
        # weight of the KD term; CE gets 1 - kd_weight
        kd_weight: Annotated[float, Interval(ge=0, le=1)] = 0.7
        momentum: Momentum = 0.99  # of LMA's running mean/std
        impl: Implementation = "fused"  # same output either way; see lma_activation.py
        # Also train the same student with ReLU and the same loss: the paper's comparison,
        # returned as the control row "lma:relu".
        relu_control: bool = True
        # Changes to the budget's training recipe; default: the paper's CIFAR-100 schedule.
        recipe: RecipeChanges = field(default_factory=PAPER_SCHEDULE.default)

    # Smaller budgets use the suite's recipe (comparable with the kd row) and, in smoke,
    # skip the ReLU control to stay cheap.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"recipe": {}, "relu_control": False},
        "short": {"recipe": {}},
    }

    def supports(self, pair: Pair) -> str | None:
        if not any(isinstance(m, nn.ReLU) for m in probe_model(pair.student).modules()):
            return f"{pair.student} has no nn.ReLU modules to replace"
        return None

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        recipe, schedule_notes = PAPER_SCHEDULE.apply(ctx, cfg.recipe)
        student = ctx.build_student()
        layers = use_lma(student, cfg.num_segments, cfg.momentum, cfg.impl)
        self._distil(ctx, student, teacher, recipe, "fit")
        controls = {}
        if cfg.relu_control:
            relu_student = ctx.build_student()
            self._distil(ctx, relu_student, teacher, recipe, "relu_control")
            controls["relu"] = Compressed(
                model=relu_student, notes=["same student and KD loss as lma, ReLU kept"])
        notes = [f"{layers} LMA layers, K={cfg.num_segments}", *schedule_notes]
        return Compressed(
            model=student, controls=controls, notes=notes,
            extras={"lma_layers": layers,
                    "lma_params": 2 * cfg.num_segments * layers,
                    "train_recipe": dataclasses.asdict(recipe)},
        )

    def _distil(self, ctx: RunContext, student: nn.Module, teacher: FrozenTeacher,
                recipe: TrainRecipe, name: str) -> None:
        cfg = self.cfg

        def loss(batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return lma_kd_loss(logits, t_logits, batch.y, cfg.temperature, cfg.kd_weight)

        ctx.fit(student, loss, recipe=recipe, name=name)
