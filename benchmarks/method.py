"""The method contract: a ``RunContext`` goes in, a ``Compressed`` result comes out.

A method trains and/or compresses; the harness evaluates and measures what it returns,
so every number on the leaderboard is produced the same way for every method.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from kdbench.benchmarks import distributed
from kdbench.benchmarks.claims import Claim
from kdbench.benchmarks.config import (
    Budget,
    Pair,
    SuiteConfig,
    TrainRecipe,
    check_fields,
    from_mapping,
)
from kdbench.benchmarks.data import BatchLoader, ImageDataset, ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.train import FitResult, FitState, ForwardFn, LossFn, evaluate, fit


@dataclass
class Compressed:
    """What a method returns.

    ``model`` is the deployable network: physically smaller where the method prunes,
    masks folded into weights, no ``weight_orig``/hooks left. ``extras`` holds metrics
    only the method knows (chosen pruning rate, peer accuracies, ...), never its own size
    or speed. ``controls`` are extra rows on the same structure that show whether the
    method's idea helped (e.g. pruned + plain fine-tune); each is measured like the main one.
    ``notes`` are labels shown on the leaderboard (e.g. "unstructured: no dense speed-up").
    """

    model: nn.Module
    extras: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, Compressed] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NoConfig:
    """For methods without hyper-parameters."""


class Method(abc.ABC):
    """Base class of every method plugin.

    Subclasses set ``Config`` (a dataclass whose defaults are the paper's protocol),
    optionally ``budget_defaults`` (overrides per budget, e.g. for ``smoke``), and
    implement ``run``. ``reference`` names the leaderboard row the method is compared
    against (``teacher`` for compression, ``scratch`` for online KD without a teacher).
    """

    Config: ClassVar[type] = NoConfig
    budget_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    reference: ClassVar[str] = "teacher"
    label: ClassVar[str] = ""  # shown on the board, e.g. "after Gao et al. 2021"
    # Deployments the method's result is always measured in besides fp32 (e.g. ("int8",) for a
    # method whose product is the quantized model); the harness quantizes, never the method.
    deploy: ClassVar[tuple[str, ...]] = ()
    claims: ClassVar[tuple[Claim, ...]] = ()  # the paper's claims (benchmarks/claims.py)
    # Evaluators the method's claims are judged on, run on its rows besides the suite's (e.g.
    # ("robust",) for a robustness claim), so one `kdbench run` of a suite measures every claim.
    evaluators: ClassVar[tuple[str, ...]] = ()

    name: str = ""  # the registered name, set when the harness builds it

    def __init__(self, cfg: Any = None):
        if cfg is not None:  # built in code rather than by make_config: check it the same way
            check_fields(cfg, f"config of method {type(self).__name__!r}")
        self.cfg = cfg if cfg is not None else self.Config()

    @classmethod
    def make_config(cls, budget: str, *overrides: dict[str, Any] | None, name: str = "") -> Any:
        """Defaults <- budget defaults <- each override in turn; unknown keys are errors."""
        merged: dict[str, Any] = dict(cls.budget_defaults.get(budget, {}))
        for override in overrides:
            merged.update(override or {})
        where = f"config of method {name or cls.__name__!r}"
        return from_mapping(cls.Config, merged, where)

    def supports(self, pair: Pair) -> str | None:
        """None when the pair is supported, else the reason it is skipped."""
        return None

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> Compressed:
        """Train/compress and return the deployable model."""


# ---- structural checks in ``Method.supports`` --------------------------------------------
# The class count and the input size do not change which layers a zoo model has (its
# classifier's width aside), so ``supports`` builds and traces the model with these, unless
# the model says otherwise.
PROBE_CLASSES = 10
DEFAULT_INPUT_SIZE = 32  # the zoo's CIFAR size: what a model without ``input_size`` takes


def probe_model(arch: str) -> nn.Module:
    """``arch`` freshly built on the CPU in eval mode, for a structural check in
    ``Method.supports`` (which modules it has, whether it has ``stages()``, how it traces)."""
    return build_model(arch, num_classes=PROBE_CLASSES).eval()


def probe_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input that ``model`` accepts: as many channels as its first conv takes, and
    the size it declares (``input_size``: an int or (H, W)), else ``DEFAULT_INPUT_SIZE``."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    size = getattr(model, "input_size", DEFAULT_INPUT_SIZE)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return torch.randn(batch, channels, height, width)


class FrozenTeacher(nn.Module):
    """A teacher that stays in eval mode with no gradients, whatever its parent does."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:  # BN statistics must never move
        return super().train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


@dataclass
class RunContext:
    """Everything a method may use; built by the harness for one (method, pair, seed)."""

    suite: SuiteConfig
    budget: Budget
    pair: Pair
    seed: int
    device: torch.device
    data: ImageDataset
    workdir: Path
    log: logging.Logger
    teacher_provider: Callable[[], nn.Module]
    train_split: ImageSplit
    test_split: ImageSplit
    progress: bool | None = None
    # Where a method may keep files next to the results (plots, curves); unlike ``workdir``
    # it survives the run. None when no harness gave one (then a method skips such files).
    artifacts_dir: Path | None = None
    # The harness's cache directory (teachers live in its ``teachers/``), for a method that
    # caches a teacher of its own kind (e.g. an adversarially trained one). None: no harness.
    cache_dir: Path | None = None

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def recipe(self) -> TrainRecipe:
        return self.budget.train

    @property
    def teacher_seed(self) -> int:
        """The seed the pair's teacher was trained with (shared across seeds or not)."""
        return self.budget.teacher_seed_for(self.seed)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, *self.data.input_shape, device=self.device)

    def build_model(self, arch: str) -> nn.Module:
        """A freshly initialised zoo model (seeded by the harness before ``run``)."""
        return build_model(arch, num_classes=self.num_classes).to(self.device)

    def build_student(self) -> nn.Module:
        return self.build_model(self.pair.student)

    def teacher(self) -> FrozenTeacher:
        """The trained teacher (from the cache), frozen: eval mode, no gradients.

        Each call returns an independent copy, so a method cannot alter the teacher
        that other methods and the measurement see.
        """
        return FrozenTeacher(copy.deepcopy(self.teacher_provider())).to(self.device)

    def loader(self, split: ImageSplit, *, train: bool, batch_size: int | None = None,
               seed_offset: int = 0) -> BatchLoader:
        size = batch_size or (self.recipe.batch_size if train else self.recipe.eval_batch_size)
        return make_loader(self.data, split, train=train, batch_size=size, device=self.device,
                           seed=self.seed + seed_offset,
                           channels_last=self.recipe.channels_last_on(self.device))

    def train_loader(self, batch_size: int | None = None,
                     images: int | None = None) -> BatchLoader:
        """Training batches; ``images`` limits them to a fixed class-balanced subset of the
        train split (e.g. a cheaper phase of a method on the smoke budget)."""
        split = self.train_split.subset(images, seed=0) if images else self.train_split
        return self.loader(split, train=True, batch_size=batch_size)

    def test_loader(self) -> BatchLoader:
        return self.loader(self.test_split, train=False)

    def fit(
        self,
        model: nn.Module,
        loss: LossFn,
        *,
        recipe: TrainRecipe | None = None,
        params: Iterable[Any] | None = None,
        forward: ForwardFn | None = None,
        after_step: Callable[[FitState], None] | None = None,
        after_epoch: Callable[[FitState], None] | None = None,
        before_epoch: Callable[[FitState], None] | None = None,
        loader: BatchLoader | None = None,
        name: str = "fit",
        **recipe_changes: Any,
    ) -> FitResult:
        """Run the shared training loop with a method-supplied loss.

        ``recipe_changes`` adjust the budget's recipe for this call (e.g. ``epochs=5``);
        ``name`` identifies the call's checkpoint, so each distinct training phase of a
        method must use its own name.
        """
        recipe = recipe or self.recipe
        if recipe_changes:
            recipe = recipe.replace(**recipe_changes)
        kwargs = {} if forward is None else {"forward": forward}
        return fit(
            model, loss, loader or self.train_loader(recipe.batch_size), recipe,
            device=self.device, params=params, after_step=after_step,
            after_epoch=after_epoch, before_epoch=before_epoch,
            checkpoint=self.workdir / f"{name}.ckpt",
            desc=f"{self.pair.label} seed{self.seed} {name}", progress=self.progress, **kwargs,
        )

    def train_alone(self, model: nn.Module, name: str = "fit") -> None:
        """Train ``model`` on its own, without a teacher, with the task's objective:
        cross-entropy for image data, the task's own otherwise (``benchmarks.supervised``)."""
        from kdbench.benchmarks.supervised import supervised

        supervised(self.data).train_alone(
            model, split=self.train_split, recipe=self.recipe, seed=self.seed,
            device=self.device, checkpoint=self.workdir / f"{name}.ckpt",
            desc=f"{self.pair.label} seed{self.seed} {name}", progress=self.progress)

    def evaluate(self, model: nn.Module, split: ImageSplit | None = None) -> dict[str, float]:
        """Top-1/top-5 (percent) on ``split`` (default: the test split)."""
        loader = self.loader(split or self.test_split, train=False)
        return evaluate(model, loader, self.device)


