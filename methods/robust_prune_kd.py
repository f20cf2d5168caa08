"""Robust pruning + KD with adversarial training by proximal gradient (Lee & Lee 2021).

min_w E[(1−α)·CE(f_w(x'), y) + α·T²·KL(σ(f_T(x')/T) ‖ σ(f_w(x')/T))] + λ·Ω(w), x' = PGD_w(x).
The network being compressed is a copy of the adversarially trained teacher (PGD
adversarial training of the pair's teacher architecture with the budget's teacher recipe,
cached under its own key), distilled from its frozen, unpruned self: on attacked images a
standard teacher's soft labels are mostly its own mistakes. Each step trains on PGD
examples crafted against the student, then applies the prox of ηλΩ with the step's current
learning rate η: soft-thresholding (Ω = ‖w‖₁, unstructured) or group soft-thresholding over
channels (Ω = Σ_g √|g|·‖w_g‖₂, structured, the group lasso of Yuan & Lin 2006), its
threshold capped so that it never leaves more zeros than the target compression removes.
By default λ is calibrated to the schedule: the prox phase's thresholds add up to the
magnitude at the hard cut, so the channels the cut removes fade out over the whole phase
instead of being zeroed, and every survivor shrunk, on the first steps. Then a hard
threshold to the target compression, and an adversarial KD fine-tune with the zero pattern
frozen; structured mode removes the zero channels physically first. A prox phase that
empties a layer, or a result at chance where the unpruned network is not, is an error
(``PruningCollapseError``), never a board row.

Source: Lee & Lee, Applied Sciences 11(3):1093, 2021; its abstract is what the method follows. Tags
beside defaults: [S] stated in that abstract, [R] kdbench's own choice where it gives none;
see CONTRIBUTING.md, "Where a number comes from: [S], [P], [R]".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args

import torch
from annotated_types import Ge, Gt, Interval
from torch import nn

from kdbench.benchmarks.attacks import PGDConfig, seeded_generator
from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.data import BatchLoader
from kdbench.benchmarks.errors import TrainingError
from kdbench.benchmarks.method import Compressed, FrozenTeacher, Method, RunContext
from kdbench.benchmarks.registry import METHODS
from kdbench.benchmarks.teachers import TeacherInfo
from kdbench.benchmarks.train import FitState, lr_at
from kdbench.methods.common.adversarial import (
    AdversarialForward,
    adversarial_kd_loss,
    adversarial_teacher,
)
from kdbench.methods.common.bn import recalibrate_bn
from kdbench.methods.common.proximal import (
    capped_threshold,
    group_scale,
    group_sparsity,
    l1_sparsity,
    prox_group_,
    prox_l1_,
)
from kdbench.methods.common.pruning import (
    ChannelGroup,
    apply_masks,
    channel_groups,
    classifier_of,
    magnitude_masks,
    prunable_layers,
    remove_zero_channels,
)

Control = Literal["magnitude_adv_ft", "prox_no_kd", "standard_teacher"]
CONTROLS: tuple[Control, ...] = get_args(Control)
UNSTRUCTURED_NOTE = "unstructured sparsity: zeros in dense weights, no dense MACs/latency gain"


class PruningCollapseError(TrainingError):
    """The sparsity strength destroyed the network (a layer with no channel left, or
    accuracy at chance); the run is recorded as failed, never as a leaderboard row."""


@METHODS.register_module("robust_prune_kd")
class RobustPruneKD(Method):
    """Adversarial KD + proximal-gradient pruning; extra rows for a λ sweep and controls.

    ``compression`` is the target: unstructured keeps 1/c of the prunable weights (every
    conv/linear but the classifier); structured keeps ⌈N/√c⌉ of the N prunable channels
    (ranked by RMS group norm, at least one per group), since a conv's weights shrink
    with the product of its kept input and output channels. The structured prox thresholds
    the same RMS norms (each group's threshold scaled by √ its size), so the prox and the
    cut rank channels alike. ``lam=None`` (default) calibrates λ to the schedule and the
    target: λ = s_cut / Σ_t η_t, where s_cut is the RMS norm (or |w|) at the hard cut in the
    network being compressed and η_t are the prox phase's learning rates, so one setting
    serves every budget and every point of the 2/4/8/16× sweep (the suite's variants
    ``robust_prune_kd_x2`` ... ``_x8``, which set only ``compression``). A number fixes
    λ per halving of the weights instead: the prox uses λ·log2(compression).
    Each prox step's threshold is capped so that it leaves at most as many zeros (channels,
    or weights when unstructured) as the hard cut removes: a λ too strong for a long
    schedule stops at the requested compression instead of zeroing every channel.
    ``teacher``: the network compressed and distilled from is the adversarially trained
    teacher (default; trained and cached on first use, PGD-``teacher_attack_steps``) or the
    harness's standard one.
    Controls, extra rows on the same board: ``magnitude_adv_ft`` (magnitude prune, then
    adversarial CE fine-tune for as many epochs as the method trains in all; structured, it
    keeps in every channel group as many channels as the method's result, so both rows have
    the same widths, parameters and MACs, and only which channels survive and how they were
    trained differ — ``magnitude_widths="global"``: the same channel count ranked over all
    groups, which lands at another size),
    ``prox_no_kd`` (the method with α = 0) and ``standard_teacher`` (the method on the
    standard, non-robust teacher: compressed from it and distilled from it).
    """

    label = "after Lee & Lee 2021"
    evaluators = ("robust",)  # its claims are on PGD-20 robust accuracy

    # Abstract [S] (Lee & Lee, Applied Sciences 11(3):1093, 2021): a better robustness-vs-
    # compression trade-off than adversarial pruning; it gives no figures, so the claims carry
    # none. Both controls are on the same target.
    claims = (
        Claim("robust_prune_kd", "robust_prune_kd:magnitude_adv_ft", "robust_top1",
              text="prox-grad adversarial KD pruning keeps more PGD-20 accuracy than magnitude "
                   "pruning with adversarial fine-tuning at the same compression"),
        Claim("robust_prune_kd", "robust_prune_kd:prox_no_kd", "robust_top1",
              text="KD from the teacher adds robust accuracy to the same prox-grad pruning "
                   "(α = 0)"),
    )

    @dataclass(frozen=True)
    class Config:
        # "filter": group lasso, channels removed | "unstructured": ℓ1
        sparsity: Literal["filter", "bn_filter", "unstructured"] = "filter"
        # Ye et al. 2019's example (adversarial pruning by ADMM): 93.75 % of the weights pruned
        compression: Annotated[float, Gt(1)] = 16.0
        # None: calibrated to the schedule and the target (see the class docstring) [R];
        # a number: λ per halving [R], the prox uses lam·log2(compression)
        lam: Annotated[float, Ge(0)] | None = None
        controls: tuple[Control, ...] = CONTROLS
        # magnitude_adv_ft's cut, structured: "matched" keeps per channel group the method's
        # own widths (same params and MACs); "global": the top ⌈N/√c⌉ RMS norms over all groups
        magnitude_widths: Literal["matched", "global"] = "matched"
        # "adversarial": PGD-trained teacher [R] (the abstract pairs KD with adversarial
        # training; who trains adversarially is not stated), cached under its own key
        # (the attack below, with teacher_attack_steps/teacher_step_size); "standard": the
        # harness's teacher, trained on clean images (the standard_teacher control's setting)
        teacher: Literal["adversarial", "standard"] = "adversarial"
        teacher_attack_steps: int | None = None  # None: attack_steps (Ye et al.'s pretraining)
        teacher_step_size: float | None = None  # None: step_size
        temperature: float = 4.0
        alpha: Annotated[float, Interval(ge=0, le=1)] = 0.9  # weight of the KD term; CE gets 1 − α
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
        # Training images (seed-1 class-balanced subset, not the test split) on which a row at
        # chance, where the unpruned network is clearly above it, raises; 0: no check
        collapse_check_images: int = 500

    # Smoke [R]: one cheap point, PGD-3, 256 images, one epoch per phase.
    # The adversarial teacher is trained with one attack step of 1.25·ε from a random start
    # (FGSM-RS, Wong et al. 2020): about 1.5x the standard teacher's time instead of 11x for
    # PGD-10, paid once per cache (a few CPU minutes on the smoke budget).
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {
        "compression": 2.0, "controls": (), "attack_steps": 3,
        "prox_epochs": 1, "finetune_epochs": 1, "lr": 0.01, "train_images": 256,
        "final_bn_batches": 4, "teacher_attack_steps": 1, "teacher_step_size": 10 / 255,
    }}

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        standard = ctx.teacher()
        if cfg.teacher == "adversarial":
            teacher, about = self.robust_teacher(ctx)
        else:
            teacher, about = standard, {"kind": "standard"}
        main = self.prox_prune(ctx, teacher, cfg.alpha, "main", about)
        controls = {}
        if "prox_no_kd" in cfg.controls:
            controls["prox_no_kd"] = self.prox_prune(ctx, teacher, 0.0, "prox_no_kd", about)
        if "magnitude_adv_ft" in cfg.controls:
            widths = main.extras.get("group_widths") if cfg.magnitude_widths == "matched" \
                else None
            controls["magnitude_adv_ft"] = self.magnitude_baseline(ctx, teacher, about, widths)
        if "standard_teacher" in cfg.controls and cfg.teacher != "standard":
            controls["standard_teacher"] = self.prox_prune(
                ctx, standard, cfg.alpha, "standard_teacher", {"kind": "standard"})
        main.controls = controls
        return main

    # ---- the method -------------------------------------------------------------------
    @property
    def teacher_attack(self) -> PGDConfig:
        """The PGD of the adversarial teacher's training (part of its cache key)."""
        cfg = self.cfg
        steps = cfg.attack_steps if cfg.teacher_attack_steps is None else cfg.teacher_attack_steps
        step = cfg.step_size if cfg.teacher_step_size is None else cfg.teacher_step_size
        return PGDConfig(eps=cfg.eps, step_size=step, steps=steps, random_start=cfg.random_start)

    def robust_teacher(self, ctx: RunContext) -> tuple[FrozenTeacher, dict[str, Any]]:
        """The adversarially trained teacher (from its cache) and what the record says of it."""
        attack = self.teacher_attack
        teacher, info = adversarial_teacher(ctx, attack)
        return teacher, teacher_extras(info, attack)

    def prox_prune(self, ctx: RunContext, teacher: FrozenTeacher, alpha: float,
                   name: str, about: dict[str, Any] | None = None) -> Compressed:
        """Prox-grad adversarial (KD) training, hard threshold, adversarial KD fine-tune.

        ``teacher`` is both the network compressed and the one distilled from; ``about``
        describes it for the record.
        """
        cfg = self.cfg
        student = self.student_from(teacher)
        example = ctx.example_input()
        groups = self.groups(student, example)
        max_zeros, target = self.max_zeros(student, groups)
        lam = self.prox_lam(ctx, student, groups, max_zeros)
        loss = adversarial_kd_loss(teacher, alpha, cfg.temperature)
        prox = self.prox_hook(student, groups, lam, max_zeros, name)
        self.adversarial_fit(ctx, student, loss, f"{name}-prox", cfg.prox_epochs,
                             after_step=prox)
        prox_zeros = self.sparsity(student, groups)
        self.check_no_empty_layer(student, groups, name, lam, prox_zeros, target)
        freeze, widths = self.hard_threshold(student, groups, example)
        self.adversarial_fit(ctx, student, loss, f"{name}-finetune", cfg.finetune_epochs,
                             after_step=freeze)
        self.settle_bn(ctx, student)
        self.check_not_at_chance(ctx, student, teacher, name, lam, prox_zeros, target)
        return self.result(student, lam, alpha,
                           {"prox_sparsity": prox_zeros, "prox_target_sparsity": target,
                            "prox_capped_steps": prox.stats["capped"],
                            "prox_steps": prox.stats["steps"],
                            "prox_floored_steps": prox.stats["floored"],
                            "phase_epochs": [cfg.prox_epochs, cfg.finetune_epochs],
                            **({"group_widths": widths} if widths else {})}, about)

    def magnitude_baseline(self, ctx: RunContext, teacher: FrozenTeacher,
                           about: dict[str, Any] | None = None,
                           widths: dict[str, int] | None = None) -> Compressed:
        """Control (a): magnitude prune (to ``widths`` per channel group when given, else to
        the target over all groups), then adversarial CE fine-tune."""
        cfg = self.cfg
        student = self.student_from(teacher)
        example = ctx.example_input()
        groups = self.groups(student, example)
        freeze, kept = self.hard_threshold(student, groups, example, widths)
        epochs = cfg.prox_epochs + cfg.finetune_epochs
        self.adversarial_fit(ctx, student, adversarial_kd_loss(None, 0.0, cfg.temperature),
                             "magnitude-finetune", epochs, after_step=freeze)
        self.settle_bn(ctx, student)
        extras: dict[str, Any] = {"phase_epochs": [epochs]}
        if kept:
            extras |= {"group_widths": kept, "widths_matched": widths is not None}
        return self.result(student, 0.0, 0.0, extras, about)

    @property
    def effective_lam(self) -> float | None:
        """An explicit ``lam`` per halving of the weights, λ·log2(compression); None when λ
        is calibrated (``prox_lam``)."""
        if self.cfg.lam is None:
            return None
        return self.cfg.lam * math.log2(self.cfg.compression)

    def prox_lam(self, ctx: RunContext, student: nn.Module, groups: list[ChannelGroup],
                 max_zeros: int) -> float:
        """The prox's λ: ``effective_lam``, or calibrated to this run's prox phase.

        Calibrated: s_cut / Σ_t η_t, with s_cut the magnitude of the (max_zeros)-th weakest
        channel (RMS norm) or weight of the network about to be compressed, and η_t the
        learning rate of every step of the prox phase. Without gradients the phase would
        then zero exactly what the hard cut removes, at its end; the loss keeps what it
        needs, so the channels the cut will remove fade out while the others adapt.
        """
        if self.effective_lam is not None:
            return self.effective_lam
        scores = torch.cat([u.flatten() for _, u in self.magnitudes(student, groups)])
        if max_zeros <= 0 or scores.numel() == 0:
            return 0.0
        cut = float(scores.kthvalue(min(max_zeros, scores.numel())).values)
        recipe = ctx.recipe.replace(epochs=self.cfg.prox_epochs, lr=self.cfg.lr,
                                    schedule=self.cfg.schedule, warmup_epochs=0)
        steps_per_epoch = len(self.loader(ctx))
        lr_sum = steps_per_epoch * sum(lr_at(e, recipe) for e in range(recipe.epochs))
        return cut / lr_sum if lr_sum > 0 else 0.0

    def magnitudes(self, student: nn.Module, groups: list[ChannelGroup],
                   ) -> list[tuple[str, torch.Tensor]]:
        """(layer name, what the prox thresholds) per channel group (RMS norm of each
        channel) or per prunable layer (|w|, unstructured)."""
        names = {m: n for n, m in student.named_modules()}
        if self.cfg.sparsity == "filter":
            return [(names[g.layers[0]], g.squared_norms().sqrt()) for g in groups]
        if self.cfg.sparsity == "bn_filter":
            return [(names[g.layers[0]], g.norm_rms()) for g in groups]
        return [(names[m], m.weight.detach().abs()) for m in prunable_layers(student)]

    # ---- pieces -----------------------------------------------------------------------
    @staticmethod
    def student_from(teacher: FrozenTeacher) -> nn.Module:
        """A trainable copy of the trained teacher: the network being compressed."""
        return copy.deepcopy(teacher.model).requires_grad_(True).train()

    def groups(self, student: nn.Module, example: torch.Tensor) -> list[ChannelGroup]:
        if self.cfg.sparsity == "unstructured":
            return []
        return channel_groups(student, example, exclude=[classifier_of(student)])

    def prox_hook(self, student: nn.Module, groups: list[ChannelGroup], lam: float,
                  max_zeros: int | None = None,
                  name: str = "main") -> Callable[[FitState], None]:
        """After each optimiser step: prox of η·λ·Ω with the step's current η (structured:
        each channel's threshold is η·λ on its RMS norm, η·λ·√size on its norm).

        With ``max_zeros`` (what the hard cut removes: channels, or weights when
        unstructured), each step's threshold is capped just below the (max_zeros + 1)-th
        smallest magnitude, so the prox never leaves more zeros than the requested
        compression: where the schedule is longer than the one λ was set for, λ is lowered
        on the steps that would overshoot instead of zeroing every channel. The cap depends
        only on the current weights, so a resumed run takes the same steps. A λ whose first
        step alone would zero every channel of a layer raises ``PruningCollapseError``; on
        later steps each layer's threshold stops below its strongest channel, so no layer is
        emptied. ``hook.stats`` counts the steps, the capped ones and the floored ones.
        """
        layers = prunable_layers(student)
        stats = {"steps": 0, "capped": 0, "floored": 0}

        def hook(state: FitState) -> None:
            stats["steps"] += 1
            threshold = state.optimizer.param_groups[0]["lr"] * lam
            if threshold <= 0:
                return
            units = self.magnitudes(student, groups)
            if state.step == 1 and self.cfg.lam is not None:
                # A fixed λ that empties a layer of the trained network at once is a mistake;
                # a calibrated one never exceeds the cut, and the floor below keeps a channel.
                self.refuse_layer_wipe(units, threshold, lam, name)
            if max_zeros is not None:
                capped = capped_threshold(torch.cat([u.flatten() for _, u in units]),
                                          threshold, max_zeros)
                stats["capped"] += int(capped < threshold)
                threshold = capped
            # One λ for all layers can empty a whole layer (its channels all weaker than
            # the others') although the total stays within the target: each layer's
            # threshold stops just below its strongest channel (or weight), so every layer
            # keeps one and the hard cut, not the prox, decides the final widths.
            floors = [min(threshold, float(u.max()) * (1 - 1e-6)) for _, u in units]
            stats["floored"] += int(any(f < threshold for f in floors))
            if self.cfg.sparsity == "filter":
                for group, floor in zip(groups, floors, strict=True):
                    prox_group_([group], floor)
            elif self.cfg.sparsity == "bn_filter":
                for group, floor in zip(groups, floors, strict=True):
                    prox_norm_affine_(group, floor)
            else:
                for layer, floor in zip(layers, floors, strict=True):
                    prox_l1_([layer.weight], floor)

        hook.stats = stats  # type: ignore[attr-defined]
        return hook

    def refuse_layer_wipe(self, units: list[tuple[str, torch.Tensor]], threshold: float,
                          lam: float, name: str) -> None:
        """Raise ``PruningCollapseError`` if one prox step at ``threshold`` zeroes a layer."""
        for layer, magnitudes in units:
            largest = float(magnitudes.max())
            if largest <= threshold:
                unit = "|weight|" if self.cfg.sparsity == "unstructured" else "RMS channel norm"
                raise PruningCollapseError(
                    f"{self.name or 'robust_prune_kd'} ({name}): λ = {lam:g} "
                    f"({self.lam_origin()}) is so strong that the "
                    f"first prox step (threshold lr × λ = {threshold:g}) zeroes every "
                    f"{'weight' if self.cfg.sparsity == 'unstructured' else 'channel'} of layer "
                    f"{layer!r} (its largest {unit} is {largest:.3g}), so the network would be "
                    f"at chance. {self.remedy()}")

    @property
    def structured(self) -> bool:
        """Whole channels are pruned (and removed physically)."""
        return self.cfg.sparsity != "unstructured"

    def kept_channels(self, groups: list[ChannelGroup]) -> int:
        """Structured: ⌈N/√c⌉ of the N prunable channels are kept by the hard cut."""
        return math.ceil(sum(g.channels for g in groups) / math.sqrt(self.cfg.compression))

    def max_zeros(self, student: nn.Module, groups: list[ChannelGroup]) -> tuple[int, float]:
        """How many channels (or weights) the hard cut removes, and that as a fraction."""
        if self.structured:
            total = sum(g.channels for g in groups)
            zeros = total - self.kept_channels(groups)
        else:
            total = sum(m.weight.numel() for m in prunable_layers(student))
            zeros = int((1 - 1 / self.cfg.compression) * total)
        return zeros, zeros / max(1, total)

    def check_no_empty_layer(self, student: nn.Module, groups: list[ChannelGroup], name: str,
                             lam: float, zeros: float, target: float) -> None:
        """Raise ``PruningCollapseError`` naming the layers the prox phase left all zero."""
        names = {m: n for n, m in student.named_modules()}
        if self.structured:
            empty = [(names[g.layers[0]], g.channels) for g in groups
                     if bool((g.squared_norms() == 0).all())]
            unit = "channels"
        else:
            empty = [(names[m], m.weight.numel()) for m in prunable_layers(student)
                     if not bool(m.weight.any())]
            unit = "weights"
        if not empty:
            return
        layer, size = empty[0]
        more = f" ({len(empty)} layers in all: {', '.join(n for n, _ in empty)})" \
            if len(empty) > 1 else ""
        raise PruningCollapseError(
            f"{self.name or 'robust_prune_kd'} ({name}): the prox phase zeroed all {size} "
            f"{unit} of layer {layer!r}{more}, so the network is at chance; λ = {lam:g} "
            f"({self.lam_origin()}) with lr "
            f"{self.cfg.lr:g} over {self.cfg.prox_epochs} prox epochs left {zeros:.0%} zero "
            f"(target {target:.0%}). {self.remedy()}")

    def check_not_at_chance(self, ctx: RunContext, student: nn.Module, teacher: FrozenTeacher,
                            name: str, lam: float, zeros: float, target: float) -> None:
        """Raise ``PruningCollapseError`` when the result is at chance on held-out training
        images on which the unpruned network is clearly above chance."""
        n = min(self.cfg.collapse_check_images, len(ctx.train_split))
        if n <= 0:
            return
        images = ctx.train_split.subset(n, seed=1)  # the method trains on the seed-0 subset
        p = 1 / ctx.num_classes
        bound = 100 * (p + 3 * math.sqrt(p * (1 - p) / len(images)))  # chance + 3σ, percent
        base = ctx.evaluate(teacher, images)["top1"]
        if base <= 2 * bound:
            return  # the unpruned network is not clearly above chance: nothing to lose
        acc = ctx.evaluate(student, images)["top1"]
        if acc > bound:
            return
        raise PruningCollapseError(
            f"{self.name or 'robust_prune_kd'} ({name}): the pruned network is at chance "
            f"({acc:.1f}% top-1 on {len(images)} held-out training images; chance "
            f"{100 * p:.1f}%, the unpruned network {base:.1f}%); its narrowest layer is "
            f"{narrowest_layer(student)}. λ = {lam:g} ({self.lam_origin()}) "
            f"left {zeros:.0%} zero after the prox phase (target "
            f"{target:.0%}). {self.remedy()}")

    def lam_origin(self) -> str:
        """Where the prox's λ came from, for messages."""
        if self.cfg.lam is None:
            return "calibrated to the prox phase's schedule and the target"
        return f"lam {self.cfg.lam:g} × log2 {self.cfg.compression:g}"

    def remedy(self) -> str:
        method = self.name or "robust_prune_kd"
        weaker = (f"{method}.lam={self.cfg.lam / 10:g}" if self.cfg.lam is not None
                  else f"{method}.lam=<λ per halving>")
        return (f"Lower the sparsity strength (e.g. --set {weaker}) "
                f"or the prox phase's length ({method}.prox_epochs), or ask for less "
                f"compression ({method}.compression).")

    def sparsity(self, student: nn.Module, groups: list[ChannelGroup]) -> float:
        """Zero channels (structured) or zero weights (unstructured), as a fraction."""
        if self.structured:
            return group_sparsity(groups)
        return l1_sparsity(m.weight for m in prunable_layers(student))

    def hard_threshold(self, student: nn.Module, groups: list[ChannelGroup],
                       example: torch.Tensor, widths: dict[str, int] | None = None,
                       ) -> tuple[Callable[[FitState], None] | None, dict[str, int]]:
        """Cut to the target; return the hook that keeps the zero pattern while training and
        the channels kept per group (structured; empty when unstructured).

        Structured: the dropped channels are zeroed and removed physically, so nothing
        needs freezing; ``widths`` (group name → channels) cuts each group to its own
        count instead of ranking over all groups. Unstructured: the mask is re-applied after
        every step (momentum and weight decay would revive zeros otherwise).
        """
        compression = self.cfg.compression
        if self.structured:
            if widths is None:
                # The prox's own measure, so the cut removes first what the prox zeroed.
                score = GroupScore.norm_rms if self.cfg.sparsity == "bn_filter" \
                    else GroupScore.norm
                zero_weakest_channels(groups, self.kept_channels(groups), score)
            else:
                zero_weakest_per_group(groups, widths)
            kept = {g.name: int((g.squared_norms() > 0).sum()) for g in groups}
            remove_zero_channels(student, example, exclude=[classifier_of(student)])
            return None, kept
        masks = magnitude_masks(student, 1 - 1 / compression,
                                layers=prunable_layers(student))
        apply_masks(masks)
        return (lambda state: apply_masks(masks)), {}

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
               extras: dict[str, Any], about: dict[str, Any] | None = None) -> Compressed:
        cfg = self.cfg
        prunable = [m.weight for m in prunable_layers(student)]
        notes = [UNSTRUCTURED_NOTE] if cfg.sparsity == "unstructured" else []
        about = about or {"kind": "standard"}
        return Compressed(model=student.eval(), notes=notes, extras={
            **extras, "sparsity_mode": cfg.sparsity, "target_compression": cfg.compression,
            "effective_lam": lam, "lam_calibrated": cfg.lam is None, "alpha": alpha,
            "final_weight_sparsity": l1_sparsity(prunable),
            "base_model": f"{about['kind']} teacher",
            "teacher_adversarially_trained": about["kind"] == "adversarial", "kd_teacher": about,
            "train_attack": {"eps": cfg.eps, "step_size": cfg.step_size,
                             "steps": cfg.attack_steps, "random_start": cfg.random_start},
        })


