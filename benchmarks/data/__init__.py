"""Datasets (real on-disk formats), the device-side batch loader and fixture writers.

Importing this package registers the built-in datasets in ``benchmarks.registry.DATASETS``.
"""

from kdbench.benchmarks.data import (
    augment,
    cifar100,
    digits,
    fashion_mnist,
    fixtures,
    idx,
    loader,
    types,
)
from kdbench.benchmarks.data.cifar100 import cifar100 as load_cifar100
from kdbench.benchmarks.data.digits import digits as load_digits
from kdbench.benchmarks.data.fashion_mnist import fashion_mnist as load_fashion_mnist
from kdbench.benchmarks.data.fashion_mnist import write_fashion_mnist
from kdbench.benchmarks.data.fixtures import write_cifar100
from kdbench.benchmarks.data.loader import BatchLoader
from kdbench.benchmarks.data.types import Batch, ImageDataset, ImageSplit

__all__ = [
    "Batch",
    "BatchLoader",
    "ImageDataset",
    "ImageSplit",
    "augment",
    "cifar100",
    "digits",
    "fashion_mnist",
    "fixtures",
    "idx",
    "load_cifar100",
    "load_digits",
    "load_fashion_mnist",
    "loader",
    "types",
    "write_cifar100",
    "write_fashion_mnist",
]
