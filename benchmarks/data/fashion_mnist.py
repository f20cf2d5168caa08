"""Fashion-MNIST from the original IDX files (gzip or plain); download and synthetic fallback.

The four release files are looked for in ``<root>/fashion-mnist/``, ``<root>/FashionMNIST/raw/``
(torchvision's layout), ``<root>`` and the Debian/Ubuntu package folder
``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``), each file
as ``<name>.gz`` (the release) or ``<name>`` (uncompressed; preferred when both exist, as
torchvision reads that one).

The 28 x 28 grey images are zero-padded to ``size`` (32: 2 px each side) and replicated to three
channels, so the zoo's CIFAR models run on them unchanged and their params/MACs/latency are
those of exactly what runs.

Identity of the files is judged on their *decompressed* bytes: the Debian package re-gzips the
release (other .gz md5s, same content), so the fingerprint (sha256 over the four decompressed
files, in ``FILES`` order) and the official check are the same for the release, torchvision's
download, the Debian package and uncompressed copies.

Files written by ``write_fashion_mnist`` are exact IDX files too; the writer also puts a sidecar
file ``KDBENCH_SYNTHETIC`` next to them, and a folder holding it loads as
``data_source="synthetic"`` (unless its four files are the official ones).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from kdbench.benchmarks.data.cache import default_cache_dir, write_folder_atomically
from kdbench.benchmarks.data.idx import read_idx, write_idx
from kdbench.benchmarks.data.types import ImageDataset, ImageSplit
from kdbench.benchmarks.errors import ConfigError, DatasetError
from kdbench.benchmarks.registry import DATASETS

FOLDER = "fashion-mnist"
TORCHVISION_FOLDER = Path("FashionMNIST") / "raw"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
URL = "https://github.com/zalandoresearch/fashion-mnist"
# Release file names without ".gz", in fingerprint order.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# md5 of the decompressed release files. Checked against the Debian package's files (whose
# .gz md5s differ: they are re-compressed) and against published lists of the raw-file md5s.
OFFICIAL_MD5 = {
    "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
    "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
    "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
}
# md5 of the release's .gz files (what torchvision's download verifies); for reference only.
OFFICIAL_GZ_MD5 = {
    "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
    "test_images": "bef4ecab320f06d8554ea6380940ec79",
    "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SIDE = 28
SYNTHETIC_SIDECAR = "KDBENCH_SYNTHETIC"
# Bump when the generated pixels change, so cached synthetic sets are regenerated.
GENERATOR_VERSION = 1
SYNTHETIC_TRAIN_PER_CLASS = 6000  # the real split sizes, so budgets mean the same on both
SYNTHETIC_TEST_PER_CLASS = 1000
SYNTHETIC_SEED = 0

_NUM_CLASSES = len(CLASS_NAMES)
_FILE_LIST = ", ".join(FILES.values())
_HOW_TO_GET = (
    f"on Debian/Ubuntu run `apt-get install {DEBIAN_PACKAGE}` (installs them in "
    f"{DEBIAN_FOLDER}); or pass download=True (needs internet; torchvision fetches them into "
    f"<root>/{TORCHVISION_FOLDER.as_posix()}); or point root / --data-root at a folder holding "
    "the four files"
)


# --- finding the files ---------------------------------------------------------------------


def candidate_folders(root: str | Path) -> list[Path]:
    """Folders searched, in order: root/fashion-mnist, root/FashionMNIST/raw, root, Debian's."""
    base = Path(root).expanduser().resolve()
    folders = [base / FOLDER, base / TORCHVISION_FOLDER, base, Path(DEBIAN_FOLDER)]
    return list(dict.fromkeys(folders))  # root may be the Debian folder itself