def teacher_extras(info: TeacherInfo, attack: PGDConfig) -> dict[str, Any]:
    """What a record says of the adversarial teacher (the harness records the standard one)."""
    return {"kind": "adversarial", "sha256": info.sha256, "source": info.source,
            "clean_top1": info.top1, "clean_top5": info.top5,
            "attack": {"eps": attack.eps, "step_size": attack.step_size, "steps": attack.steps,
                       "random_start": attack.random_start}}


def narrowest_layer(model: nn.Module) -> str:
    """The prunable layer with the fewest channels alive (ties: the most zero weights)."""
    names = {m: n for n, m in model.named_modules()}
    found = []
    for m in prunable_layers(model):
        alive = int(m.weight.flatten(1).abs().sum(1).gt(0).sum())
        zero = float((m.weight == 0).float().mean())
        found.append((alive, -zero, f"{names[m]!r} ({alive} of {m.weight.shape[0]} channels "
                                    f"alive, {zero:.0%} zero weights)"))
    return min(found)[2] if found else "none"


class GroupScore:
    """How the hard cut ranks channels: the L2 norm of the whole group, its RMS (norm / √size),
    or the RMS of its normalisation scales and shifts only."""

    norm = staticmethod(lambda g: g.squared_norms().sqrt())
    rms = staticmethod(lambda g: g.rms())
    norm_rms = staticmethod(lambda g: g.norm_rms())


