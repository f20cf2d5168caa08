"""A tiny real-image suite: scikit-learn's bundled 8x8 handwritten digits (works offline)."""

from __future__ import annotations

import hashlib
from importlib.resources import files

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.benchmarks.data.types import ImageDataset, ImageSplit
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.registry import DATASETS

TEST_SIZE = 450  # of 1,797: a 1,347 / 450 split, the size of sklearn's default 25 % split
SPLIT_SEED = 0  # fixed: the split is part of the benchmark, not of a run's seed


def _to_images(pixels: np.ndarray, size: int) -> torch.Tensor:
    """8x8 values 0..16 -> uint8 [N, 3, size, size].

    Upsampled bilinearly to 3/4 of ``size`` (24 px for 32) and zero-padded to ``size``,
    which leaves CIFAR-like borders for random-crop augmentation; grey replicated to RGB.
    """
    inner = max(8, round(size * 3 / 4))
    x = torch.from_numpy(pixels).float().mul_(255 / 16).unsqueeze(1)
    x = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False)
    before = (size - inner) // 2
    after = size - inner - before
    x = F.pad(x, (before, after, before, after))
    return x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@DATASETS.register_module("digits")
def digits(size: int = 32) -> ImageDataset:
    """sklearn ``load_digits`` as 3 x size x size uint8 images, fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if size < 8:
        raise ConfigError(f"digits size must be >= 8 (the source images are 8x8); got {size}")
    bunch = load_digits()
    images = _to_images(bunch.images, size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=TEST_SIZE,
        stratify=bunch.target,
        random_state=SPLIT_SEED,
    )
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    train = ImageSplit(images[train_idx], labels[train_idx])
    test = ImageSplit(images[test_idx], labels[test_idx])
    pixels = train.images.double().div_(255)
    return ImageDataset(
        name="digits",
        train=train,
        test=test,
        num_classes=len(bunch.target_names),
        class_names=[str(n) for n in bunch.target_names],
        mean=tuple(pixels.mean(dim=(0, 2, 3)).tolist()),
        std=tuple(pixels.std(dim=(0, 2, 3)).tolist()),
        data_source="real",
        root=str(files("sklearn.datasets") / "data" / "digits.csv.gz"),
        fingerprint=_fingerprint(train.images, train.labels, test.images, test.labels),
    )
