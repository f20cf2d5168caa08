"""Images/s of kdbench's ``BatchLoader`` against the usual torchvision + PIL + DataLoader pipeline.

Both read the same CIFAR-100 files (real ones from ``--root`` if present, else a generated
set of the real size in a temporary folder), apply the same train augmentation (random crop
32 with padding 4, horizontal flip, normalise), use batches of ``--batch-size`` with the last
partial batch dropped, and run ``--epochs`` epochs in this process after a warm-up.

    python -m kdbench.benchmarks.perf.data_throughput [--root data] [--epochs 1] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from unittest import mock

import torch
import torchvision.datasets.cifar as tv_cifar
from torch.utils.data import DataLoader
from torchvision import transforms

from kdbench.benchmarks.data.cifar100 import find_folder, load_folder
from kdbench.benchmarks.data.fixtures import write_cifar100
from kdbench.benchmarks.data.loader import BatchLoader
from kdbench.benchmarks.data.types import ImageDataset

THREADS = 2
WORKERS = 2
WARMUP_BATCHES = 20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="folder holding cifar-100-python/")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per pipeline")
    parser.add_argument("--batch-size", type=int, default=128)
    return parser.parse_args(argv)


@contextlib.contextmanager
def cifar_files(root: str) -> Iterator[Path]:
    """Yield a folder holding ``cifar-100-python``: the real one, or a generated stand-in."""
    folder = find_folder(root)
    if folder is not None:
        print(f"data: {folder}")
        yield folder.parent
        return
    with tempfile.TemporaryDirectory(prefix="kdbench-perf-") as tmp:
        print(f"data: no CIFAR-100 under {root}; writing a 500/100-per-class fixture to {tmp}")
        write_cifar100(tmp, n_train_per_class=500, n_test_per_class=100)
        yield Path(tmp)


def timed_images(batches: Iterable, epochs: int, restart) -> tuple[int, float]:
    """Count images over ``epochs`` passes (``restart(e)`` before each); return (n, seconds)."""
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        restart(epoch)
        for batch in batches:
            images += len(batch[1])
    return images, time.perf_counter() - start


def warm_up(batches: Iterable) -> None:
    for i, _ in enumerate(batches):
        if i + 1 == WARMUP_BATCHES:
            break


def ours(ds: ImageDataset, batch_size: int, epochs: int) -> tuple[int, float]:
    loader = BatchLoader(
        ds.train, batch_size, mean=ds.mean, std=ds.std, train=True, device="cpu", seed=0
    )
    warm_up(loader)
    return timed_images(loader, epochs, loader.set_epoch)


@contextlib.contextmanager
def md5_check_bypassed(official: bool) -> Iterator[None]:
    """torchvision refuses files whose md5 differs from the release; skip only that check."""
    if official:
        yield
        return
    print("torchvision: md5 integrity check bypassed (files are not the official release)")
    with (
        mock.patch.object(tv_cifar.CIFAR100, "_check_integrity", lambda self: True),
        mock.patch.object(tv_cifar, "check_integrity", lambda *args, **kwargs: True),
    ):
        yield


def torchvision_pipeline(
    root: Path, ds: ImageDataset, batch_size: int, epochs: int, official: bool
) -> tuple[int, float]:
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(ds.mean, ds.std),
        ]
    )
    with md5_check_bypassed(official):
        dataset = tv_cifar.CIFAR100(str(root), train=True, transform=augment, download=False)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=WORKERS,
        drop_last=True,
        persistent_workers=True,  # worker start-up belongs to the warm-up, not the timing
        generator=torch.Generator().manual_seed(0),
    )
    warm_up(loader)
    return timed_images(loader, epochs, lambda epoch: None)


def report(name: str, images: int, seconds: float) -> float:
    rate = images / seconds
    print(f"{name:<46} {images:>8} images in {seconds:7.2f} s = {rate:>10,.0f} images/s")
    return rate


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(THREADS)
    print(
        f"torch {torch.__version__}, {THREADS} intra-op threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} (other load skews both numbers)"
    )
    with cifar_files(args.root) as root:
        ds = load_folder(root / "cifar-100-python")
        official = ds.data_source == "real" and ds.notice is None
        fast = report("kdbench BatchLoader (cpu)", *ours(ds, args.batch_size, args.epochs))
        slow = report(
            f"torchvision CIFAR100 + PIL + DataLoader({WORKERS} workers)",
            *torchvision_pipeline(root, ds, args.batch_size, args.epochs, official),
        )
    print(f"speed-up: {fast / slow:.1f}x")


if __name__ == "__main__":
    main()
