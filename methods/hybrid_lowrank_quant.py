"""Hybrid low-rank + FC pruning + INT8 with multi-layer teacher-student recovery (Chen 2018).

After W.J. Chen, "The Acceleration and Compression of Convolutional Neural Networks" (master's
thesis, 2018; its abstract is the source): every conv layer whose weight
``W ∈ R^{C_out × C_in·k·k}`` gains from it is replaced by its truncated SVD ``U_r Σ_r V_rᵀ`` as
two layers, a k×k conv C_in→r (``√Σ_r V_rᵀ``) and a 1×1 conv r→C_out (``U_r √Σ_r``); the
fully-connected layers are magnitude-pruned (zeros folded into the weights); the network then
recovers by the multi-layer teacher-student scheme: hint losses regress the teacher's feature
maps at several depths (1×1 adapters where widths differ, dropped afterwards), then logit KD.
INT8 of the whole network is the harness's deployment track (``deploy = ("int8",)``): the
board shows the quantized model and, beside it, its fp32 factorised form.

[R] marks kdbench's own choice where the thesis abstract gives none; see CONTRIBUTING.md,
"Where a number comes from: [S], [P], [R]".
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Interval
from torch import nn

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Fraction
from kdbench.benchmarks.data import Batch, BatchLoader
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.measure.params import evaluating
from kdbench.benchmarks.method import Compressed, FrozenTeacher, Method, RunContext
from kdbench.benchmarks.registry import METHODS
from kdbench.benchmarks.train import FitState
from kdbench.methods.common import apply_masks, kd_kl, magnitude_masks, replace_modules
from kdbench.methods.common.features import capture

RankRule = Literal["energy", "macs"]
FC_NOTE = "FC zeros are unstructured: no dense MACs/latency gain from them"


# ---- low-rank factorisation ------------------------------------------------------------
def useful_rank_limit(c_in: int, c_out: int, kh: int, kw: int) -> int:
    """Largest rank r whose factorisation has fewer MACs than the layer:
    r·(C_in·k² + C_out) < C_out·C_in·k² (MACs per output pixel of the two factors against the
    dense layer's); 0 when none does."""
    cols = c_in * kh * kw
    return math.ceil(c_out * cols / (cols + c_out)) - 1


def factorised_macs(c_in: int, c_out: int, kh: int, kw: int, rank: int, out_hw: int) -> int:
    """MACs of k×k conv C_in→r then 1×1 conv r→C_out: r·(C_in·k²·HW) + C_out·r·HW."""
    return rank * c_in * kh * kw * out_hw + c_out * rank * out_hw


def conv_macs(c_in: int, c_out: int, kh: int, kw: int, out_hw: int) -> int:
    return c_out * c_in * kh * kw * out_hw


def choose_rank(singular_values: torch.Tensor, c_in: int, c_out: int, kh: int, kw: int, *,
                rule: RankRule, energy: float, macs_ratio: float) -> int | None:
    """The rank for one layer, or None when no rank reduces its MACs.

    ``energy``: the fewest singular values keeping that fraction of ``Σσ²``. ``macs``: the
    largest rank whose MACs are at most ``macs_ratio`` of the layer's. Either way the rank is
    capped to ``useful_rank_limit``, so a factorisation never costs more than the layer.
    """
    limit = useful_rank_limit(c_in, c_out, kh, kw)
    if limit < 1:
        return None
    if rule == "energy":
        power = singular_values.double().pow(2)
        kept = power.cumsum(0) / power.sum()
        rank = int((kept < energy - 1e-12).sum()) + 1
    else:  # macs
        cols = c_in * kh * kw
        rank = math.floor(macs_ratio * c_out * cols / (cols + c_out))
    rank = max(1, min(rank, len(singular_values)))
    return rank if rank <= limit else None


def factorise_conv(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Truncated-SVD replacement of ``conv``: k×k conv to ``rank`` channels, then 1×1 conv.

    The k×k layer keeps the stride, padding and dilation; the 1×1 layer takes the bias. With
    rank = min(C_out, C_in·k²) the pair computes the same function as ``conv``.
    """
    if conv.groups != 1:
        raise ValueError(f"only groups=1 convs can be factorised; got groups={conv.groups}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"only zero padding is supported; got {conv.padding_mode!r}")
    c_out, c_in, kh, kw = conv.weight.shape
    w = conv.weight.detach().reshape(c_out, c_in * kh * kw).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Conv2d(c_in, rank, (kh, kw), stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, bias=False)
    second = nn.Conv2d(rank, c_out, 1, bias=conv.bias is not None)
    dtype, device = conv.weight.dtype, conv.weight.device
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, c_in, kh, kw))
        second.weight.copy_((u[:, :rank] * root[None, :]).reshape(c_out, rank, 1, 1))
        if conv.bias is not None:
            second.bias.copy_(conv.bias.detach())
    return nn.Sequential(first, second).to(device=device, dtype=dtype)


@dataclass
class LayerRank:
    """What the rank rule decided for one conv layer (kept in the record's extras)."""

    layer: str
    shape: tuple[int, int, int, int]  # C_out, C_in, kh, kw
    rank: int | None  # None: left dense (no rank reduces its MACs under the rule)
    limit: int  # largest rank that still saves MACs
    energy_kept: float | None
    macs_before: int
    macs_after: int


def factorise_model(model: nn.Module, example: torch.Tensor, *, rule: RankRule, energy: float,
                    macs_ratio: float, skip_first: bool) -> list[LayerRank]:
    """Replace every groups=1 conv the rule finds worth it; returns one entry per conv."""
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"]
    with evaluating(model), torch.no_grad(), capture([m for _, m in convs]) as seen:
        model(example[:1])
    decisions: dict[str, int] = {}
    report = []
    for index, ((name, conv), out) in enumerate(zip(convs, seen, strict=True)):
        c_out, c_in, kh, kw = conv.weight.shape
        out_hw = out.output.shape[-2] * out.output.shape[-1]
        before = conv_macs(c_in, c_out, kh, kw, out_hw)
        s = torch.linalg.svdvals(conv.weight.detach().reshape(c_out, -1).double())
        rank = None if (skip_first and index == 0) else choose_rank(
            s, c_in, c_out, kh, kw, rule=rule, energy=energy, macs_ratio=macs_ratio)
        power = s.pow(2)
        report.append(LayerRank(
            name, (c_out, c_in, kh, kw), rank, useful_rank_limit(c_in, c_out, kh, kw),
            None if rank is None else float(power[:rank].sum() / power.sum()), before,
            before if rank is None else factorised_macs(c_in, c_out, kh, kw, rank, out_hw)))
        if rank is not None:
            decisions[name] = rank
    replace_modules(model, lambda m: any(m is c for n, c in convs if n in decisions),
                    lambda name, conv: factorise_conv(conv, decisions[name]))
    return report


# ---- FC pruning -------------------------------------------------------------------------
def prune_fc(model: nn.Module, sparsity: float) -> dict[nn.Module, torch.Tensor]:
    """Global magnitude masks over every nn.Linear (classifier included), folded in place."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears or sparsity == 0:
        return {}
    masks = magnitude_masks(model, sparsity, layers=linears)
    apply_masks(masks)
    return masks


# ---- multi-layer teacher-student recovery ------------------------------------------------
def hint_points(model: nn.Module) -> list[nn.Module]:
    stages = getattr(model, "stages", None)
    if not callable(stages):
        raise ConfigError(f"hybrid_lowrank_quant needs models with stages() for its hints; "
                          f"{type(model).__name__} has none")
    return list(stages())


def make_adapters(student: nn.Module, teacher: nn.Module, example: torch.Tensor) -> nn.ModuleList:
    """One 1×1 conv per hint point where the student's width differs, else an identity.

    They live outside the student, so the deployed model never carries them.
    """
    s_points, t_points = hint_points(student), hint_points(teacher)
    if len(s_points) != len(t_points):
        raise ConfigError(f"student has {len(s_points)} hint points (stages) but the teacher "
                          f"has {len(t_points)}; pair models with the same number of stages")
    with evaluating(student, teacher), torch.no_grad(), capture(s_points) as s_seen, \
            capture(t_points) as t_seen:
        student(example[:1])
        teacher(example[:1])
    adapters = []
    for s, t in zip(s_seen, t_seen, strict=True):
        c_s, c_t = s.output.shape[1], t.output.shape[1]
        adapters.append(nn.Identity() if c_s == c_t else nn.Conv2d(c_s, c_t, 1, bias=False))
    return nn.ModuleList(adapters).to(example.device)


def hint_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor],
              adapters: nn.ModuleList) -> torch.Tensor:
    """Sum over depths of the MSE between the adapted student map and the teacher's map
    (FitNets-style regression; the student map is pooled to the teacher's size if needed)."""
    total = torch.zeros((), device=student_maps[0].device)
    for s, t, adapter in zip(student_maps, teacher_maps, adapters, strict=True):
        s = adapter(s)
        if s.shape[-2:] != t.shape[-2:]:
            s = F.adaptive_avg_pool2d(s, t.shape[-2:])
        total = total + F.mse_loss(s.float(), t.detach().float())
    return total


@METHODS.register_module("hybrid_lowrank_quant")
class HybridLowRankQuant(Method):
    """Low-rank conv factorisation + FC magnitude pruning + INT8, with multi-layer TS recovery.

    Defaults [R]: the trained teacher is factorised (an SVD needs trained weights), each
    conv's rank set for half its MACs, the first conv left dense, half of the FC weights
    pruned, hints at every stage output, then Hinton KD with RepDistiller's weights.
    ``source="student"`` first trains the pair's student by the same hint + KD scheme.
    """

    label = "after W.J. Chen 2018 (thesis)"
    deploy: ClassVar[tuple[str, ...]] = ("int8",)

    # The thesis abstract (Chen 2018) states no figures: INT8 shrinks the factorised
    # model (its fp32 row) at most 1 point of top-1 [R], and the low-rank step cuts MACs
    # against the teacher it factorises.
    claims = (
        Claim("hybrid_lowrank_quant", "hybrid_lowrank_quant", "weight_bytes",
              direction="lower", deploy="int8",
              text="the INT8 model's weights are smaller than its fp32 form's"),
        Claim("hybrid_lowrank_quant", "hybrid_lowrank_quant", "artifact_bytes",
              direction="lower", deploy="int8",
              text="the INT8 program file is smaller than its fp32 form's"),
        Claim("hybrid_lowrank_quant", "hybrid_lowrank_quant", "top1", margin=-1.0,
              deploy="int8", paper_note="no figure in the thesis; 1 pp is kdbench's choice [R]",
              text="INT8 costs at most 1 point of top-1 against its fp32 form"),
        Claim("hybrid_lowrank_quant", "teacher", "macs_ratio", direction="lower",
              text="the low-rank network runs fewer MACs than the teacher"),
    )

    @dataclass(frozen=True)
    class Config:
        # [R] teacher: factorise it | student: train the pair's first
        source: Literal["teacher", "student"] = "teacher"
        rank_rule: RankRule = "macs"  # [R] energy | macs
        energy: Fraction = 0.9  # [R] rank_rule=energy: fraction of Σσ² kept per layer
        macs_ratio: Fraction = 0.5  # [R] rank_rule=macs: factorised MACs / layer MACs at most
        skip_first: bool = True  # [R] leave the input conv (3 channels in) dense
        # [R] fraction of FC weights zeroed by magnitude
        fc_sparsity: Annotated[float, Interval(ge=0, lt=1)] = 0.5
        hint_weight: float = 1.0  # weight of the summed hint MSE in the hint phase
        hint_epochs: Annotated[int, Ge(0)] = 10  # [R] hint phase (multi-layer regression)
        kd_epochs: Annotated[int | None, Ge(0)] = None  # logit-KD phase; None: the budget's epochs
        temperature: float = 4.0  # RepDistiller's KD settings
        alpha: float = 0.9  # weight of the KD term
        gamma: float = 0.1  # weight of cross-entropy
        lr: float | None = 0.01  # [R] recovery from trained weights; None: the budget's
        train_images: int | None = None  # None: the budget's whole training split

    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {"hint_epochs": 1, "kd_epochs": 1, "train_images": 1024}}

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        loader = ctx.train_loader(images=cfg.train_images)
        example = ctx.example_input(2)
        if cfg.source == "teacher":
            model = copy.deepcopy(teacher.model).requires_grad_(True)
        else:
            model = ctx.build_student()
            self.recover(ctx, model, teacher, loader, {}, "student")
        # Diagnostics only (never used for a decision): read on the test split, keys say so.
        dense_top1 = ctx.evaluate(model)["top1"]
        layers = factorise_model(model, example, rule=cfg.rank_rule, energy=cfg.energy,
                                 macs_ratio=cfg.macs_ratio, skip_first=cfg.skip_first)
        masks = prune_fc(model, cfg.fc_sparsity)
        compressed_top1 = ctx.evaluate(model)["top1"]
        adapters = self.recover(ctx, model, teacher, loader, masks, "recover")
        factorised = [r for r in layers if r.rank is not None]
        extras = {
            "source": cfg.source, "dense_top1_test": dense_top1,
            "factorised_top1_before_recovery_test": compressed_top1,
            "layers_factorised": len(factorised), "convs": len(layers),
            "conv_macs_before": sum(r.macs_before for r in layers),
            "conv_macs_after": sum(r.macs_after for r in layers),
            "ranks": [asdict(r) for r in layers], "fc_sparsity": cfg.fc_sparsity,
            "hint_adapters": sum(not isinstance(a, nn.Identity) for a in adapters),
        }
        notes = [f"low-rank: {len(factorised)}/{len(layers)} convs factorised ({cfg.rank_rule} "
                 f"rule); FC {cfg.fc_sparsity:.0%} magnitude-pruned", FC_NOTE]
        if cfg.source == "teacher":
            notes.insert(0, f"student derived from {ctx.pair.teacher} (factorised), not the "
                            f"pair's student {ctx.pair.student}")
        return Compressed(model=model.eval(), extras=extras, notes=notes)

    def recover(self, ctx: RunContext, model: nn.Module, teacher: FrozenTeacher,
                loader: BatchLoader, masks: Mapping[nn.Module, torch.Tensor],
                name: str) -> nn.ModuleList:
        """Hint phase (stage maps, adapters trained alongside), then logit KD; returns the
        adapters, which are never part of ``model``."""
        cfg = self.cfg
        adapters = make_adapters(model, teacher.model, ctx.example_input(2))
        keep_zeros = _reapply(masks) if masks else None
        lr = cfg.lr if cfg.lr is not None else ctx.recipe.lr
        if cfg.hint_epochs:
            forward, loss = hint_objective(teacher, adapters, cfg.hint_weight)
            ctx.fit(model.requires_grad_(True), loss, forward=forward, after_step=keep_zeros,
                    params=[*model.parameters(), *adapters.parameters()], loader=loader,
                    name=f"{name}_hints", epochs=cfg.hint_epochs, lr=lr)
        kd_epochs = ctx.recipe.epochs if cfg.kd_epochs is None else cfg.kd_epochs
        if kd_epochs:
            ctx.fit(model.requires_grad_(True), kd_loss(teacher, cfg), after_step=keep_zeros,
                    loader=loader, name=f"{name}_kd", epochs=kd_epochs, lr=lr)
        model.eval()
        return adapters


def _reapply(masks: Mapping[nn.Module, torch.Tensor]) -> Callable[[FitState], None]:
    """After each step: pruned FC weights back to zero (momentum would revive them)."""
    return lambda state: apply_masks(masks)


def hint_objective(teacher: FrozenTeacher, adapters: nn.ModuleList, weight: float):
    """(forward, loss) of the hint phase: the student's stage maps regress the teacher's."""

    def forward(model: nn.Module, batch: Batch):
        with capture(hint_points(model)) as seen:
            model(batch.x)
        return [s.output for s in seen]

    def loss(batch: Batch, maps: list[torch.Tensor]):
        with torch.no_grad(), capture(hint_points(teacher.model)) as t_seen:
            teacher(batch.x)
        hint = hint_loss(maps, [t.output for t in t_seen], adapters)
        return weight * hint, {"hint": hint.detach()}

    return forward, loss


def kd_loss(teacher: FrozenTeacher, cfg: HybridLowRankQuant.Config
            ) -> Callable[[Batch, torch.Tensor], Any]:
    def loss(batch: Batch, logits: torch.Tensor):
        with torch.no_grad():
            t_logits = teacher(batch.x)
        ce = F.cross_entropy(logits, batch.y)
        kd = kd_kl(logits, t_logits, cfg.temperature)
        return cfg.gamma * ce + cfg.alpha * kd, {"ce": ce.detach(), "kd": kd.detach()}

    return loss
