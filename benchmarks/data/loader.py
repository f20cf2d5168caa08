"""A device-resident batch loader: no worker processes, no PIL, no per-image Python."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from kdbench.benchmarks.data.augment import (
    crop_flip,
    normalize,
    normalize_coefficients,
    sample_crop_flip,
)
from kdbench.benchmarks.data.types import Batch, ImageSplit
from kdbench.benchmarks.errors import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for one (seed, epoch): epochs are independent of each other."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class BatchLoader:
    """Whole split held on the target device as uint8; batches augmented there.

    No PIL and no per-image Python: every step works on a whole batch tensor.

    ``train=True``: a fresh permutation each epoch, random crop 32 with zero padding 4 and
    horizontal flip p=0.5, then normalisation; the last partial batch is dropped unless
    ``drop_last=False``. ``train=False``: fixed order, normalisation only, last partial
    batch kept.

    The permutation and the augmentation parameters of an epoch are a function of
    (seed, epoch) alone, drawn on the CPU, so the same seed gives the same batches on any
    device and a resumed run continues exactly. Each ``iter()`` uses the current epoch and
    then advances it; ``set_epoch`` sets it explicitly (call it before every epoch to resume).

    With ``world_size > 1`` every rank builds the same permutation, truncated to a multiple
    of ``world_size``, and keeps positions ``rank::world_size``: disjoint, equal-size
    shards. Evaluation shards are ``rank::world_size`` of the fixed order, not truncated, so
    together they cover every test image once (sizes differ by at most one).
    """

    # Images augmented per device op, rounded down to whole batches. Several batches per op
    # amortise the per-op threading overhead on a CPU (severe when the cores are shared) and
    # kernel launches on a GPU; more than ~1k CIFAR images (12 MB of float32) per op is
    # slower on a CPU, as each fresh buffer that large is page-faulted in anew.
    chunk_images: int = 1024

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        _validate(split, batch_size, mean, std, seed, rank, world_size)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.scale, self.shift = normalize_coefficients(mean, std, self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch``'s order and augmentation."""
        self.epoch = epoch

    def num_samples(self) -> int:
        """Images this rank sees per epoch (before dropping a last partial batch)."""
        n = len(self.labels)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        if self.train:
            return self._train_batches(epoch)
        return self._eval_batches()

    def _train_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's indices, crop offsets and flips for one epoch, on the device."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        n = len(self.labels)
        order = torch.randperm(n, generator=g)
        # Drawn for every position of the full permutation, so a position's augmentation
        # does not depend on world_size.
        params = sample_crop_flip(n, generator=g)
        keep = slice(self.rank, n - n % self.world_size, self.world_size)
        return (
            order[keep].to(self.device),
            params.offsets[keep].to(self.device),
            params.flip[keep].to(self.device),
        )

    def _train_batches(self, epoch: int) -> Iterator[Batch]:
        order, offsets, flip = self._train_plan(epoch)
        for sl in self._chunk_slices(len(order)):
            idx = order[sl]
            images = crop_flip(self.images.index_select(0, idx), offsets[sl], flip[sl])
            yield from self._split_chunk(images, self.labels.index_select(0, idx))

    def _eval_batches(self) -> Iterator[Batch]:
        n = len(self.labels)
        order = None if self.world_size == 1 else torch.arange(self.rank, n, self.world_size)
        for sl in self._chunk_slices(self.num_samples()):
            if order is None:  # contiguous slices of the stored split: no gather needed
                images, labels = self.images[sl], self.labels[sl]
            else:
                idx = order[sl].to(self.device)
                images, labels = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            yield from self._split_chunk(images, labels)

    def _chunk_slices(self, n: int) -> Iterator[slice]:
        """Slices of whole batches (the last one possibly partial), about ``chunk_images`` long."""
        stop = n - n % self.batch_size if self.drop_last else n
        step = self.batch_size * max(1, self.chunk_images // self.batch_size)
        for start in range(0, stop, step):
            yield slice(start, min(start + step, stop))

    def _split_chunk(self, images: torch.Tensor, labels: torch.Tensor) -> Iterator[Batch]:
        """Normalise a chunk in one op and hand it out as batch views."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        x = normalize(images, self.scale, self.shift)
        for start in range(0, len(labels), self.batch_size):
            end = start + self.batch_size
            yield Batch(x[start:end], labels[start:end])


def _validate(
    split: ImageSplit,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
    rank: int,
    world_size: int,
) -> None:
    channels = split.images.shape[1]
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1; got {batch_size}")
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"mean and std need one value per channel ({channels}); got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ConfigError(f"std values must be > 0; got {tuple(std)}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0; got {seed}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"need world_size >= 1 and 0 <= rank < world_size; got rank={rank}, "
            f"world_size={world_size}"
        )
