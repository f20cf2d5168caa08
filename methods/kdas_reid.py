"""KDAS-ReID (Lei, Yang, Jiang, Chen, Algorithms 14(5):137, 2021): KD-guided architecture search.

1. **Search** (first-order DARTS) on a cell supernet (``reid.nas``) whose candidate ops include
   Auto-ReID's part-aware module. Every identity's training images are dealt into halves A/B
   (same label space on both); network weights take SGD steps on A, architecture weights Adam
   steps on B. Both use the KD loss from the frozen teacher (cross-entropy replaced, λ = 1) at
   a dynamic temperature that starts at T0 and reaches exactly 1 in the last epoch.
2. **Discretise**: per intermediate node the 2 inputs with the strongest non-``none`` op, and
   that op (DARTS).
3. **Retrain** the derived network from scratch with KD and the same temperature schedule
   over the retraining epochs (the suite's recipe, like every other student).

The derived, retrained network is what is returned and measured (never the supernet); its
genotype and macro structure are in the record's extras and ``reid.nas.build_derived``
rebuilds it. The paper's exact temperature formula is not public: linear decay by default,
cosine as an option (``temperature_schedule``). The search works on any image suite (the
teacher's logits are the only signal); on a classification suite it is a KD-guided DARTS
(DARTS: Liu et al., ICLR 2019).

[R] marks kdbench's own choice where the paper gives none; see CONTRIBUTING.md, "Where a
number comes from: [S], [P], [R]".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Positive, Weight
from kdbench.benchmarks.data import Batch, BatchLoader, ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.method import Compressed, FrozenTeacher, Method, RunContext
from kdbench.benchmarks.registry import METHODS
from kdbench.benchmarks.train import FitState, LossFn
from kdbench.methods.common import epoch_temperature, kd_kl
from kdbench.methods.common.temperature import InitialTemperature, Schedule
from kdbench.reid.nas import (
    SEARCH_SPACE,
    DerivedNetwork,
    Genotype,
    MacroSpec,
    Supernet,
    auto_stem_downsample,
    check_ops,
)

SMOKE_OPS = ("none", "skip_connect", "avg_pool_3x3", "sep_conv_3x3", "part_aware")


def kdas_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float, kd_weight: float) -> torch.Tensor:
    """λ·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1 − λ)·CE(z_s, y), λ = ``kd_weight``."""
    loss = kd_weight * kd_kl(student_logits, teacher_logits, temperature)
    if kd_weight < 1:
        loss = loss + (1 - kd_weight) * F.cross_entropy(student_logits, labels)
    return loss


def split_identities(split: ImageSplit, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Every identity's images, shuffled by ``seed``, dealt alternately into halves A and B."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(split), generator=g)
    labels = split.labels[perm]
    by_label = torch.sort(labels, stable=True).indices
    first = torch.searchsorted(labels[by_label], labels[by_label])
    rank = torch.empty_like(perm)
    rank[by_label] = torch.arange(len(split)) - first  # position within its identity
    half_a = torch.sort(perm[rank % 2 == 0]).values
    half_b = torch.sort(perm[rank % 2 == 1]).values
    return split.take(half_a), split.take(half_b)


class Temperature:
    """The KD temperature of one training phase, set from the schedule before every epoch."""

    def __init__(self, t0: float, shape: Schedule):
        self.t0, self.shape = t0, shape
        self.value = t0
        self.by_epoch: dict[int, float] = {}

    def before_epoch(self, state: FitState) -> None:
        self.value = epoch_temperature(state.epoch, state.epochs, self.t0, self.shape)
        self.by_epoch[state.epoch] = self.value


def kd_objective(teacher: FrozenTeacher, temperature: Temperature, kd_weight: float) -> LossFn:
    """The loss ``fit`` calls: KD from the teacher at the phase's current temperature."""

    def loss(batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(batch.x)
        return kdas_loss(logits, t_logits, batch.y, temperature.value, kd_weight)

    return loss


def endless(loader: BatchLoader) -> Iterator[Batch]:
    """Batches of successive epochs without end (each pass reshuffles)."""
    while True:
        yield from loader


@METHODS.register_module("kdas_reid")
class KDASReID(Method):
    """KD-guided DARTS search with a dynamic temperature, then KD retraining of the result."""

    label = "after Lei et al. 2021"

    # Lei et al., Algorithms 14(5):137, 2021 (abstract and article page): the searched model
    # has < 50 % of the ResNet-50 teacher's parameters and beats it; Market-1501 rank-1 94.6 %.
    claims = (
        Claim("kdas_reid", "teacher", "params_ratio", direction="lower", margin=0.5,
              paper_note="abstract: < 50 % of the teacher's parameters",
              text="the searched network has under half the teacher's parameters"),
        Claim("kdas_reid", "teacher", "rank1", paper=94.6,
              paper_note="value, Market-1501 rank-1 (Auto-ReID search space)",
              text="the searched network beats the teacher's rank-1"),
    )

    @dataclass(frozen=True)
    class Config:
        t0: InitialTemperature = 4.0  # initial temperature of both phases; decays to exactly 1
        temperature_schedule: Schedule = "linear"  # per epoch
        # search: DARTS first order (Liu et al. 2019 defaults)
        search_epochs: Positive = 50
        search_batch_size: Positive = 64
        search_images: int | None = None  # class-balanced subset searched on (None: all)
        search_channels: Positive = 16
        search_layers: Positive = 8
        ops: tuple[str, ...] = SEARCH_SPACE
        steps: Positive = 4  # intermediate nodes per cell
        w_lr: float = 0.025  # SGD, momentum 0.9, cosine
        w_weight_decay: float = 3e-4
        arch_lr: float = 3e-4  # Adam
        arch_betas: tuple[float, float] = (0.5, 0.999)
        arch_weight_decay: float = 1e-3
        search_kd_weight: Weight = 1.0  # λ while searching: the KD loss replaces CE
        # derived network and retraining
        channels: Positive = 36
        layers: Positive = 20
        # Stride-2 stem convs (0: one stride-1 conv). None: from the input height
        # (reid.nas.auto_stem_downsample): ReID's 256x128 (and 128x64) get 2, so cells see
        # 64x32; 64x32 smoke inputs get 1 (32x16); CIFAR-size 32x32 inputs get DARTS's CIFAR
        # stem, stride 1, so cells see 32x32 (not 8x8). An int overrides it.
        stem_downsample: Annotated[int | None, Ge(0)] = None
        kd_weight: Weight = 1.0  # λ while retraining
        retrain_epochs: int | None = None  # None: the suite's recipe, like every student
        # None: the suite's. DARTS retrains its cells at 0.025 (Liu et al., ICLR 2019, §A.2);
        # a CIFAR ResNet recipe's 0.1 sends the derived network's loss to NaN in epoch 1.
        retrain_lr: Annotated[float | None, Gt(0)] = None

        def __post_init__(self) -> None:
            check_ops(self.ops, "kdas_reid ops")

    # CPU smoke [R]: 2-cell supernet, 8 channels, 5 ops, 2 epochs.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {"smoke": dict(
        search_epochs=2, search_batch_size=32, search_images=128, search_channels=8,
        search_layers=2, ops=SMOKE_OPS, channels=8, layers=2,
        retrain_epochs=2,  # the derived net runs at full resolution: keeps smoke in minutes
    )}

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        genotype, search = self.search(ctx, teacher)
        height, width = ctx.data.input_shape[-2:]
        downsample, rule = self.stem(height)
        spec = MacroSpec(cfg.channels, cfg.layers, downsample)
        net = DerivedNetwork(spec, genotype, ctx.num_classes).to(ctx.device)
        temperature = Temperature(cfg.t0, cfg.temperature_schedule)
        changes: dict[str, Any] = {"epochs": cfg.retrain_epochs} if cfg.retrain_epochs else {}
        if cfg.retrain_lr is not None:
            changes["lr"] = cfg.retrain_lr
        ctx.fit(net, kd_objective(teacher, temperature, cfg.kd_weight),
                before_epoch=temperature.before_epoch, name="retrain", **changes)
        return Compressed(
            model=net,
            extras={"genotype": genotype.to_dict(), "architecture": net.architecture(),
                    "stem": {"downsample": downsample, "rule": rule,
                             "cell_input": [-(-height // 2 ** downsample),
                                            -(-width // 2 ** downsample)]},
                    "search": search, "retrain_temperatures": _listed(temperature)},
            notes=["student searched (the pair's student architecture is not used)"],
        )

    def stem(self, height: int) -> tuple[int, str]:
        """(stride-2 stem convs, the rule that chose them) for inputs ``height`` rows high."""
        if self.cfg.stem_downsample is not None:
            return self.cfg.stem_downsample, "configured"
        return auto_stem_downsample(height), f"auto from input height {height}"

    def search(self, ctx: RunContext,
               teacher: FrozenTeacher) -> tuple[Genotype, dict[str, Any]]:
        """First-order DARTS with KD on both levels; returns the genotype and a summary."""
        cfg = self.cfg
        images = ctx.train_split.subset(cfg.search_images, seed=ctx.seed)
        half_a, half_b = split_identities(images, seed=ctx.seed)
        batch_size = min(cfg.search_batch_size, len(half_a), len(half_b))
        if batch_size < 1:
            raise ConfigError(f"kdas_reid needs at least 2 training images to search; the "
                              f"search set has {len(images)}")
        spec = MacroSpec(cfg.search_channels, cfg.search_layers,
                         self.stem(ctx.data.input_shape[-2])[0])
        supernet = Supernet(spec, ctx.num_classes, cfg.ops, cfg.steps).to(ctx.device)
        temperature = Temperature(cfg.t0, cfg.temperature_schedule)
        arch_step = self._arch_stepper(ctx, supernet, teacher, temperature, half_b, batch_size)
        recipe = ctx.recipe.replace(
            epochs=cfg.search_epochs, batch_size=batch_size, lr=cfg.w_lr, momentum=0.9,
            nesterov=False, weight_decay=cfg.w_weight_decay, schedule="cosine", warmup_epochs=0)
        ctx.fit(supernet, kd_objective(teacher, temperature, cfg.search_kd_weight),
                recipe=recipe, params=supernet.weight_parameters(), after_step=arch_step,
                before_epoch=temperature.before_epoch,
                loader=ctx.loader(half_a, train=True, batch_size=batch_size), name="search")
        normal, reduce = (w.detach().cpu() for w in supernet.arch_weights())
        summary = {"images": len(images), "weight_images": len(half_a),
                   "arch_images": len(half_b), "ops": list(cfg.ops),
                   "arch_weights": {"normal": normal.tolist(), "reduce": reduce.tolist()},
                   "temperatures": _listed(temperature)}
        return supernet.genotype(), summary

    def _arch_stepper(self, ctx: RunContext, supernet: Supernet, teacher: FrozenTeacher,
                      temperature: Temperature, half_b: ImageSplit,
                      batch_size: int) -> Callable[[FitState], None]:
        """After each weight step: one Adam step of the architecture weights on half B."""
        cfg = self.cfg
        optimizer = torch.optim.Adam(supernet.arch_parameters(), lr=cfg.arch_lr,
                                     betas=cfg.arch_betas, weight_decay=cfg.arch_weight_decay)
        batches = endless(ctx.loader(half_b, train=True, batch_size=batch_size, seed_offset=1))

        def step(state: FitState) -> None:
            batch = next(batches)
            with torch.no_grad():
                t_logits = teacher(batch.x)
            loss = kdas_loss(supernet(batch.x), t_logits, batch.y, temperature.value,
                             cfg.search_kd_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step


def _listed(temperature: Temperature) -> list[float]:
    return [temperature.by_epoch[e] for e in sorted(temperature.by_epoch)]
