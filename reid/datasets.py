"""Market-1501 and DukeMTMC-reID read from their release folders (registered in ``DATASETS``).

The three splits become one ``ImageDataset``: ``train`` (``bounding_box_train``, identities
relabelled 0..N-1 as the ID classifier's classes, raw ids in ``meta["pid"]``), ``test`` = the
query set and ``extra_splits["gallery"]`` (``bounding_box_test``); query and gallery keep the
raw person ids as labels. Every split has 0-based camera ids in ``meta["camid"]``. Junk boxes
(person -1) are dropped; distractors (person 0) stay in the gallery as negatives. Images are
resized to ``height`` x ``width`` (Market-1501's boxes are 128x64; ReID models use 256x128).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kdbench.benchmarks.data.types import ImageDataset, ImageSplit
from kdbench.benchmarks.errors import ConfigError, DatasetError
from kdbench.benchmarks.registry import DATASETS
from kdbench.benchmarks.teachers import default_cache_dir
from kdbench.reid.fixtures import GENERATOR_VERSION, write_reid_dataset
from kdbench.reid.layout import (
    DUKEMTMC_REID,
    JUNK_PID,
    MARKET1501,
    SPLIT_DIRS,
    SYNTHETIC_MARKER,
    Layout,
)

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, as ReID backbones are ImageNet-initialised
STD = (0.229, 0.224, 0.225)
# The generated stand-in: 48 training ids (432 images), 48 test ids (96 queries, 336 gallery
# images), 40 distractors; small enough for CPU smoke runs.
SYNTHETIC = dict(train_ids=48, test_ids=48, cameras_per_id=3, images_per_camera=3,
                 queries_per_id=2, distractors=40, seed=0)


@dataclass(frozen=True)
class Entry:
    """One image file with its person id and 0-based camera id."""

    path: Path
    pid: int
    camid: int


def list_split(folder: Path, layout: Layout) -> list[Entry]:
    """The split's JPEGs in file-name order, junk dropped (other files are ignored)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")
    if not files:
        raise DatasetError(f"{layout.title}: no .jpg images in {folder}; expected "
                           f"{layout.expected()}")
    entries = [Entry(p, *layout.parse(p.name)) for p in files]
    return [e for e in entries if e.pid != JUNK_PID]


def _decode(path: Path, height: int, width: int) -> tuple[bytes, np.ndarray]:
    """The file's bytes and its pixels as uint8 [height, width, 3]."""
    raw = path.read_bytes()
    try:
        image = Image.open(io.BytesIO(raw)).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path} is not a readable image ({exc}); re-extract the "
                           "dataset") from exc
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return raw, np.asarray(image)


