"""Combine-Net (Wang, Li & Zhang 2021): Adaptive-BN scoring, Kneedle pruning rate, KD retrain.

Wang, Li & Zhang, Information 12(7):264, 2021 (its abstract is the source of the claims).
The trained teacher's filters are ranked by L1 norm. For each rate of an ascending grid a
candidate sub-net is cut physically, its BatchNorm statistics are re-estimated on training
batches (Adaptive BN of EagleEye, Li et al. 2020; never the test split) and it is scored on
images held out of the training split. The knee of the concave, decreasing accuracy-vs-rate curve
(Kneedle, ``kneed``) is the pruning rate; the sub-net cut there is retrained with KD from
the unpruned teacher.

The curve ends at its first candidate at chance (held-out top-1 within three binomial
standard deviations of 1/classes): the dead candidates beyond it form a flat tail that says
nothing of the knee but makes the curve look convex. A Combine-Net row is always
compressed: rate 0 is never chosen. Without a knee (the curve is
convex or flat, e.g. an under-trained teacher) the rate is the largest one > 0 whose
accuracy stays within ``fallback_tolerance`` points of the least pruned candidate's
(kdbench's fallback [R], not the paper's), and when no rate > 0 does, the grid rate nearest
``fallback_rate``. ``extras["rate_selection"]`` records which rule chose each rate.

``rate_mode="global"`` applies one rate to every channel group. ``"per_block"`` sweeps each
channel group alone and takes each group's own knee: a uniform rate r scales params and
MACs alike by ≈ (1 − r)², so only per-block rates can give the paper's VGG-16 split (−95 %
params, −83 % FLOPs). A block here is a channel group: one conv of a VGG, the inner channel
of a residual block, or a ResNet stage's summed channels.

Tags beside defaults and claims: [S] a number stated in the paper's abstract, [R] kdbench's
own choice where the paper gives none; see CONTRIBUTING.md, "Where a number comes from:
[S], [P], [R]".
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from annotated_types import Interval, MinLen
from kneed import KneeLocator
from torch import nn

from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import Ascending
from kdbench.benchmarks.data import ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.method import Compressed, Method, RunContext
from kdbench.benchmarks.registry import METHODS
from kdbench.benchmarks.train import evaluate
from kdbench.methods.common.bn import recalibrate_bn
from kdbench.methods.common.losses import kd_kl
from kdbench.methods.common.pruning import (
    ChannelGroup,
    analytic_macs,
    channel_groups,
    classifier_of,
    keep_channels,
    kept_channel_count,
    l1_kept_channels,
)

RateMode = Literal["global", "per_block"]
PLOT_NAME = "combine_net_curve.png"


def kneedle(x: Sequence[float], y: Sequence[float], *, curve: str = "concave",
            direction: str = "decreasing", sensitivity: float = 1.0) -> float | None:
    """The knee of ``y(x)`` by Kneedle (``kneed``, offline, interp1d), or None if none.

    ``x`` must be ascending. kneed's own warnings (no knee, a flat curve's division by
    zero) are silenced: None is the answer then.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        knee = KneeLocator(list(x), list(y), S=sensitivity, curve=curve, direction=direction,
                           interp_method="interp1d", online=False).knee
    return None if knee is None else float(knee)


@dataclass(frozen=True)
class Choice:
    """The rate picked from one accuracy-vs-rate curve, and how."""

    rate: float
    by: str  # "kneedle" | "tolerance" | "target" (the last two are fallbacks)
    reason: str = ""  # why the fallback was needed


def lies_above_chord(x: Sequence[float], y: Sequence[float]) -> bool:
    """Whether the curve lies, on average, on or above the chord joining its end points.

    A concave curve does; one that falls at once and then flattens (convex) does not, and
    a concave knee found on it would be an artefact (the last grid point).
    """
    x0, x1, y0, y1 = x[0], x[-1], y[0], y[-1]
    chord = [y0 + (y1 - y0) * (xi - x0) / (x1 - x0) for xi in x]
    return sum(yi - ci for yi, ci in zip(y, chord, strict=True)) >= 0


def at_chance_from(accuracies: Sequence[float], chance: float | None) -> int | None:
    """Index of the first candidate at or below ``chance`` (None: none is, or no floor)."""
    if chance is None:
        return None
    return next((i for i, a in enumerate(accuracies) if a <= chance), None)