@torch.no_grad()
def prox_norm_affine_(group: ChannelGroup, threshold: float) -> None:
    """Group soft-threshold of each channel's normalisation scales and shifts (RMS units);
    a channel whose scales and shifts reach zero outputs zero, so its filters are zeroed
    too and the channel can be removed without changing the network."""
    scale = group_scale(group.norm_rms(), threshold)
    for t in group.norm_tensors():
        t.mul_(scale.to(t.dtype))
    dead = scale == 0
    if bool(dead.any()):
        for t in group.channel_tensors():
            t[dead.to(t.device)] = 0


@torch.no_grad()
def zero_weakest_channels(groups: list[ChannelGroup], keep: int,
                          score: Callable[[ChannelGroup], torch.Tensor] = GroupScore.rms,
                          ) -> None:
    """Zero all but the ``keep`` channels with the largest ``score`` (≥ 1 per group)."""
    scores = [score(g) for g in groups]
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


@torch.no_grad()
def zero_weakest_per_group(groups: list[ChannelGroup], widths: dict[str, int]) -> None:
    """Zero all but the ``widths[group.name]`` channels of largest norm in every group."""
    missing = [g.name for g in groups if g.name not in widths]
    if missing:
        raise ValueError(f"no width given for channel groups {missing}; widths name "
                         f"{sorted(widths)}")
    for group in groups:
        keep = min(group.channels, max(1, widths[group.name]))
        mask = torch.zeros(group.channels, dtype=torch.bool)
        mask[group.squared_norms().topk(keep).indices] = True
        for t in group.channel_tensors():
            t.mul_(mask.to(t.device, t.dtype).view(-1, *([1] * (t.dim() - 1))))