def read_images(entries: list[Entry], height: int, width: int,
                digest: hashlib._Hash) -> torch.Tensor:
    """Decode (threaded: PIL releases the GIL) into uint8 [N, 3, H, W]; hash the files."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(lambda e: _decode(e.path, height, width), entries))
    for entry, (raw, _) in zip(entries, decoded, strict=True):
        digest.update(entry.path.name.encode())
        digest.update(raw)
    pixels = np.stack([pixels for _, pixels in decoded])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def _read_split(folder: Path, layout: Layout, height: int, width: int,
                digest: hashlib._Hash) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    entries = list_split(folder, layout)
    images = read_images(entries, height, width, digest)
    pids = torch.tensor([e.pid for e in entries], dtype=torch.int64)
    camids = torch.tensor([e.camid for e in entries], dtype=torch.int64)
    return images, pids, camids


def load_folder(folder: Path, layout: Layout, height: int, width: int) -> ImageDataset:
    """Read a release folder (the one holding the three split folders)."""
    digest = hashlib.sha256(f"{layout.name} {height}x{width}".encode())
    train_x, train_pid, train_cam = _read_split(folder / SPLIT_DIRS["train"], layout, height,
                                                width, digest)
    query_x, query_pid, query_cam = _read_split(folder / SPLIT_DIRS["query"], layout, height,
                                                width, digest)
    gal_x, gal_pid, gal_cam = _read_split(folder / SPLIT_DIRS["gallery"], layout, height, width,
                                          digest)
    ids = torch.unique(train_pid)  # sorted: training id i is the i-th smallest person id
    train = ImageSplit(train_x, torch.searchsorted(ids, train_pid),
                       {"pid": train_pid, "camid": train_cam})
    synthetic = (folder / SYNTHETIC_MARKER).is_file()
    return ImageDataset(
        name=layout.name,
        train=train,
        test=ImageSplit(query_x, query_pid, {"camid": query_cam}),
        extra_splits={"gallery": ImageSplit(gal_x, gal_pid, {"camid": gal_cam})},
        num_classes=len(ids),
        class_names=[f"{int(p):04d}" for p in ids],
        mean=MEAN,
        std=STD,
        data_source="synthetic" if synthetic else "real",
        root=str(folder),
        fingerprint=digest.hexdigest(),
        notice=(f"the {layout.title} files in {folder} were generated by kdbench: results are "
                "on SYNTHETIC data") if synthetic else None,
    )


def synthetic_folder(layout: Layout, cache_dir: str | Path | None) -> Path:
    """The cached generated stand-in (written once, atomically, at the release's 128x64)."""
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = (f"{layout.name}-v{GENERATOR_VERSION}-seed{SYNTHETIC['seed']}-"
            f"{SYNTHETIC['train_ids']}x{SYNTHETIC['test_ids']}")
    target = base / "synthetic" / name
    if layout.find(target) is None:
        _write_once(target, layout)
    folder = layout.find(target)
    if folder is None:
        raise DatasetError(f"the cached synthetic {layout.title} in {target} is incomplete; "
                           "delete that folder and it will be generated again")
    return folder


def _write_once(target: Path, layout: Layout) -> None:
    """Generate in a staging folder and rename it into place (safe with concurrent runs)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    except OSError as exc:
        raise DatasetError(f"cannot create the synthetic {layout.title} under {target.parent}: "
                           f"{exc}; pass a writable cache_dir") from exc
    try:
        write_reid_dataset(staging, layout, **SYNTHETIC)
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if layout.find(target) is None:  # not merely another process that finished first
            raise DatasetError(f"cannot write the synthetic {layout.title} to {target}: "
                               f"{exc}") from exc


def load_reid(layout: Layout, root: str | Path, height: int, width: int,
              synthetic_fallback: bool, cache_dir: str | Path | None) -> ImageDataset:
    """The release under ``root``, else (if allowed) the generated stand-in, else an error."""
    if height < 16 or width < 8:
        raise ConfigError(f"{layout.name}: height and width must be >= 16 and >= 8 pixels; "
                          f"got {height}x{width} (Market-1501 boxes are 128x64)")
    folder = layout.find(root)
    if folder is not None:
        return load_folder(folder, layout, height, width)
    looked = ", ".join(str(c) for c in layout.candidates(root))
    splits = ", ".join(f"{d}/" for d in SPLIT_DIRS.values())
    if not synthetic_fallback:
        raise DatasetError(
            f"{layout.title} not found: looked for {splits} in {looked}. Expected layout: "
            f"{layout.expected()}. To provide it, {layout.how_to_get}; or set "
            "synthetic_fallback=True to run on generated data.")
    synthetic = load_folder(synthetic_folder(layout, cache_dir), layout, height, width)
    return replace(synthetic, notice=(
        f"no real {layout.title} found (looked for {splits} in {looked}); using a SYNTHETIC "
        f"stand-in generated by kdbench at {synthetic.root}. Results are on generated data and "
        f"not comparable with {layout.title} numbers. To use the real data, "
        f"{layout.how_to_get}."))


@DATASETS.register_module("market1501")
def market1501(root: str = "data", height: int = 256, width: int = 128,
               synthetic_fallback: bool = False, cache_dir: str | None = None) -> ImageDataset:
    """Market-1501 (Zheng et al. 2015): 751 training ids, 3,368 queries, 15,913 gallery."""
    return load_reid(MARKET1501, root, height, width, synthetic_fallback, cache_dir)


@DATASETS.register_module("dukemtmc_reid")
def dukemtmc_reid(root: str = "data", height: int = 256, width: int = 128,
                  synthetic_fallback: bool = False, cache_dir: str | None = None) -> ImageDataset:
    """DukeMTMC-reID (Zheng et al. 2017): 702 training ids, 2,228 queries, 17,661 gallery."""
    return load_reid(DUKEMTMC_REID, root, height, width, synthetic_fallback, cache_dir)