def files_in(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The release files present in ``folder`` (plain name preferred over .gz) and those missing."""
    found, missing = {}, []
    for key, name in FILES.items():
        for path in (folder / name, folder / f"{name}.gz"):
            if path.is_file():
                found[key] = path
                break
        else:
            missing.append(name)
    return found, missing


def _check_root(root: str | Path) -> None:
    """A root (or sub-folder we would search) that is a file is a mistake worth stopping on."""
    base = Path(root).expanduser().resolve()
    for path in (base, base / FOLDER, base / TORCHVISION_FOLDER):
        if path.exists() and not path.is_dir():
            raise DatasetError(
                f"Fashion-MNIST data root {path} is a file, but a folder is expected: point "
                f"root / --data-root at the folder holding {_FILE_LIST} (each optionally .gz), "
                "or at a parent of fashion-mnist/ or FashionMNIST/raw/"
            )


@dataclass(frozen=True)
class _Search:
    """Where the files were found (or not), and what was seen on the way."""

    files: dict[str, Path] | None
    looked: list[Path]
    partial: list[str]


def search(root: str | Path) -> _Search:
    """Find the first candidate folder holding all four files."""
    _check_root(root)
    looked, partial = candidate_folders(root), []
    for folder in looked:
        found, missing = files_in(folder)
        if not missing:
            return _Search(found, looked, partial)
        if found:
            partial.append(f"{folder} lacks {', '.join(missing)}")
    return _Search(None, looked, partial)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSplit:
    """One split as stored: grey images uint8 [N, 28, 28] and labels uint8 [N] (read-only)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class RawFashionMNIST:
    """The four files decoded, with their decompressed md5s and the combined sha256."""

    train: RawSplit
    test: RawSplit
    md5: dict[str, str]
    fingerprint: str


def _read_split(images_path: Path, labels_path: Path) -> tuple[RawSplit, bytes, bytes]:
    images = read_idx(images_path, 3, "image")
    n, h, w = images.array.shape
    if (h, w) != (SIDE, SIDE):
        raise DatasetError(
            f"{images_path}: images are {h} x {w}; Fashion-MNIST images are {SIDE} x {SIDE}"
        )
    labels = read_idx(labels_path, 1, "label")
    if len(labels.array) != n:
        raise DatasetError(
            f"{labels_path} holds {len(labels.array)} labels but {images_path} holds {n} "
            "images: the files must be from the same split of the same release"
        )
    bad = np.flatnonzero(labels.array >= _NUM_CLASSES)
    if len(bad):
        raise DatasetError(
            f"{labels_path}: label {int(labels.array[bad[0]])} at position {int(bad[0])} "
            f"(and {len(bad) - 1} more) is outside 0-{_NUM_CLASSES - 1}: not a Fashion-MNIST "
            "label file, or a corrupt one"
        )
    return RawSplit(images.array, labels.array), images.data, labels.data


def read_raw(files: dict[str, Path]) -> RawFashionMNIST:
    """Read and check the four files named in ``files`` (keys as in ``FILES``)."""
    train, *train_data = _read_split(files["train_images"], files["train_labels"])
    test, *test_data = _read_split(files["test_images"], files["test_labels"])
    data = dict(zip(FILES, (*train_data, *test_data), strict=True))
    fingerprint = hashlib.sha256()
    for key in FILES:
        fingerprint.update(data[key])
    md5 = {key: hashlib.md5(data[key], usedforsecurity=False).hexdigest() for key in FILES}
    return RawFashionMNIST(train, test, md5, fingerprint.hexdigest())


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < SIDE:
        raise ConfigError(
            f"fashion_mnist size must be an integer >= {SIDE} (the images are {SIDE} x {SIDE} "
            f"and are zero-padded, never scaled); got {size!r}"
        )


def to_images(grey: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, 28, 28] -> uint8 [N, 3, size, size]: zero-padded, grey copied to 3 channels."""
    before = (size - SIDE) // 2
    padded = np.zeros((len(grey), size, size), dtype=np.uint8)
    padded[:, before : before + SIDE, before : before + SIDE] = grey
    return torch.from_numpy(padded).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def grey_mean_std(grey: np.ndarray, size: int) -> tuple[float, float]:
    """Mean and (unbiased) std of the padded images' pixels in [0, 1], exactly, via a histogram.

    Same numbers as ``to_images(grey, size).double().div(255)`` would give (as digits.py
    computes them) without materialising 60,000 x 3 x 32 x 32 doubles.
    """
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, len(grey), 8192):
        counts += np.bincount(grey[start : start + 8192].ravel(), minlength=256)
    n = len(grey) * size * size
    counts[0] += n - len(grey) * SIDE * SIDE  # the zero padding
    values = np.arange(256, dtype=np.float64) / 255
    mean = float(counts @ values) / n
    var = float(counts @ (values - mean) ** 2) / max(n - 1, 1)
    return mean, var**0.5


def _source_and_notice(folder: Path, raw: RawFashionMNIST) -> tuple[str, str | None]:
    """Classify the files: official release, kdbench's generator, or something else."""
    if raw.md5 == OFFICIAL_MD5:
        return "real", None
    sidecar = folder / SYNTHETIC_SIDECAR
    if sidecar.is_file():
        try:
            what = sidecar.read_text(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError):
            what = "kdbench synthetic"
        return "synthetic", (
            f"the Fashion-MNIST files in {folder} were generated by kdbench ({what}): results "
            "are on SYNTHETIC data and not comparable with Fashion-MNIST numbers"
        )
    differ = ", ".join(
        f"{FILES[k]} {raw.md5[k]} (official {OFFICIAL_MD5[k]})"
        for k in FILES
        if raw.md5[k] != OFFICIAL_MD5[k]
    )
    return "real", (
        f"the Fashion-MNIST files in {folder} differ from the official release (md5 of the "
        f"decompressed files: {differ}): results may not be comparable with other runs"
    )


def load_files(files: dict[str, Path], size: int = 32) -> ImageDataset:
    """Read the four files into an ``ImageDataset`` of uint8 [N, 3, size, size] images."""
    _check_size(size)
    raw = read_raw(files)
    folder = files["train_images"].parent
    data_source, notice = _source_and_notice(folder, raw)
    mean, std = grey_mean_std(raw.train.images, size)
    splits = [
        ImageSplit(to_images(s.images, size), torch.from_numpy(s.labels.astype(np.int64)))
        for s in (raw.train, raw.test)
    ]
    return ImageDataset(
        name="fashion_mnist",
        train=splits[0],
        test=splits[1],
        num_classes=_NUM_CLASSES,
        class_names=list(CLASS_NAMES),
        mean=(mean,) * 3,
        std=(std,) * 3,
        data_source=data_source,
        root=str(folder),
        fingerprint=raw.fingerprint,
        notice=notice,
    )


def load_folder(folder: str | Path, size: int = 32) -> ImageDataset:
    """Load the four files from exactly ``folder``."""
    folder = Path(folder)
    found, missing = files_in(folder)
    if missing:
        raise DatasetError(f"{folder} lacks {', '.join(missing)} (each optionally .gz)")
    return load_files(found, size)


# --- generated stand-in -------------------------------------------------------------------

_MAX_SHIFT = 3  # images are windows of a (28 + 2*3)^2 class field
_SHARED_WEIGHT = 0.5  # share of each class's brightness pattern common to all classes
_TEXTURE_AMPLITUDE = 50.0
_MAX_DISTRACTOR = 0.6  # blend weight of another class's field, drawn from U(0, this)
_GAIN_RANGE = 0.3
_NOISE_SD = 25.0
_CHUNK = 8192


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """[K, h, w] -> [K, size, size], bicubic."""
    out = F.interpolate(torch.from_numpy(grid[:, None]), size=(size, size), mode="bicubic",
                        align_corners=False)
    return out[:, 0].numpy()


def class_fields(rng: np.random.Generator, num_classes: int = _NUM_CLASSES) -> np.ndarray:
    """Each class's grey field, float32 [K, 34, 34]: a soft elliptic 'garment' on black.

    A class differs in its silhouette (ellipse axes), coarse brightness pattern (half shared
    by all classes) and texture.
    """
    size = SIDE + 2 * _MAX_SHIFT
    shared = rng.uniform(0, 255, (1, 4, 4)).astype(np.float32)
    own = rng.uniform(0, 255, (num_classes, 4, 4)).astype(np.float32)
    brightness = _upsample(_SHARED_WEIGHT * shared + (1 - _SHARED_WEIGHT) * own, size)
    texture = _upsample(rng.standard_normal((num_classes, 7, 7), dtype=np.float32), size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    half_h, half_w = rng.uniform(6, 13, (2, num_classes, 1, 1)).astype(np.float32)
    radius = (yy / half_h) ** 2 + (xx / half_w) ** 2
    mask = 1 / (1 + np.exp((radius - 1) * 6))
    return mask * (brightness + _TEXTURE_AMPLITUDE * texture)


def render(fields: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uint8 [28, 28] image per label: shifted own field, blended with another, noised."""
    n, k = len(labels), len(fields)
    windows = sliding_window_view(fields, (SIDE, SIDE), axis=(1, 2))  # [K, 7, 7, 28, 28]
    oy, ox, dy, dx = rng.integers(0, 2 * _MAX_SHIFT + 1, (4, n))
    alpha = rng.uniform(0, _MAX_DISTRACTOR, (n, 1, 1)).astype(np.float32)
    img = (1 - alpha) * windows[labels, oy, ox] + alpha * windows[rng.integers(0, k, n), dy, dx]
    img *= rng.uniform(1 - _GAIN_RANGE, 1 + _GAIN_RANGE, (n, 1, 1)).astype(np.float32)
    img += _NOISE_SD * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _generate_split(
    fields: np.ndarray, n_per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.repeat(np.arange(len(fields), dtype=np.uint8), n_per_class))
    images = np.empty((len(labels), SIDE, SIDE), dtype=np.uint8)
    for start in range(0, len(labels), _CHUNK):
        chunk = labels[start : start + _CHUNK]
        images[start : start + len(chunk)] = render(fields, chunk, rng)
    return images, labels


def write_fashion_mnist(
    folder: str | Path,
    n_train_per_class: int,
    n_test_per_class: int,
    seed: int = 0,
    compress: bool = True,
) -> Path:
    """Write the four Fashion-MNIST files, filled with generated images, into ``folder``.

    Exact IDX files (``<name>.gz`` when ``compress``, else ``<name>``), readable by any
    Fashion-MNIST reader, plus the ``KDBENCH_SYNTHETIC`` sidecar that marks them as generated.
    Images are learnable but not trivial (nearest class mean on pixels about 45 %, logistic
    regression about 75 %). The same arguments give byte-identical files. Returns ``folder``.
    """
    if n_train_per_class < 1 or n_test_per_class < 1:
        raise ConfigError(
            f"n_train_per_class and n_test_per_class must be >= 1; "
            f"got {n_train_per_class} and {n_test_per_class}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    field_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    fields = class_fields(field_rng)
    suffix = ".gz" if compress else ""
    for split, per_class, rng in (("train", n_train_per_class, train_rng),
                                  ("test", n_test_per_class, test_rng)):
        images, labels = _generate_split(fields, per_class, rng)
        write_idx(folder / f"{FILES[f'{split}_images']}{suffix}", images)
        write_idx(folder / f"{FILES[f'{split}_labels']}{suffix}", labels)
    (folder / SYNTHETIC_SIDECAR).write_text(
        f"kdbench synthetic Fashion-MNIST (generator v{GENERATOR_VERSION}, seed {seed}, "
        f"{n_train_per_class}/{n_test_per_class} train/test images per class)\n"
        "These files were generated by kdbench, not taken from the Fashion-MNIST release.\n"
    )
    return folder


def synthetic_folder(cache_dir: str | Path | None) -> Path:
    """The cached synthetic stand-in (uncompressed, fast to load), written on first use."""
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = (
        f"fashion_mnist-v{GENERATOR_VERSION}-seed{SYNTHETIC_SEED}-"
        f"{SYNTHETIC_TRAIN_PER_CLASS}x{SYNTHETIC_TEST_PER_CLASS}"
    )
    target = base / "synthetic" / name
    if not _complete(target):
        _write_synthetic(target)
    if not _complete(target):
        raise DatasetError(
            f"the cached synthetic Fashion-MNIST in {target} is incomplete; delete that folder "
            "and it will be generated again"
        )
    return target


def _complete(folder: Path) -> bool:
    return not files_in(folder)[1] and (folder / SYNTHETIC_SIDECAR).is_file()


def _write_synthetic(target: Path) -> None:
    """Generate the stand-in in a staging folder and rename it into place (atomic)."""
    write_folder_atomically(
        target, lambda staging: write_fashion_mnist(
            staging, SYNTHETIC_TRAIN_PER_CLASS, SYNTHETIC_TEST_PER_CLASS,
            seed=SYNTHETIC_SEED, compress=False),
        "synthetic Fashion-MNIST", _complete)


# --- the registered dataset ---------------------------------------------------------------


def download_release(root: Path) -> str | None:
    """Fetch the release into ``root/FashionMNIST/raw`` with torchvision; return why it failed."""
    from torchvision.datasets import FashionMNIST

    try:
        # train=False: all four files are fetched; torchvision then parses only the test split.
        FashionMNIST(str(root), train=False, download=True)
    # Network, TLS, HTTP, checksum and archive errors all just mean "no data": report, go on
    # (on one line: torchvision's messages span several).
    except Exception as e:
        return f"{type(e).__name__}: {' '.join(str(e).split())}"
    return None


def _where_looked(found: _Search, download_error: str | None) -> str:
    looked = ", ".join(str(f) for f in found.looked)
    partial = f" ({'; '.join(found.partial)})" if found.partial else ""
    tried = f"; download=True failed ({download_error})" if download_error else ""
    return f"looked for {_FILE_LIST} (each optionally .gz) in {looked}{partial}{tried}"


@DATASETS.register_module("fashion_mnist")
def fashion_mnist(
    root: str = "data",
    download: bool = False,
    synthetic_fallback: bool = False,
    cache_dir: str | None = None,
    size: int = 32,
) -> ImageDataset:
    """Fashion-MNIST as uint8 [N, 3, size, size] (zero-padded, grey in all three channels).

    Looks in ``root/fashion-mnist``, ``root/FashionMNIST/raw``, ``root`` and the Debian
    package folder; missing files are downloaded when ``download``; if still missing,
    ``synthetic_fallback`` substitutes a generated set in the same format
    (``data_source="synthetic"``, with a notice), otherwise a ``DatasetError`` says where it
    looked and how to get the data.
    """
    _check_size(size)
    found = search(root)
    download_error = None
    if found.files is None and download:
        download_error = download_release(Path(root).expanduser())
        found = search(root)
    if found.files is not None:
        return load_files(found.files, size)
    if not synthetic_fallback:
        raise DatasetError(
            f"Fashion-MNIST not found: {_where_looked(found, download_error)}. To provide it, "
            f"{_HOW_TO_GET}; or set synthetic_fallback=True to run on generated data."
        )
    synthetic = load_folder(synthetic_folder(cache_dir), size)
    notice = (
        f"no real Fashion-MNIST found ({_where_looked(found, download_error)}); using a "
        f"SYNTHETIC stand-in generated by kdbench at {synthetic.root}. Results are on generated "
        f"data and not comparable with Fashion-MNIST numbers. To use the real data, "
        f"{_HOW_TO_GET}."
    )
    return replace(synthetic, notice=notice)

