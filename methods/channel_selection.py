"""Channel self-selection with knowledge transfer: the whole plugin.

Guo & Chen, South China Univ. of Technology patent (2019), "Convolutional neural network channel
self-selection compression and acceleration method based on knowledge migration". S1: guidance
knowledge from a trained network (ResNet-56): softened logits and stage-output feature maps.
S2/S3: the network to compress gets one random coefficient per output channel of every conv,
multiplying the channel after its BN. S4: it trains under the guidance with an L1 pull on the
coefficients; at the end of every epoch the lowest-ranked channels have their coefficients set
to 0 but stay trainable (soft cut, fraction ramped up to the target); at the end they are
removed (hard cut: coefficients folded into BN, zero channels physically removed) and the
network is fine-tuned with the KD loss. Channels are ranked by what training made of them,
|m·γ| over the coefficient's random initial draw (``channel_gates.channel_scores``), not by
|m| alone, which a short training leaves to the draw. Control row ``l1_finetune``: the same
number of channels per coupling group kept by the L1 norm of the trained filters instead,
then the same fine-tune.

[R] marks kdbench's own choice where the patent gives none; see CONTRIBUTING.md, "Where a
number comes from: [S], [P], [R]".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from torch import nn

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Pair, Range
from kdbench.benchmarks.data import Batch, BatchLoader
from kdbench.benchmarks.method import (
    Compressed,
    FrozenTeacher,
    Method,
    RunContext,
    probe_input,
    probe_model,
)
from kdbench.benchmarks.registry import METHODS
from kdbench.benchmarks.train import FitState
from kdbench.methods.common import kd_kl
from kdbench.methods.common.channel_gates import (
    channel_scores,
    close_relus,
    export_gated,
    gate_groups,
    insert_gates,
    open_relus,
)
from kdbench.methods.common.features import capture, unit_hint_loss

Target = Literal["teacher", "student"]
Control = Literal["l1_finetune"]
CONTROLS: tuple[Control, ...] = get_args(Control)


class Selecting(nn.Module):
    """The gated network plus the 1x1 regressors that map its stage outputs to the teacher's
    widths (identity where they already match); trained together, regressors discarded."""

    def __init__(self, net: nn.Module, regressors: nn.ModuleList):
        super().__init__()
        self.net = net
        self.regressors = regressors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with capture(self.net.stages()) as seen:
            logits = self.net(x)
        return logits, [r(s.output) for r, s in zip(self.regressors, seen, strict=True)]


def stage_shapes(model: nn.Module, example_inputs: torch.Tensor) -> list[torch.Size]:
    """Output shapes of ``model.stages()`` on ``example_inputs`` (eval mode, no grad)."""
    was_training = model.training
    with torch.no_grad(), capture(model.stages()) as seen:
        model.eval()(example_inputs)
    model.train(was_training)
    return [s.output.shape for s in seen]


def make_regressors(student_shapes: list[torch.Size],
                    teacher_shapes: list[torch.Size]) -> nn.ModuleList:
    """Identity where widths match, else a 1x1 conv; spatial sizes must agree."""
    if len(student_shapes) != len(teacher_shapes):
        raise ValueError(f"the networks have {len(student_shapes)} and {len(teacher_shapes)} "
                         "stages; stage hints need the same number")
    regressors = []
    for i, (s, t) in enumerate(zip(student_shapes, teacher_shapes, strict=True)):
        if s[2:] != t[2:]:
            raise ValueError(f"stage {i} outputs are {tuple(s[2:])} and {tuple(t[2:])} pixels; "
                             "stage hints need equal spatial sizes")
        regressors.append(nn.Identity() if s[1] == t[1] else nn.Conv2d(s[1], t[1], 1))
    return nn.ModuleList(regressors)


def cut_fraction(epoch: int, epochs: int, target: float, ramp_fraction: float) -> float:
    """p_e: the target cut fraction reached linearly after ceil(ramp_fraction·epochs) epochs."""
    ramp = max(1, math.ceil(ramp_fraction * epochs))
    return target * min(1.0, (epoch + 1) / ramp)


def channels_to_cut(channels: int, fraction: float, min_channels: int) -> int:
    """⌊fraction·C⌋ (float noise removed), leaving at least min(min_channels, C) channels."""
    return max(0, min(math.floor(round(fraction * channels, 6)),
                      channels - min(min_channels, channels)))


@torch.no_grad()
def soft_cut(coefficients: list[nn.Parameter], fraction: float, min_channels: int,
             scores: list[torch.Tensor] | None = None) -> int:
    """Zero the coefficients of the ``fraction`` lowest-scored channels of each coupling
    group, in place; ``scores`` default to |m| (ties: the lower index goes first).

    The coefficients stay parameters of the optimiser: a cut channel can regrow. Returns the
    number of coefficients that are zero afterwards.
    """
    zeros = 0
    scores = scores if scores is not None else [c.detach().abs() for c in coefficients]
    for coeff, score in zip(coefficients, scores, strict=True):
        n_cut = channels_to_cut(coeff.numel(), fraction, min_channels)
        if n_cut:
            coeff[torch.argsort(score, stable=True)[:n_cut]] = 0.0
        zeros += int((coeff == 0).sum())
    return zeros


@torch.no_grad()
def l1_magnitude_cut(model: nn.Module, counts: dict[str, int]) -> None:
    """Set each gate group's coefficients to 1 on its ``counts[source]`` channels of largest
    filter L1 norm (summed over the group's coupled layers) and 0 elsewhere, in place;
    ``source`` is the group's first gated layer (``gate_groups``)."""
    for coeff, gates in gate_groups(model):
        l1 = sum(model.get_submodule(g.source).weight.detach().abs().flatten(1).sum(1)
                 for g in gates)
        keep = torch.argsort(l1, descending=True, stable=True)[:counts[gates[0].source]]
        coeff.zero_()
        coeff[keep] = 1.0


@METHODS.register_module("channel_selection")
class ChannelSelection(Method):
    """Learn which channels to keep with per-channel coefficients under KD, then remove the rest.

    Defaults for the ``full`` budget follow the patent's embodiment (pair ``resnet56``, the
    network compressed is the teacher's own architecture from its trained weights); every
    other choice is kdbench's own, marked [R].
    """

    label = "Guo & Chen, SCUT patent 2019"

    # The patent claims "higher compression and acceleration ratio" only, with no numbers;
    # ~50 % MACs with a top-1 drop <= 0.5 pp is kdbench's target [R], about what soft filter
    # pruning (He et al., IJCAI 2018) reaches on ResNet-56 CIFAR-10.
    # The first claim's reference is the control row channel_selection:l1_finetune (an
    # L1-magnitude cut to the same channel counts, then the same fine-tune).
    claims = (
        Claim("channel_selection", "channel_selection:l1_finetune", "top1",
              text="channels selected by the learned coefficients beat an L1-magnitude cut of "
                   "the same size with the same fine-tune"),
        Claim("channel_selection", "teacher", "macs_ratio", direction="lower",
              text="the hard-cut network runs fewer MACs than the teacher"),
        Claim("channel_selection", "teacher", "top1", margin=-0.5,
              paper_note="no figure in the patent; -0.5 pp is kdbench's choice [R]",
              text="top-1 within 0.5 points of the teacher"),
    )

    @dataclass(frozen=True)
    class Config:
        # [R] network to compress: teacher's (from its weights) | student
        target: Target = "teacher"
        # [R] channels kept per coupling group (~half the MACs)
        keep_ratio: Annotated[float, Interval(gt=0, le=1)] = 0.7
        ramp_fraction: float = 0.6  # [R] soft-cut fraction reaches 1 - keep_ratio after this share
        # [R] a group never drops below min(this, its width)
        min_channels: Annotated[int, Ge(1)] = 8
        # [R] coefficients drawn from U(low, high), 0 < low <= high
        mask_init: Annotated[Range, Gt(0)] = (0.9, 1.1)
        temperature: float = 4.0  # [R]
        ce_weight: float = 1.0
        alpha: float = 0.9  # [R] weight of the logits KD term
        hint_weight: float = 1.0  # [R] beta: stage-output hints on unit-normalised maps
        l1: float = 1e-4  # [R] lambda: explicit L1 on the coefficients (no weight decay on them)
        epochs: int | None = None  # selection phase; None: the budget's
        lr: float | None = None  # selection phase; None: the budget's
        # [R] after the hard cut, same KD loss on the logits
        finetune_epochs: Annotated[int, Ge(0)] = 20
        finetune_lr: float = 0.01  # [R] cosine
        train_images: int | None = None  # None: the budget's whole training split
        # Control rows: "l1_finetune" (the same channel counts per group kept by filter L1
        # of the trained network, then the same fine-tune); only with target "teacher", the
        # student's initial filters carry no L1 ranking worth testing against
        controls: tuple[Control, ...] = CONTROLS

    # Two short selection epochs (cut ramp 0.15 -> 0.3), hard cut, one fine-tune epoch.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"epochs": 2, "finetune_epochs": 1, "finetune_lr": 0.02, "train_images": 512}}

    def supports(self, pair: Pair) -> str | None:
        arch = pair.teacher if self.cfg.target == "teacher" else pair.student
        try:
            net = probe_model(arch)
            x = probe_input(net)
            insert_gates(net, x, torch.ones)
            if self.cfg.target == "student":
                teacher = probe_model(pair.teacher)
                make_regressors(stage_shapes(net, x), stage_shapes(teacher, x))
        except ValueError as exc:
            return f"cannot gate the channels of {arch}: {exc}"
        return None

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        example = ctx.example_input(1)
        net = (copy.deepcopy(teacher.model).requires_grad_(True) if cfg.target == "teacher"
               else ctx.build_student())
        low, high = cfg.mask_init
        coefficients = insert_gates(net, example, lambda c: torch.empty(c).uniform_(low, high))
        loader = ctx.train_loader(images=cfg.train_images)
        regrown = self.select(ctx, teacher, net, coefficients, example, loader)
        total = sum(c.numel() for c in coefficients)
        kept = sum(int((c != 0).sum()) for c in coefficients)
        counts = {gates[0].source: int((coeff != 0).sum()) for coeff, gates in gate_groups(net)}
        export_gated(net, example)
        if cfg.finetune_epochs:
            self.finetune(ctx, teacher, net, loader)
        notes = ([f"pruned {ctx.pair.teacher} itself (keep ratio {cfg.keep_ratio:g}), not the "
                  f"pair's student {ctx.pair.student}"] if cfg.target == "teacher" else [])
        extras = {"keep_ratio": cfg.keep_ratio, "kept_channel_fraction": kept / total}
        controls = {}
        if "l1_finetune" in cfg.controls and cfg.target == "teacher":
            controls["l1_finetune"] = Compressed(
                model=self.l1_control(ctx, teacher, counts, example, loader).eval(),
                notes=list(notes), extras={**extras, "channel_ranking": "filter_l1"})
        return Compressed(model=net.eval(), notes=notes, controls=controls, extras={
            **extras, "regrown_channels": regrown,
            "channel_ranking": "folded_scale_over_initial_coefficient"})

    def l1_control(self, ctx: RunContext, teacher: FrozenTeacher, counts: dict[str, int],
                   example: torch.Tensor, loader: BatchLoader) -> nn.Module:
        """The teacher cut to the selection's channel counts by filter L1, then fine-tuned
        exactly like the selected network (same loss, epochs, lr, batches)."""
        net = copy.deepcopy(teacher.model).requires_grad_(True)
        insert_gates(net, example, torch.ones)
        l1_magnitude_cut(net, counts)
        export_gated(net, example)
        if self.cfg.finetune_epochs:
            self.finetune(ctx, teacher, net, loader, name="l1-finetune")
        return net

    def select(self, ctx: RunContext, teacher: FrozenTeacher, net: nn.Module,
               coefficients: list[nn.Parameter], example: torch.Tensor,
               loader: BatchLoader) -> int:
        """Train with gates and soft cuts; returns how many cut channels regrew meanwhile."""
        cfg = self.cfg
        regressors = make_regressors(stage_shapes(net, example),
                                     stage_shapes(teacher.model, example)).to(ctx.device)
        selecting = Selecting(net, regressors)
        epochs = cfg.epochs or ctx.recipe.epochs
        gate_ids = {id(c) for c in coefficients}
        weights = [p for p in selecting.parameters() if id(p) not in gate_ids]
        params = [{"params": weights}, {"params": coefficients, "weight_decay": 0.0}]
        cut = [torch.zeros_like(c, dtype=torch.bool) for c in coefficients]
        initial = [c.detach().clone() for c in coefficients]
        regrown = 0

        def after_epoch(state: FitState) -> None:
            nonlocal cut, regrown
            regrown += sum(int((c[was] != 0).sum()) for c, was in zip(coefficients, cut,
                                                                     strict=True))
            fraction = cut_fraction(state.epoch, state.epochs, 1.0 - cfg.keep_ratio,
                                    cfg.ramp_fraction)
            zeros = soft_cut(coefficients, fraction, cfg.min_channels,
                             channel_scores(net, coefficients, initial))
            cut = [c.detach() == 0 for c in coefficients]
            ctx.log.info("channel_selection: soft cut %.3f after epoch %d (%d channels at 0)",
                         fraction, state.epoch + 1, zeros)

        open_relus(net)
        try:
            ctx.fit(selecting, self.selection_loss(teacher, coefficients), params=params,
                    after_epoch=after_epoch, loader=loader, name="select", epochs=epochs,
                    lr=cfg.lr or ctx.recipe.lr)
        finally:
            close_relus(net)
        return regrown

    def selection_loss(self, teacher: FrozenTeacher, coefficients: list[nn.Parameter]):
        """CE + α·KD + β·Σ stage hints + λ·Σ|m| (S4)."""
        cfg = self.cfg

        def loss(batch: Batch, out):
            logits, feats = out
            with torch.no_grad(), capture(teacher.model.stages()) as seen:
                t_logits = teacher(batch.x)
            ce = F.cross_entropy(logits, batch.y)
            kd = kd_kl(logits, t_logits, cfg.temperature)
            hint = sum(unit_hint_loss(f, s.output) for f, s in zip(feats, seen, strict=True))
            l1 = sum(c.abs().sum() for c in coefficients)
            total = cfg.ce_weight * ce + cfg.alpha * kd + cfg.hint_weight * hint + cfg.l1 * l1
            return total, {"ce": ce.detach(), "kd": kd.detach(), "hint": hint.detach(),
                           "l1": l1.detach()}

        return loss

    def finetune(self, ctx: RunContext, teacher: FrozenTeacher, net: nn.Module,
                 loader: BatchLoader, name: str = "finetune") -> None:
        """After the hard cut: CE + α·KD on the logits (stage widths changed with the cut)."""
        cfg = self.cfg

        def loss(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return cfg.ce_weight * F.cross_entropy(logits, batch.y) + \
                cfg.alpha * kd_kl(logits, t_logits, cfg.temperature)

        ctx.fit(net, loss, loader=loader, name=name, epochs=cfg.finetune_epochs,
                lr=cfg.finetune_lr, schedule="cosine", warmup_epochs=0)
