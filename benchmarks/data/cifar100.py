"""CIFAR-100 from the official ``cifar-100-python`` pickles; download and synthetic fallback.

The release is a set of pickles. They are read with ``safe_pickle``, whose unpickler resolves
only the numpy globals that arrays are rebuilt from; any other global (which a pickle needs
in order to run code while loading) is refused with a ``DatasetError`` and nothing in the
file runs. This holds for files under ``root`` and for the synthetic cache alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.benchmarks.data import safe_pickle
from kdbench.benchmarks.data.cache import default_cache_dir, write_folder_atomically
from kdbench.benchmarks.data.fixtures import (
    CIFAR_FOLDER,
    GENERATOR_VERSION,
    SYNTHETIC_MARK,
    write_cifar100,
)
from kdbench.benchmarks.data.types import ImageDataset, ImageSplit
from kdbench.benchmarks.errors import DatasetError
from kdbench.benchmarks.registry import DATASETS

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
FILES = ("train", "test", "meta")
OFFICIAL_MD5 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
}
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
SYNTHETIC_TRAIN_PER_CLASS = 500  # the real split sizes, so budgets mean the same on both
SYNTHETIC_TEST_PER_CLASS = 100
SYNTHETIC_SEED = 0

_ROW = 3 * 32 * 32
_LAYOUT = "<root>/cifar-100-python/{train,test,meta} (the 'CIFAR-100 python version' pickles)"
_HOW_TO_GET = (
    f"download {URL} and extract it under the root folder, or pass download=True (needs internet)"
)


@dataclass(frozen=True)
class _SplitFile:
    """One decoded split file plus what identifies its bytes."""

    split: ImageSplit
    batch_label: bytes
    md5: str
    raw: bytes


def candidate_folders(root: str | Path) -> list[Path]:
    """Folders that may hold the three files: ``<root>/cifar-100-python``, then ``root``."""
    root = Path(root).expanduser().resolve()
    return [root / CIFAR_FOLDER, root]


def find_folder(root: str | Path) -> Path | None:
    """The first candidate folder holding train, test and meta, or None."""
    for folder in candidate_folders(root):
        if all((folder / name).is_file() for name in FILES):
            return folder
    return None


def _load_pickle(path: Path) -> tuple[dict[bytes, Any], bytes]:
    """Unpickle a CIFAR file (py2 strings as bytes) without running code from it.

    Returns the dict and the raw file bytes.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    remedy = (
        f"Re-extract it from the official archive {URL}; if {path.parent} is kdbench's "
        "synthetic cache, delete that folder instead (it is generated again on next use)."
    )
    try:
        content = safe_pickle.loads(raw, source=path, remedy=remedy, encoding="bytes")
    except safe_pickle.RefusedGlobalError:
        raise  # names the file and the refused global; not a "corrupt file" case
    # A damaged pickle can fail in many ways (EOFError, UnpicklingError, ValueError, ...).
    except Exception as e:
        raise DatasetError(
            f"{path} is not a readable CIFAR-100 pickle ({type(e).__name__}: {e}); the file "
            f"is probably truncated or corrupt: re-extract it from {URL}"
        ) from e
    if not isinstance(content, dict):
        raise DatasetError(f"{path} holds a {type(content).__name__}, expected a dict")
    # Files re-pickled under Python 3 have str keys; accept them like the original bytes keys.
    return {k.encode() if isinstance(k, str) else k: v for k, v in content.items()}, raw


def _require(path: Path, content: dict[bytes, Any], keys: tuple[bytes, ...]) -> None:
    missing = [k for k in keys if k not in content]
    if missing:
        raise DatasetError(
            f"{path} lacks key(s) {missing}; found {sorted(content)}: this is not a "
            f"CIFAR-100 python-version file (re-extract it from {URL})"
        )