def choose_rate(rates: Sequence[float], accuracies: Sequence[float], sensitivity: float,
                tolerance: float, fallback_rate: float = 0.3,
                chance: float | None = None) -> Choice:
    """The pruning rate of one accuracy-vs-rate curve; never 0 (the row must be compressed).

    With ``chance`` (the held-out accuracy a dead network reaches), the curve ends at its
    first candidate at chance: every larger rate scores chance too and says nothing of the
    knee, yet its flat tail would make the whole curve look convex (below its chord).
    1. ``kneedle``: Kneedle's knee of the concave, decreasing curve (if > 0);
    2. ``tolerance`` (no knee, or the curve is not concave): the largest rate > 0 whose
       accuracy is within ``tolerance`` points of the first (least pruned) candidate's;
    3. ``target`` (no rate > 0 is, e.g. a convex curve that falls at once): the grid rate
       > 0 nearest ``fallback_rate`` (ties: the larger).
    """
    end = at_chance_from(accuracies, chance)
    span = ""
    if end is not None and 2 <= end < len(rates) - 1:  # Kneedle needs >= 3 points
        rates, accuracies = rates[:end + 1], accuracies[:end + 1]
        span = f"curve up to rate {rates[-1]:g}, its first candidate at chance"
    if not lies_above_chord(rates, accuracies):
        reason = "curve not concave (below its chord)"
    else:
        knee = kneedle(rates, accuracies, sensitivity=sensitivity)
        if knee is not None and knee > 0:
            return Choice(knee, "kneedle", span)
        reason = "Kneedle found no knee" if knee is None else "Kneedle's knee is rate 0"
    reason = "; ".join(filter(None, (span, reason)))
    floor = accuracies[0] - tolerance
    within = [r for r, a in zip(rates, accuracies, strict=True) if r > 0 and a >= floor]
    if within:
        return Choice(max(within), "tolerance",
                      f"{reason}; largest rate within {tolerance:g} points of the first")
    nearest = min((r for r in rates if r > 0), key=lambda r: (abs(r - fallback_rate), -r))
    return Choice(nearest, "target", f"{reason}; no rate > 0 within {tolerance:g} points of "
                                     f"the first: grid rate nearest fallback_rate "
                                     f"{fallback_rate:g}")


