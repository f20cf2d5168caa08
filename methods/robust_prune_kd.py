"""Robust pruning + KD with adversarial training by proximal gradient (Lee & Lee 2021).

min_w E[(1−α)·CE(f_w(x'), y) + α·T²·KL(σ(f_T(x')/T) ‖ σ(f_w(x')/T))] + λ·Ω(w), x' = PGD_w(x).
The network being compressed is a copy of the trained teacher, distilled from its frozen,
unpruned self. Each step trains on PGD examples crafted against the student, then applies
the prox of ηλΩ with the step's current learning rate η: soft-thresholding (Ω = ‖w‖₁,
unstructured) or group soft-thresholding over channels (Ω = Σ_g ‖w_g‖₂, structured). Then a
hard threshold to the target compression, and an adversarial KD fine-tune with the zero
pattern frozen; structured mode removes the zero channels physically first.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from benchmarks.attacks import PGDConfig, seeded_generator
from benchmarks.data import BatchLoader
from benchmarks.errors import ConfigError
from benchmarks.method import Compressed, FrozenTeacher, Method, RunContext
from benchmarks.registry import METHODS
from benchmarks.train import FitState
from methods.common.adversarial import AdversarialForward, adversarial_kd_loss
from methods.common.bn import recalibrate_bn
from methods.common.proximal import group_sparsity, l1_sparsity, prox_group_, prox_l1_
from methods.common.pruning import (
    ChannelGroup,
    apply_masks,
    channel_groups,
    classifier_of,
    magnitude_masks,
    prunable_layers,
    remove_zero_channels,
)

SPARSITY_MODES = ("filter", "unstructured")
CONTROLS = ("magnitude_adv_ft", "prox_no_kd")
UNSTRUCTURED_NOTE = "unstructured sparsity: zeros in dense weights, no dense MACs/latency gain"


@METHODS.register_module("robust_prune_kd")
class RobustPruneKD(Method):
    """Adversarial KD + proximal-gradient pruning; extra rows for a λ sweep and controls.

    ``compression`` is the target: unstructured keeps 1/c of the prunable weights (every
    conv/linear but the classifier); structured keeps ⌈N/√c⌉ of the N prunable channels
    (ranked by RMS group norm, at least one per group), since a conv's weights shrink
    with the product of its kept input and output channels. The prox uses
    λ·log2(compression), so one ``lam`` serves every point of the 2/4/8/16× sweep (the
    suite's variants ``robust_prune_kd_x2`` ... ``_x8``, which set only ``compression``).
    Controls, extra rows on the same board: ``magnitude_adv_ft`` (magnitude prune to the
    same target, adversarial CE fine-tune for as many epochs as the method trains in all)
    and ``prox_no_kd`` (the method with α = 0).
    """

    label = "after Lee & Lee 2021"

    @dataclass(frozen=True)
    class Config:
        sparsity: str = "filter"  # "filter": group lasso, channels removed | "unstructured": ℓ1
        compression: float = 16.0  # Ye et al.'s example: 93.75 % of the weights pruned
        lam: float = 1e-3  # λ per halving [R]: the prox uses lam·log2(compression)
        controls: tuple[str, ...] = CONTROLS
        temperature: float = 4.0
        alpha: float = 0.9  # weight of the KD term; CE gets 1 − α
        # Training attack: Ye et al.'s CIFAR config (PGD-10, ε = 8/255, step 2/255, random start)
        eps: float = 8 / 255
        step_size: float = 2 / 255
        attack_steps: int = 10
        random_start: bool = True
        # Ye et al.'s stages after pre-training: 200 epochs prune + 200 masked retrain, lr 0.01
        prox_epochs: int = 200
        finetune_epochs: int = 200
        lr: float = 0.01
        schedule: str = "cosine"
        train_images: int | None = None  # a fixed class-balanced subset; None: the whole split
        # Clean training batches to re-estimate BN statistics on at the end [R]; 0: none. A
        # few-step run leaves running statistics that predate the pruning (stale in eval).
        final_bn_batches: int = 0

        def __post_init__(self) -> None:
            if self.sparsity not in SPARSITY_MODES:
                raise ConfigError(f"robust_prune_kd.sparsity must be one of {SPARSITY_MODES}, "
                                  f"got {self.sparsity!r}")
            if self.compression <= 1 or self.lam < 0:
                raise ConfigError(f"robust_prune_kd needs compression > 1 and lam >= 0; got "
                                  f"compression={self.compression}, lam={self.lam}")
            unknown = set(self.controls) - set(CONTROLS)
            if unknown:
                raise ConfigError(f"robust_prune_kd.controls: unknown {sorted(unknown)}; "
                                  f"known: {', '.join(CONTROLS)}")
            if not 0 <= self.alpha <= 1:
                raise ConfigError(f"robust_prune_kd.alpha must be in [0, 1], got {self.alpha}")

    # Smoke: one cheap point, PGD-3 (compression.md §4.5), 256 images, one epoch per phase.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {
        "compression": 2.0, "lam": 15.0, "controls": (), "attack_steps": 3,
        "prox_epochs": 1, "finetune_epochs": 1, "lr": 0.01, "train_images": 256,
        "final_bn_batches": 4,
    }}

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        main = self.prox_prune(ctx, teacher, cfg.alpha, "main")
        controls = {}
        if "prox_no_kd" in cfg.controls:
            controls["prox_no_kd"] = self.prox_prune(ctx, teacher, 0.0, "prox_no_kd")
        if "magnitude_adv_ft" in cfg.controls:
            controls["magnitude_adv_ft"] = self.magnitude_baseline(ctx, teacher)
        main.controls = controls
        return main

    # ---- the method -------------------------------------------------------------------
    def prox_prune(self, ctx: RunContext, teacher: FrozenTeacher, alpha: float,
                   name: str) -> Compressed:
        """Prox-grad adversarial (KD) training, hard threshold, adversarial KD fine-tune."""
        cfg = self.cfg
        lam = self.effective_lam
        student = self.student_from(teacher)
        example = ctx.example_input()
        groups = self.groups(student, example)
        loss = adversarial_kd_loss(teacher, alpha, cfg.temperature)
        prox = self.prox_hook(student, groups, lam)
        self.adversarial_fit(ctx, student, loss, f"{name}-prox", cfg.prox_epochs,
                             after_step=prox)
        prox_zeros = self.sparsity(student, groups)
        freeze = self.hard_threshold(student, groups, example)
        self.adversarial_fit(ctx, student, loss, f"{name}-finetune", cfg.finetune_epochs,
                             after_step=freeze)
        self.settle_bn(ctx, student)
        return self.result(student, lam, alpha,
                           {"prox_sparsity": prox_zeros, "phase_epochs":
                            [cfg.prox_epochs, cfg.finetune_epochs]})

    def magnitude_baseline(self, ctx: RunContext, teacher: FrozenTeacher) -> Compressed:
        """Control (a): magnitude prune to the target, then adversarial CE fine-tune."""
        cfg = self.cfg
        student = self.student_from(teacher)
        example = ctx.example_input()
        groups = self.groups(student, example)
        freeze = self.hard_threshold(student, groups, example)
        epochs = cfg.prox_epochs + cfg.finetune_epochs
        self.adversarial_fit(ctx, student, adversarial_kd_loss(None, 0.0, cfg.temperature),
                             "magnitude-finetune", epochs, after_step=freeze)
        self.settle_bn(ctx, student)
        return self.result(student, 0.0, 0.0, {"phase_epochs": [epochs]})

    @property
    def effective_lam(self) -> float:
        """The prox's λ: ``lam`` per halving of the weights, λ·log2(compression)."""
        return self.cfg.lam * math.log2(self.cfg.compression)

    # ---- pieces -----------------------------------------------------------------------
    @staticmethod
    def student_from(teacher: FrozenTeacher) -> nn.Module:
        """A trainable copy of the trained teacher: the network being compressed."""
        return copy.deepcopy(teacher.model).requires_grad_(True).train()

    def groups(self, student: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
        if self.cfg.sparsity != "filter":
            return []
        return channel_groups(student, example, exclude=[classifier_of(student)])

    def prox_hook(self, student: nn.Module, groups: list[ChannelGroup],
                  lam: float) -> Callable[[FitState], None]:
        """After each optimiser step: prox of η·λ·Ω with the step's current η."""
        weights = [m.weight for m in prunable_layers(student)]

        def hook(state: FitState) -> None:
            threshold = state.optimizer.param_groups[0]["lr"] * lam
            if self.cfg.sparsity == "filter":
                prox_group_(groups, threshold)
            else:
                prox_l1_(weights, threshold)

        return hook

    def sparsity(self, student: nn.Module, groups: list[ChannelGroup]) -> float:
        """Zero channels (structured) or zero weights (unstructured), as a fraction."""
        if self.cfg.sparsity == "filter":
            return group_sparsity(groups)
        return l1_sparsity(m.weight for m in prunable_layers(student))

    def hard_threshold(self, student: nn.Module, groups: list[ChannelGroup],
                       example: torch.Tensor) -> Callable[[FitState], None] | None:
        """Cut to the target and return the hook that keeps the zero pattern while training.

        Structured: the dropped channels are zeroed and removed physically, so nothing
        needs freezing; unstructured: the mask is re-applied after every step (momentum
        and weight decay would revive zeros otherwise).
        """
        compression = self.cfg.compression
        if self.cfg.sparsity == "filter":
            zero_weakest_channels(groups, math.ceil(
                sum(g.channels for g in groups) / math.sqrt(compression)))
            remove_zero_channels(student, example, exclude=[classifier_of(student)])
            return None
        masks = magnitude_masks(student, 1 - 1 / compression,
                                layers=prunable_layers(student))
        apply_masks(masks)
        return lambda state: apply_masks(masks)

    def adversarial_fit(self, ctx: RunContext, student: nn.Module, loss, name: str,
                        epochs: int, after_step: Callable[[FitState], None] | None) -> None:
        cfg = self.cfg
        attack = PGDConfig(eps=cfg.eps, step_size=cfg.step_size, steps=cfg.attack_steps,
                           random_start=cfg.random_start)
        forward = AdversarialForward(ctx.data.mean, ctx.data.std, attack,
                                     seeded_generator(ctx.seed, ctx.device))
        ctx.fit(student, loss, forward=forward, after_step=after_step,
                loader=self.loader(ctx), name=name, epochs=epochs, lr=cfg.lr,
                schedule=cfg.schedule, warmup_epochs=0)

    def settle_bn(self, ctx: RunContext, student: nn.Module) -> None:
        """Re-estimate BN statistics on ``final_bn_batches`` clean training batches."""
        if self.cfg.final_bn_batches:
            recalibrate_bn(student, self.loader(ctx), max_batches=self.cfg.final_bn_batches)

    def loader(self, ctx: RunContext) -> BatchLoader:
        return ctx.loader(ctx.train_split.subset(self.cfg.train_images, seed=0), train=True)

    def result(self, student: nn.Module, lam: float, alpha: float,
               extras: dict[str, Any]) -> Compressed:
        cfg = self.cfg
        prunable = [m.weight for m in prunable_layers(student)]
        notes = [UNSTRUCTURED_NOTE] if cfg.sparsity == "unstructured" else []
        return Compressed(model=student.eval(), notes=notes, extras={
            **extras, "sparsity_mode": cfg.sparsity, "target_compression": cfg.compression,
            "effective_lam": lam, "alpha": alpha, "final_weight_sparsity": l1_sparsity(prunable),
            "base_model": "teacher", "teacher_adversarially_trained": False,
            "train_attack": {"eps": cfg.eps, "step_size": cfg.step_size,
                             "steps": cfg.attack_steps, "random_start": cfg.random_start},
        })


@torch.no_grad()
def zero_weakest_channels(groups: list[ChannelGroup], keep: int) -> None:
    """Zero all but the ``keep`` channels with the largest RMS group norm (≥ 1 per group).

    RMS (norm / √size) makes groups of different sizes comparable.
    """
    scores = [g.squared_norms().div(sum(t[0].numel() for t in g.channel_tensors())).sqrt()
              for g in groups]
    flat = torch.cat(scores)
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept[flat.topk(min(keep, flat.numel())).indices] = True
    start = 0
    for group, score in zip(groups, scores, strict=True):
        mask = kept[start:start + group.channels].clone()
        mask[score.argmax()] = True
        start += group.channels
        for t in group.channel_tensors():
            t.mul_(mask.to(t.dtype).view(-1, *([1] * (t.dim() - 1))))