def make_loader(data: ImageDataset, split: ImageSplit, *, train: bool, batch_size: int,
                device: torch.device, seed: int, channels_last: bool) -> BatchLoader:
    """A loader normalised with the dataset's statistics (channels_last images if asked).

    Under torchrun it is this rank's shard: a training ``batch_size`` is the global batch,
    split evenly over the ranks (so a run trains on the same batches with any number of
    processes); evaluation shards are gathered by ``evaluate``.
    """
    if not isinstance(data, ImageDataset):  # e.g. a classification method on detection data
        raise ConfigError(f"this method trains and evaluates on image batches, but the suite's "
                          f"dataset {getattr(data, 'name', '?')!r} is {type(data).__name__}: "
                          "run it on an image suite, or use a method of this task")
    world = distributed.current()
    if world.distributed and train:
        if batch_size % world.world_size:
            raise ConfigError(f"batch_size {batch_size} cannot be split over "
                              f"{world.world_size} processes; use a multiple of "
                              f"{world.world_size} or another --nproc-per-node")
        batch_size //= world.world_size
    return BatchLoader(split, batch_size, mean=data.mean, std=data.std, train=train,
                       device=device, seed=seed,
                       channels_last=channels_last,
                       rank=world.rank, world_size=world.world_size)


def config_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}


@dataclass(frozen=True)
class PaperSchedule:
    """A method's own paper schedule: ``changes`` to the budget's training recipe.

    The method's config carries them as a field ``recipe: RecipeChanges =
    field(default_factory=SCHEDULE.default)``, so a budget that sets it to ``{}`` trains with
    the suite's recipe, as the rows the method is compared with; ``apply`` gives the recipe a
    run trains with and ``note``, the board's label of a run on another recipe than the suite's.
    """

    changes: Mapping[str, Any]
    note: str

    def default(self) -> dict[str, Any]:
        return dict(self.changes)

    def apply(self, ctx: RunContext,
              changes: Mapping[str, Any]) -> tuple[TrainRecipe, list[str]]:
        """The recipe ``changes`` (the config field's value) make of the budget's, and the
        notes that say so: ``[note]`` when it is not the budget's recipe, else none."""
        recipe = ctx.recipe.replace(**changes)
        return recipe, ([] if recipe == ctx.recipe else [self.note])