def _as_text(names: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_meta(path: Path) -> list[str]:
    """Fine class names from the ``meta`` file."""
    content, _ = _load_pickle(path)
    _require(path, content, (b"fine_label_names",))
    return _as_text(content[b"fine_label_names"])


def _images(path: Path, data: Any) -> torch.Tensor:
    """N x 3072 channel-planar uint8 rows -> uint8 tensor [N, 3, 32, 32]."""
    if not isinstance(data, np.ndarray):
        raise DatasetError(f"{path}: b'data' is a {type(data).__name__}; expected a numpy array")
    if data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(
            f"{path}: b'data' is a {data.dtype} array of shape {data.shape}; "
            f"expected uint8 N x {_ROW}"
        )
    if data.shape[1] != _ROW:
        raise DatasetError(
            f"{path}: b'data' rows have {data.shape[1]} bytes; expected {_ROW} (3 x 32 x 32)"
        )
    if not data.flags.writeable:  # arrays unpickled from py2 strings may share read-only bytes
        data = data.copy()
    return torch.from_numpy(data).view(-1, 3, 32, 32)


def _labels(path: Path, labels: Any, n: int, num_classes: int) -> torch.Tensor:
    try:
        out = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: b'fine_labels' is not a list of integers ({e})") from e
    if out.shape != (n,):
        raise DatasetError(f"{path}: {n} images but b'fine_labels' has shape {tuple(out.shape)}")
    if n and (out.min() < 0 or out.max() >= num_classes):
        raise DatasetError(
            f"{path}: fine labels span [{int(out.min())}, {int(out.max())}]; "
            f"meta names {num_classes} classes"
        )
    return out


def read_split(path: Path, num_classes: int) -> _SplitFile:
    """Read one of the ``train``/``test`` files."""
    content, raw = _load_pickle(path)
    _require(path, content, (b"data", b"fine_labels"))
    images = _images(path, content[b"data"])
    labels = _labels(path, content[b"fine_labels"], len(images), num_classes)
    batch_label = content.get(b"batch_label", b"")
    if isinstance(batch_label, str):
        batch_label = batch_label.encode()
    return _SplitFile(ImageSplit(images, labels), batch_label, hashlib.md5(raw).hexdigest(), raw)


def _source_and_notice(folder: Path, train: _SplitFile, test: _SplitFile) -> tuple[str, str | None]:
    """Classify the files: official release, kdbench's generator, or something else."""
    if train.md5 == OFFICIAL_MD5["train"] and test.md5 == OFFICIAL_MD5["test"]:
        return "real", None
    if train.batch_label.startswith(SYNTHETIC_MARK):
        return "synthetic", (
            f"the CIFAR-100 files in {folder} were generated by kdbench "
            f"({train.batch_label.decode(errors='replace')}): results are on SYNTHETIC data "
            "and not comparable with CIFAR-100 numbers"
        )
    return "real", (
        f"the CIFAR-100 files in {folder} differ from the official release (md5 train "
        f"{train.md5}, test {test.md5}; official {OFFICIAL_MD5['train']}, "
        f"{OFFICIAL_MD5['test']}): results may not be comparable with other runs"
    )


def load_folder(folder: Path) -> ImageDataset:
    """Read a ``cifar-100-python`` folder into an ``ImageDataset``."""
    class_names = read_meta(folder / "meta")
    train = read_split(folder / "train", len(class_names))
    test = read_split(folder / "test", len(class_names))
    data_source, notice = _source_and_notice(folder, train, test)
    fingerprint = hashlib.sha256(train.raw)
    fingerprint.update(test.raw)
    return ImageDataset(
        name="cifar100",
        train=train.split,
        test=test.split,
        num_classes=len(class_names),
        class_names=class_names,
        mean=MEAN,
        std=STD,
        data_source=data_source,
        root=str(folder),
        fingerprint=fingerprint.hexdigest(),
        notice=notice,
    )


def download_release(root: Path) -> str | None:
    """Fetch and extract the release under ``root`` with torchvision; return why it failed."""
    from torchvision.datasets import CIFAR100

    try:
        # train=False: after extracting, torchvision only parses the smaller test file.
        CIFAR100(str(root), train=False, download=True)
    # Network, TLS, HTTP, checksum and archive errors all just mean "no data": report, go on.
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def synthetic_folder(cache_dir: str | Path | None) -> Path:
    """The cached synthetic stand-in, written (atomically) on first use."""
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = (
        f"cifar100-v{GENERATOR_VERSION}-seed{SYNTHETIC_SEED}-"
        f"{SYNTHETIC_TRAIN_PER_CLASS}x{SYNTHETIC_TEST_PER_CLASS}"
    )
    target = base / "synthetic" / name
    if find_folder(target) is None:
        _write_synthetic(target)
    folder = find_folder(target)
    if folder is None:
        raise DatasetError(
            f"the cached synthetic CIFAR-100 in {target} is incomplete; delete that folder "
            "and it will be generated again"
        )
    return folder


def _write_synthetic(target: Path) -> None:
    """Generate the stand-in in a staging folder and rename it into place (atomic)."""
    write_folder_atomically(
        target, lambda staging: write_cifar100(
            staging, n_train_per_class=SYNTHETIC_TRAIN_PER_CLASS,
            n_test_per_class=SYNTHETIC_TEST_PER_CLASS, seed=SYNTHETIC_SEED),
        "synthetic CIFAR-100", lambda folder: find_folder(folder) is not None)


def _where_looked(root: str | Path, download_error: str | None) -> str:
    looked = " and ".join(str(f) for f in candidate_folders(root))
    tried = f"; download=True failed ({download_error})" if download_error else ""
    return f"looked for train, test and meta in {looked}{tried}"


@DATASETS.register_module("cifar100")
def cifar100(
    root: str = "data",
    download: bool = False,
    synthetic_fallback: bool = False,
    cache_dir: str | None = None,
) -> ImageDataset:
    """CIFAR-100 (fine labels) from ``root`` or ``root/cifar-100-python``.

    Missing files are downloaded when ``download``; if still missing, ``synthetic_fallback``
    substitutes a generated set in the same format (``data_source="synthetic"``, with a
    notice), otherwise a ``DatasetError`` explains where it looked and how to get the data.
    """
    folder = find_folder(root)
    download_error = None
    if folder is None and download:
        target = Path(root).expanduser()
        download_error = download_release(target.parent if target.name == CIFAR_FOLDER else target)
        folder = find_folder(root)
    if folder is not None:
        return load_folder(folder)
    if not synthetic_fallback:
        raise DatasetError(
            f"CIFAR-100 not found: {_where_looked(root, download_error)}. Expected layout: "
            f"{_LAYOUT}. To provide it, {_HOW_TO_GET}; or set synthetic_fallback=True to run "
            "on generated data."
        )
    synthetic = load_folder(synthetic_folder(cache_dir))
    notice = (
        f"no real CIFAR-100 found ({_where_looked(root, download_error)}); using a SYNTHETIC "
        f"stand-in generated by kdbench at {synthetic.root}. Results are on generated data "
        f"and not comparable with CIFAR-100 numbers. To use the real data, {_HOW_TO_GET}."
    )
    return replace(synthetic, notice=notice)
