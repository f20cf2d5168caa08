"""Writers of small datasets in the real on-disk formats, for tests and the synthetic fallback.

``write_cifar100`` produces a ``cifar-100-python`` folder that any CIFAR-100 reader (ours,
torchvision's) loads like the real one: same files, same keys, dtypes and Python-2 pickle
string types. Only the images are generated, and ``b"batch_label"`` says so.

The images are learnable but not trivial. Every class has a colour field made of a coarse
(super-class) part shared with four sibling classes plus its own part, and finer texture;
each image is a randomly shifted window of that field, blended with a random other class,
colour-jittered and noised. Pixel-space classifiers therefore do clearly better than chance
but far from perfectly, while shift-tolerant CNNs do much better and keep improving with
capacity and epochs. Measured on 100 classes (200 train / 50 test images each): nearest class
mean on pixels 35 %; a 3-conv CNN of width 16 58 % after 3 epochs; width 32, 8 epochs 79 %.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from kdbench.benchmarks.data import safe_pickle
from kdbench.benchmarks.errors import ConfigError

CIFAR_FOLDER = "cifar-100-python"
SYNTHETIC_MARK = b"kdbench synthetic"
# Bump when the generated pixels change, so cached synthetic sets are regenerated.
GENERATOR_VERSION = 1

_SIZE = 32
_NUM_COARSE = 20
_MAX_SHIFT = 8  # images are windows of a (32 + 2*8)^2 class field
_COARSE_WEIGHT = 0.7  # share of a class's colour field that its super-class siblings share
_DETAIL_AMPLITUDE = 45.0
_MAX_DISTRACTOR = 0.6  # blend weight of another class's field, drawn from U(0, this)
_GAIN_RANGE = 0.3
_BIAS_SD = 30.0
_NOISE_SD = 25.0
_CHUNK = 4096  # images generated at once; bounds the float32 working memory


class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python-2 ``str`` (BINSTRING), as the real CIFAR files do.

    The official files were written by Python 2, so their keys, names and raw pixel data
    are py2 strings: they load as ``bytes`` with ``encoding="bytes"`` and as ``str`` with
    ``encoding="latin1"`` (torchvision's choice). Python 3 cannot emit that opcode for
    ``bytes``, hence the pure-Python pickler with one extra dispatch entry.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump_py2_pickle(obj: Any, path: Path) -> None:
    """Write ``obj`` as a protocol-2 pickle with ``bytes`` stored as Python-2 strings."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def label_names(num_classes: int) -> tuple[list[str], list[str]]:
    """Fine and coarse class names of a synthetic set."""
    fine = [f"class_{i:03d}" for i in range(num_classes)]
    coarse = [f"superclass_{j:02d}" for j in range(_NUM_COARSE)]
    return fine, coarse


def coarse_of(num_classes: int) -> np.ndarray:
    """Super-class of each fine class: contiguous groups, five per group for 100 classes."""
    return np.arange(num_classes) * _NUM_COARSE // num_classes


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    return F.interpolate(
        torch.from_numpy(grid), size=(size, size), mode="bicubic", align_corners=False
    ).numpy()


