"""Adversarial training pieces for the shared ``fit`` loop: PGD in the forward, KD on x'.

The examples are crafted against the model being trained (in eval mode, in [0, 1] pixel
space, through the harness's attack), then the model sees them in train mode. The teacher,
if any, only ever reads the finished examples: it is never attacked and never updated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.attacks import PGDConfig, PixelSpace, pgd, seeded_generator, to_pixels
from kdbench.benchmarks.data import Batch
from kdbench.benchmarks.method import FrozenTeacher, RunContext, make_loader
from kdbench.benchmarks.teachers import TeacherCache, TeacherInfo, score_key, teacher_key
from kdbench.benchmarks.train import LossFn, evaluate, fit
from kdbench.methods.common.losses import kd_kl


class AdversarialOutput(NamedTuple):
    logits: torch.Tensor  # the model's logits on x'
    x_adv: torch.Tensor  # x', normalised like the loader's batches


class AdversarialForward:
    """A ``fit`` forward: craft x' = PGD(x) against the model, return its logits on x'."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], attack: PGDConfig,
                 generator: torch.Generator | None = None):
        self.mean, self.std, self.attack, self.generator = mean, std, attack, generator

    def __call__(self, model: nn.Module, batch: Batch) -> AdversarialOutput:
        pixel_model = PixelSpace(model, self.mean, self.std)
        x01 = to_pixels(batch.x, self.mean, self.std)
        x_adv = pixel_model.normalize(
            pgd(pixel_model, x01, batch.y, self.attack, generator=self.generator))
        return AdversarialOutput(model(x_adv), x_adv)


def adversarial_kd_loss(teacher: nn.Module | None, alpha: float, temperature: float) -> LossFn:
    """``(1 − α)·CE(f(x'), y) + α·T²·KL(σ(f_T(x')/T) ‖ σ(f(x')/T))``; plain CE when α = 0."""

    def loss(batch: Batch, out: AdversarialOutput) -> torch.Tensor:
        ce = F.cross_entropy(out.logits, batch.y)
        if teacher is None or alpha == 0:
            return ce
        with torch.no_grad():
            t_logits = teacher(out.x_adv)
        return (1 - alpha) * ce + alpha * kd_kl(out.logits, t_logits, temperature)

    return loss


# ---- an adversarially trained teacher, cached like the harness's teachers ---------------
ADVERSARIAL_TRAINING = "pgd_at"  # Madry et al. 2018: CE on PGD examples crafted against the model


def adversarial_teacher_key(ctx: RunContext, attack: PGDConfig) -> str:
    """The cache key: the standard teacher's (architecture, data, subset, the budget's
    teacher recipe, seed) plus the adversarial training settings, so the two never collide."""
    return teacher_key(ctx.pair.teacher, ctx.num_classes, ctx.data.fingerprint,
                       ctx.budget.train_subset, ctx.budget.teacher_recipe, ctx.teacher_seed,
                       adversarial={"training": ADVERSARIAL_TRAINING,
                                    "attack": dataclasses.asdict(attack)})


def harness_cache_dir(ctx: RunContext) -> Path:
    """The harness's cache directory, where its teacher cache lives; a context built
    without a harness (a unit test) keeps the teacher in its own workdir instead."""
    return Path(ctx.cache_dir) if ctx.cache_dir is not None else Path(ctx.workdir)


def adversarial_teacher(ctx: RunContext, attack: PGDConfig) -> tuple[FrozenTeacher, TeacherInfo]:
    """The pair's teacher architecture adversarially trained (PGD-AT, CE on x' = PGD(x)
    against the model) with the budget's teacher recipe on the run's training split, then
    frozen; trained once and cached (``<cache dir>/teachers``) under its own key.

    Training or loading leaves the global RNG as it found it, so what the method does
    next is the same whether the teacher came from the cache or not.
    """
    arch, recipe = ctx.pair.teacher, ctx.budget.teacher_recipe
    cache = TeacherCache(harness_cache_dir(ctx))  # no user checkpoint: those are standard

    def build() -> nn.Module:
        torch.manual_seed(ctx.teacher_seed)  # seeded initialisation, as the harness's teachers
        return ctx.build_model(arch)

    def train(model: nn.Module) -> None:
        ctx.log.info("adversarially training teacher %s (seed %d, PGD-%d, eps %.4g); it is "
                     "cached for later runs", arch, ctx.teacher_seed, attack.steps, attack.eps)
        loader = make_loader(ctx.data, ctx.train_split, train=True, batch_size=recipe.batch_size,
                             device=ctx.device, seed=ctx.teacher_seed,
                             channels_last=recipe.channels_last_on(ctx.device))
        forward = AdversarialForward(ctx.data.mean, ctx.data.std, attack,
                                     seeded_generator(ctx.teacher_seed, ctx.device))
        fit(model, adversarial_kd_loss(None, 0.0, 1.0), loader, recipe, device=ctx.device,
            forward=forward, desc=f"adversarial teacher {arch} seed{ctx.teacher_seed}",
            progress=ctx.progress)

    def score(model: nn.Module) -> dict[str, float]:
        loader = make_loader(ctx.data, ctx.test_split, train=False, seed=ctx.seed,
                             batch_size=recipe.eval_batch_size, device=ctx.device,
                             channels_last=recipe.channels_last_on(ctx.device))
        return evaluate(model, loader, ctx.device)

    devices = ([ctx.device.index if ctx.device.index is not None else torch.cuda.current_device()]
               if ctx.device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        model, info = cache.get(arch, adversarial_teacher_key(ctx, attack), build, train, score,
                                score_key(ctx.data.fingerprint, ctx.test_split.labels,
                                          recipe.eval_batch_size, ctx.device))
    return FrozenTeacher(model).to(ctx.device), info
