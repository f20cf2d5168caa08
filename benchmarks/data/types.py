"""The in-memory dataset types every suite, method and loader shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from kdbench.benchmarks.errors import ConfigError, DatasetError

DATA_SOURCES = ("real", "synthetic")


# eq=False: dataclass equality would compare tensors element-wise, which is ambiguous;
# identity equality (and hashing) is what callers need.
@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split of an image dataset: uint8 images [N, C, H, W] and int64 labels [N].

    ``meta`` holds optional per-sample tensors [N, ...] that travel with the images through
    ``subset``/``take`` (e.g. ReID camera ids under ``"camid"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DatasetError(
                f"images must be uint8 [N, C, H, W]; got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DatasetError(
                f"labels must be int64 [N]; got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")
        for key, value in self.meta.items():
            if not isinstance(value, torch.Tensor) or len(value) != len(self.labels):
                raise DatasetError(
                    f"meta[{key!r}] must be a tensor with one entry per image "
                    f"({len(self.labels)}); got {type(value).__name__} "
                    f"{tuple(getattr(value, 'shape', ()))}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int) -> ImageSplit:
        """Return ``n`` images, as equal a number per class as possible, chosen by ``seed``.

        Classes are filled round-robin in a seeded random order, so the result is the same
        for the same (data, n, seed) and classes differ in size by at most one (unless a
        class runs out of images). Selected images keep their original order.
        ``None`` or ``n >= len(self)`` returns ``self``.
        """
        if n is None or n >= len(self):
            return self
        if n < 0:
            raise ConfigError(f"subset size must be >= 0 or None; got {n}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        shuffled_labels = self.labels[perm]
        # Rank of each shuffled image within its class (0 for the first of its class, ...).
        by_class = torch.sort(shuffled_labels, stable=True).indices
        sorted_labels = shuffled_labels[by_class]
        group_start = torch.searchsorted(sorted_labels, sorted_labels, right=False)
        rank = torch.empty_like(by_class)
        rank[by_class] = torch.arange(len(self)) - group_start
        # Take all rank-0 images, then rank-1, ...; ties broken by the shuffled position.
        order = torch.argsort(rank * len(self) + torch.arange(len(self)))
        chosen = torch.sort(perm[order[:n]]).values
        return self.take(chosen)

    def take(self, index: torch.Tensor) -> ImageSplit:
        """The images at ``index`` (int64 positions or a bool mask), with their labels and meta."""
        return ImageSplit(self.images[index], self.labels[index],
                          {k: v[index] for k, v in self.meta.items()})


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A train/test image classification dataset plus what the harness records about it.

    ``extra_splits`` are further named splits some benchmarks need besides train/test,
    e.g. a ReID gallery (``test`` is then the query set); same image shape as ``train``.
    """

    name: str
    train: ImageSplit
    test: ImageSplit
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data_source: str
    root: str | None
    fingerprint: str
    notice: str | None = None
    extra_splits: Mapping[str, ImageSplit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data_source not in DATA_SOURCES:
            raise DatasetError(
                f"{self.name}: data_source {self.data_source!r} is not one of {DATA_SOURCES}"
            )
        if len(self.class_names) != self.num_classes:
            raise DatasetError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        channels = self.train.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DatasetError(f"{self.name}: mean/std need {channels} values (one per channel)")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DatasetError(f"{self.name}: train and test images differ in shape")
        for key, split in self.extra_splits.items():
            if split.images.shape[1:] != self.train.images.shape[1:]:
                raise DatasetError(f"{self.name}: split {key!r} differs in image shape from train")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)


class Batch(NamedTuple):
    """One mini-batch: normalised float images and int64 labels, both on the loader's device."""

    x: torch.Tensor
    y: torch.Tensor
