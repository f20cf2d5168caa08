"""How a model learns a suite's data on its own: the teacher's training and the ``scratch`` row.

Image data (classification, ReID identities) trains with the shared loop and cross-entropy
and is scored by top-1/top-5. A task whose models train another way brings its own: its
dataset object has ``train_alone``, ``score`` and ``training_key`` (the detection task trains
with mmengine's Runner and scores COCO mAP). The harness asks the data, never the suite's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.data import ImageDataset, ImageSplit
from kdbench.benchmarks.train import evaluate, fit


@runtime_checkable
class SupervisedTask(Protocol):
    def train_alone(self, model: nn.Module, *, split: Any, recipe: TrainRecipe, seed: int,
                    device: torch.device, checkpoint: Path, desc: str,
                    progress: bool | None) -> None:
        """Train ``model`` (in place) on ``split`` with the task's own objective."""

    def score(self, model: nn.Module, *, split: Any, recipe: TrainRecipe,
              device: torch.device) -> dict[str, float]:
        """The task's test scores of ``model`` on ``split`` (the teacher cache stores them)."""

    def training_key(self, arch: str) -> str | None:
        """What besides the budget's recipe decides how ``arch`` trains (None: nothing)."""

    def recipe_of(self, model: nn.Module) -> dict[str, Any] | None:
        """The schedule ``model`` trained with, when it is its own (None: the budget's)."""


class ImageClassification:
    """Cross-entropy on the labels with the shared loop; top-1/top-5 on the test split."""

    def __init__(self, data: ImageDataset):
        self.data = data

    def train_alone(self, model: nn.Module, *, split: ImageSplit, recipe: TrainRecipe,
                    seed: int, device: torch.device, checkpoint: Path, desc: str,
                    progress: bool | None) -> None:
        from kdbench.benchmarks.method import make_loader

        loader = make_loader(self.data, split, train=True, seed=seed,
                             batch_size=recipe.batch_size, device=device,
                             channels_last=recipe.channels_last_on(device))
        fit(model, lambda b, logits: F.cross_entropy(logits, b.y), loader, recipe,
            device=device, desc=desc, progress=progress, checkpoint=checkpoint)

    def score(self, model: nn.Module, *, split: ImageSplit, recipe: TrainRecipe,
              device: torch.device) -> dict[str, float]:
        from kdbench.benchmarks.method import make_loader

        loader = make_loader(self.data, split, train=False, seed=0,
                             batch_size=recipe.eval_batch_size, device=device,
                             channels_last=recipe.channels_last_on(device))
        return evaluate(model, loader, device)

    def training_key(self, arch: str) -> str | None:
        return None

    def recipe_of(self, model: nn.Module) -> dict[str, Any] | None:
        return None


def supervised(data: Any) -> SupervisedTask:
    """The data's own way of training a model alone, else image classification."""
    if isinstance(data, SupervisedTask):
        return data
    return ImageClassification(data)