def class_fields(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each class's colour/texture field, float32 [K, 3, 48, 48] in roughly 0..255."""
    size = _SIZE + 2 * _MAX_SHIFT
    coarse = rng.uniform(0, 255, (_NUM_COARSE, 3, 4, 4)).astype(np.float32)
    own = rng.uniform(0, 255, (num_classes, 3, 4, 4)).astype(np.float32)
    colour = _COARSE_WEIGHT * coarse[coarse_of(num_classes)] + (1 - _COARSE_WEIGHT) * own
    texture = rng.standard_normal((num_classes, 3, 8, 8), dtype=np.float32)
    return _upsample(colour, size) + _DETAIL_AMPLITUDE * _upsample(texture, size)


def render(fields: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generate one uint8 image [n, 3, 32, 32] per label from the class fields."""
    n, k = len(labels), len(fields)
    windows = sliding_window_view(fields, (_SIZE, _SIZE), axis=(2, 3))  # [K, 3, 17, 17, 32, 32]
    oy, ox, dy, dx = rng.integers(0, 2 * _MAX_SHIFT + 1, (4, n))
    own = windows[labels, :, oy, ox]
    distractor = windows[rng.integers(0, k, n), :, dy, dx]
    alpha = rng.uniform(0, _MAX_DISTRACTOR, (n, 1, 1, 1)).astype(np.float32)
    img = (1 - alpha) * own + alpha * distractor
    level = img.mean(axis=(1, 2, 3), keepdims=True)
    gain = rng.uniform(1 - _GAIN_RANGE, 1 + _GAIN_RANGE, (n, 1, 1, 1)).astype(np.float32)
    bias = _BIAS_SD * rng.standard_normal((n, 3, 1, 1), dtype=np.float32)
    img = (img - level) * gain + level + bias
    img += _NOISE_SD * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _split_dict(
    fields: np.ndarray,
    n_per_class: int,
    fine_names: Sequence[str],
    first_serial: int,
    batch_label: bytes,
    rng: np.random.Generator,
) -> dict[bytes, Any]:
    """One split in the real layout: shuffled class order, N x 3072 channel-planar rows."""
    num_classes = len(fields)
    labels = rng.permutation(np.repeat(np.arange(num_classes), n_per_class))
    data = np.empty((len(labels), 3 * _SIZE * _SIZE), dtype=np.uint8)
    for start in range(0, len(labels), _CHUNK):
        chunk = labels[start : start + _CHUNK]
        data[start : start + len(chunk)] = render(fields, chunk, rng).reshape(len(chunk), -1)
    filenames = [
        f"{fine_names[y]}_s_{first_serial + i:06d}.png".encode() for i, y in enumerate(labels)
    ]
    return {
        b"filenames": filenames,
        b"batch_label": batch_label,
        b"fine_labels": labels.tolist(),
        b"coarse_labels": coarse_of(num_classes)[labels].tolist(),
        b"data": data,
    }


def write_cifar100(
    root: str | Path,
    *,
    n_train_per_class: int,
    n_test_per_class: int,
    seed: int = 0,
    num_classes: int = 100,
) -> Path:
    """Write ``<root>/cifar-100-python/{train,test,meta}`` filled with generated images.

    Returns the ``cifar-100-python`` folder. The same arguments give byte-identical files.
    """
    if n_train_per_class < 1 or n_test_per_class < 1:
        raise ConfigError(
            f"n_train_per_class and n_test_per_class must be >= 1; "
            f"got {n_train_per_class} and {n_test_per_class}"
        )
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2; got {num_classes}")
    folder = Path(root) / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    field_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    fields = class_fields(num_classes, field_rng)
    fine_names, coarse_names = label_names(num_classes)
    mark = SYNTHETIC_MARK + f" (generator v{GENERATOR_VERSION}, seed {seed})".encode()
    n_train = num_classes * n_train_per_class
    splits = {
        "train": (n_train_per_class, 0, mark + b" training batch 1 of 1", train_rng),
        "test": (n_test_per_class, n_train, mark + b" testing batch 1 of 1", test_rng),
    }
    for name, (per_class, first_serial, batch_label, rng) in splits.items():
        split = _split_dict(fields, per_class, fine_names, first_serial, batch_label, rng)
        dump_py2_pickle(split, folder / name)
    meta = {
        b"fine_label_names": [n.encode() for n in fine_names],
        b"coarse_label_names": [n.encode() for n in coarse_names],
    }
    dump_py2_pickle(meta, folder / "meta")
    return folder


CorruptionKind = Literal["truncate", "missing_key", "wrong_size"]


def corrupt_cifar100(
    folder: str | Path, file: str = "train", kind: CorruptionKind = "truncate"
) -> Path:
    """Damage one file of a written ``cifar-100-python`` folder in place; returns its path.

    ``truncate`` keeps the first half of the bytes, ``missing_key`` drops
    ``b"fine_labels"``, ``wrong_size`` cuts every image row to 3000 bytes.
    """
    path = Path(folder) / file
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return path
    content = safe_pickle.loads(path.read_bytes(), source=path, encoding="bytes")
    if kind == "missing_key":
        del content[b"fine_labels"]
    elif kind == "wrong_size":
        content[b"data"] = np.ascontiguousarray(content[b"data"][:, :3000])
    else:
        raise ConfigError(f"unknown corruption kind {kind!r}; allowed: {get_args(CorruptionKind)}")
    dump_py2_pickle(content, path)
    return path