def holdout(split: ImageSplit, n: int, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """(rest, held): ``n`` random images held out of ``split`` and the others, disjoint."""
    if not 0 < n < len(split):
        raise ConfigError(f"combine_net.val_images must be in [1, {len(split) - 1}] for a "
                          f"training split of {len(split)} images, got {n}")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    held, rest = order[:n].sort().values, order[n:].sort().values
    return (ImageSplit(split.images[rest], split.labels[rest]),
            ImageSplit(split.images[held], split.labels[held]))


@METHODS.register_module("combine_net")
class CombineNet(Method):
    """L1 filter ranking, Adaptive-BN candidate scoring, Kneedle rate, KD retraining."""

    label = "after Wang et al. 2021"

    # Abstract [S] (Wang, Li & Zhang, Information 12(7):264, 2021): ResNet-50 CIFAR-100
    # −71 % params, −41 % FLOPs (VGG-16 CIFAR-10 −95 % / −83 %) "without precision loss",
    # read here as a top-1 drop under 1 point (the method's own fallback_tolerance).
    claims = (
        Claim("combine_net", "teacher", "params_ratio", direction="lower", paper=0.29,
              paper_note="value, ResNet-50 CIFAR-100: −71 % params",
              text="the pruned network has fewer parameters than the teacher"),
        Claim("combine_net", "teacher", "macs_ratio", direction="lower", paper=0.59,
              paper_note="value, ResNet-50 CIFAR-100: −41 % FLOPs",
              text="the pruned network runs fewer MACs than the teacher"),
        Claim("combine_net", "teacher", "top1", margin=-1.0, paper=0.0,
              paper_note="Δ, 'without precision loss' (ResNet-50 CIFAR-100, VGG-16 CIFAR-10)",
              text="top-1 within 1 point of the teacher"),
    )

    @dataclass(frozen=True)
    class Config:
        # 0, 0.05, ..., 0.95 [R]; Kneedle needs >= 3 strictly increasing x
        rates: Annotated[tuple[float, ...], Interval(ge=0, lt=1), MinLen(3),
                         Ascending(strict=True)] = tuple(i / 20 for i in range(20))
        rate_mode: RateMode = "global"
        calib_batches: int = 100  # Adaptive BN: EagleEye's ~100 training batches
        calib_batch_size: int = 64
        val_images: int = 5000  # held out of the training split to score candidates [R]
        sensitivity: float = 1.0  # Kneedle's S
        # Without a knee [R]: the largest rate > 0 whose held-out accuracy is within
        # fallback_tolerance points of the least pruned candidate's; if no rate > 0
        # is, the grid rate nearest fallback_rate. Rate 0 (the unpruned teacher) is never
        # chosen. 0.3 [R]: a uniform rate r scales MACs by ≈ (1 − r)², so ≈ −50 % MACs,
        # EagleEye's ResNet-50 −50 % FLOPs target, between the paper's ResNet-50 CIFAR-100
        # figures read as uniform rates (−41 % FLOPs: r ≈ 0.23; −71 % params: r ≈ 0.46).
        fallback_tolerance: float = 1.0  # points of accuracy the no-knee fallback may lose
        fallback_rate: Annotated[float, Interval(gt=0, lt=1)] = 0.3
        temperature: float = 4.0  # KD retraining [R]: (1 − α)·CE + α·T²·KL
        alpha: float = 0.9
        epochs: int = 120  # retraining [R: EagleEye's fine-tune, 120 epochs, lr 0.01]
        lr: float = 0.01
        schedule: str = "cosine"
        train_images: int | None = None  # a fixed subset for retraining; None: the whole split

    # Smoke [R]: 10-point grid, 10 calibration batches of 64, 256 held-out images, one KD
    # epoch on 512 images.
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {"smoke": {
        "rates": tuple(i / 10 for i in range(10)), "calib_batches": 10, "val_images": 256,
        "epochs": 1, "train_images": 512,
    }}

    def run(self, ctx: RunContext) -> Compressed:
        cfg = self.cfg
        teacher = ctx.teacher()
        base = copy.deepcopy(teacher.model).requires_grad_(True)
        example = ctx.example_input()
        groups = channel_groups(base, example, exclude=[classifier_of(base)])
        scorer = CandidateScorer(ctx, base, example, cfg)
        if cfg.rate_mode == "global":
            curves = {"all": scorer.curve(groups, groups)}
        else:
            curves = {g.name: scorer.curve(groups, [g]) for g in groups}
        chance = scorer.chance_level(ctx.num_classes)
        choices = {name: choose_rate(cfg.rates, acc, cfg.sensitivity, cfg.fallback_tolerance,
                                     cfg.fallback_rate, chance)
                   for name, acc in curves.items()}
        plan = {g: choices["all" if cfg.rate_mode == "global" else g.name].rate for g in groups}
        kept = {g: kept_channel_count(g.channels, r) for g, r in plan.items()}
        macs_before, macs_after = analytic_macs(base, example, {}), \
            analytic_macs(base, example, kept)
        student = scorer.cut(plan)
        self.retrain(ctx, student, teacher)
        extras = {
            "rate_mode": cfg.rate_mode, "rates": list(cfg.rates),
            "curves": {name: [[r, a] for r, a in zip(cfg.rates, acc, strict=True)]
                       for name, acc in curves.items()},
            "chosen_rates": {name: c.rate for name, c in choices.items()},
            "rate_selection": {name: c.by + (f": {c.reason}" if c.reason else "")
                               for name, c in choices.items()},
            "knee_fallback": any(c.by != "kneedle" for c in choices.values()),
            "kept_channels": {g.name: [kept[g], g.channels] for g in groups},
            "analytic_macs_ratio": macs_after / macs_before,
            "candidate_scoring": scorer.description(),
            "base_model": "teacher",
            "curve_plot": plot_curves(ctx.artifacts_dir, cfg.rates, curves, choices),
        }
        notes = ["knee not found: fallback rate used (extras.rate_selection)"] \
            if extras["knee_fallback"] else []
        return Compressed(model=student.eval(), extras=extras, notes=notes)

    def retrain(self, ctx: RunContext, student: nn.Module, teacher: nn.Module) -> None:
        """KD from the unpruned teacher: (1 − α)·CE + α·T²·KL."""
        cfg = self.cfg

        def loss(batch, logits: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                t_logits = teacher(batch.x)
            return (1 - cfg.alpha) * F.cross_entropy(logits, batch.y) + cfg.alpha * kd_kl(
                logits, t_logits, cfg.temperature)

        loader = ctx.loader(ctx.train_split.subset(cfg.train_images, seed=0), train=True)
        ctx.fit(student, loss, loader=loader, name="retrain", epochs=cfg.epochs, lr=cfg.lr,
                schedule=cfg.schedule, warmup_epochs=0)


class CandidateScorer:
    """Cuts candidate sub-nets of ``base`` and scores them with Adaptive BN.

    Calibration batches come from the training split minus the held-out images, which are
    the only images a candidate is scored on; the test split is never read.
    """

    def __init__(self, ctx: RunContext, base: nn.Module, example: torch.Tensor, cfg: Any):
        self.base, self.example, self.cfg, self.device = base, example, cfg, ctx.device
        self.names = {id(m): n for n, m in base.named_modules()}
        calib_split, held_split = holdout(ctx.train_split, cfg.val_images, seed=ctx.seed)
        self.calibration = ctx.loader(calib_split, train=True, batch_size=cfg.calib_batch_size)
        self.held_out = ctx.loader(held_split, train=False)
        self.n_held_out = len(held_split)

    def cut(self, rates: Mapping[ChannelGroup, float]) -> nn.Module:
        """A physically pruned copy of ``base``: each group keeps its top-L1 channels."""
        candidate = copy.deepcopy(self.base)
        modules = dict(candidate.named_modules())
        keep = {modules[self.names[id(g.layers[0])]]: l1_kept_channels(g, r)
                for g, r in rates.items() if r > 0}
        return keep_channels(candidate, self.example, keep)

    def score(self, candidate: nn.Module) -> float:
        """Top-1 on the held-out images after recalibrating BN on training batches."""
        self.calibration.set_epoch(0)  # the same calibration batches for every candidate
        recalibrate_bn(candidate, self.calibration, max_batches=self.cfg.calib_batches)
        return evaluate(candidate, self.held_out, self.device)["top1"]

    def curve(self, groups: Sequence[ChannelGroup],
              pruned: Sequence[ChannelGroup]) -> list[float]:
        """Accuracy at each grid rate with the ``pruned`` groups cut at that rate."""
        return [self.score(self.cut({g: rate for g in pruned})) for rate in self.cfg.rates]

    def chance_level(self, num_classes: int) -> float:
        """Held-out top-1 (percent) a candidate at chance stays under: 1/classes plus
        three binomial standard deviations over the held-out images."""
        p = 1 / num_classes
        return 100 * (p + 3 * math.sqrt(p * (1 - p) / self.n_held_out))

    def description(self) -> dict[str, Any]:
        return {"adaptive_bn": True, "calibration_split": "train (held-out images excluded)",
                "calib_batches": min(self.cfg.calib_batches, len(self.calibration)),
                "calib_batch_size": self.cfg.calib_batch_size,
                "held_out_images": self.n_held_out, "bn_momentum": "cumulative"}


def plot_curves(folder: Path | None, rates: Sequence[float], curves: Mapping[str, list[float]],
                choices: Mapping[str, Choice]) -> str | None:
    """Accuracy-vs-rate curves with the chosen rates marked, as a PNG in ``folder``.

    Drawn with matplotlib's object API on the Agg canvas (no display, no global backend
    change); returns the path, or None without a folder or without matplotlib.
    """
    if folder is None:
        return None
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, acc in curves.items():
        chosen = choices[name]
        line, = ax.plot(rates, acc, marker="o", markersize=3,
                        label=f"{name}: r={chosen.rate:g} ({chosen.by})")
        ax.axvline(chosen.rate, color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set(xlabel="pruning rate", ylabel="held-out top-1 after Adaptive BN (%)",
           title="Combine-Net: accuracy vs pruning rate (dashed: chosen rate)")
    if len(curves) <= 12:
        ax.legend(fontsize="small")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PLOT_NAME
    fig.savefig(path, dpi=120)
    return str(path)
