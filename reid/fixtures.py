"""Writer of small ReID datasets in exactly the Market-1501 (or DukeMTMC-reID) layout.

Every file is a real JPEG under the release's folder and file-name scheme, so the real loader
(and torchreid) reads it like the release. The images are drawn "pedestrians": an identity is
a fixed set of clothing colours and shapes (hair, top with an optional stripe, trousers, build),
a camera adds its own background, colour cast and brightness, and every image is jittered in
position and scale and noised. The same identity therefore looks alike across cameras without
being identical, which is what a ReID model has to learn.

Query/gallery follow the protocol's needs: each test identity appears in ``cameras_per_id``
cameras; one image from each of its first ``queries_per_id`` cameras is a query, the rest goes
to the gallery, so every query has a same-identity gallery image from another camera (a real
match) and one from its own camera (which the metric must ignore). Distractors (person 0000)
and a junk box (person -1, which loaders drop) are added to the gallery.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kdbench.benchmarks.errors import ConfigError
from kdbench.reid.layout import (
    DISTRACTOR_PID,
    DUKEMTMC_REID,
    JUNK_PID,
    MARKET1501,
    SPLIT_DIRS,
    SYNTHETIC_MARKER,
    Layout,
)

GENERATOR_VERSION = 1  # bump when the pixels change, so cached synthetic sets are rewritten
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class _Person:
    """The clothing of one identity (RGB colours 0..255 and relative shapes)."""

    hair: np.ndarray
    skin: np.ndarray
    top: np.ndarray
    stripe: np.ndarray | None
    bottom: np.ndarray
    build: float  # torso width as a fraction of the image width
    waist: float  # where the trousers start, as a fraction of the height


@dataclass(frozen=True)
class _Camera:
    background: np.ndarray
    gain: np.ndarray  # per-channel colour cast
    brightness: float


def _person(rng: np.random.Generator) -> _Person:
    def colour() -> np.ndarray:
        return rng.uniform(0, 255, 3)

    return _Person(
        hair=rng.uniform(10, 120, 3), skin=rng.uniform(120, 230, 3), top=colour(),
        stripe=colour() if rng.random() < 0.5 else None, bottom=colour(),
        build=float(rng.uniform(0.34, 0.5)), waist=float(rng.uniform(0.5, 0.6)),
    )


def _camera(rng: np.random.Generator) -> _Camera:
    return _Camera(background=rng.uniform(40, 200, 3), gain=rng.uniform(0.8, 1.2, 3),
                   brightness=float(rng.uniform(-25, 25)))


def render(person: _Person | None, camera: _Camera, rng: np.random.Generator,
           height: int = 128, width: int = 64) -> np.ndarray:
    """One uint8 image [height, width, 3] of ``person`` seen by ``camera`` (None: no person)."""
    img = np.broadcast_to(camera.background, (height, width, 3)).copy()
    img += rng.normal(0, 18, (1, width, 3))  # background structure varies per shot
    if person is not None:
        _draw(img, person, rng)
    img = img * camera.gain + camera.brightness + rng.normal(0, 10, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw(img: np.ndarray, person: _Person, rng: np.random.Generator) -> None:
    """Paint ``person`` into the float image, randomly shifted and scaled."""
    height, width, _ = img.shape
    y = np.arange(height)[:, None] / height
    x = np.arange(width)[None, :] / width
    scale = rng.uniform(0.9, 1.1)
    cx, top = 0.5 + rng.uniform(-0.08, 0.08), rng.uniform(0.0, 0.06)
    yy = (y - top) / scale
    half = person.build * scale / 2
    torso = (yy >= 0.2) & (yy < person.waist) & (np.abs(x - cx) < half)
    legs = (yy >= person.waist) & (yy < 0.97) & (np.abs(x - cx) < half * 0.9) & (
        np.abs(x - cx) > half * 0.12)
    head = ((yy - 0.12) / 0.085) ** 2 + ((x - cx) / (half * 0.6)) ** 2 < 1
    hair = head & (yy < 0.1)
    img[torso] = person.top
    if person.stripe is not None:
        img[torso & (np.abs(yy - (0.2 + person.waist) / 2) < 0.04)] = person.stripe
    img[legs] = person.bottom
    img[head] = person.skin
    img[hair] = person.hair


def _check_sizes(**sizes: int) -> None:
    for key, (value, minimum) in sizes.items():
        if value < minimum:
            raise ConfigError(f"{key} must be >= {minimum}; got {value}")


def write_reid_dataset(
    root: str | Path,
    layout: Layout = MARKET1501,
    *,
    train_ids: int = 8,
    test_ids: int = 8,
    cameras_per_id: int = 3,
    images_per_camera: int = 2,
    queries_per_id: int = 1,
    distractors: int = 4,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
) -> Path:
    """Write a generated set under ``<root>/<dataset_dir>/<version_dir>/``; return that folder.

    The same arguments give byte-identical files.
    """
    _check_sizes(train_ids=(train_ids, 1), test_ids=(test_ids, 1),
                 cameras_per_id=(cameras_per_id, 2), images_per_camera=(images_per_camera, 2),
                 queries_per_id=(queries_per_id, 1), distractors=(distractors, 0),
                 height=(height, 8), width=(width, 4))
    if cameras_per_id > layout.cameras or queries_per_id >= cameras_per_id:
        raise ConfigError(
            f"need queries_per_id < cameras_per_id <= {layout.cameras} (the {layout.title} "
            f"cameras); got {queries_per_id} and {cameras_per_id}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / layout.dataset_dir / layout.version_dir
    for d in SPLIT_DIRS.values():
        (folder / d).mkdir(parents=True, exist_ok=True)
    cameras = [_camera(rng) for _ in range(layout.cameras)]
    pids = rng.choice(np.arange(1, 1502), train_ids + test_ids, replace=False)
    frames = iter(range(1, 10**6))
    writer = _Writer(folder, layout, cameras, frames, height, width)
    for pid in sorted(pids[:train_ids].tolist()):
        person = _person(rng)
        for cam in rng.choice(layout.cameras, cameras_per_id, replace=False):
            for _ in range(images_per_camera):
                writer.write("train", pid, int(cam), person, rng)
    for pid in sorted(pids[train_ids:].tolist()):
        person = _person(rng)
        for i, cam in enumerate(rng.choice(layout.cameras, cameras_per_id, replace=False)):
            for j in range(images_per_camera):
                split = "query" if i < queries_per_id and j == 0 else "gallery"
                writer.write(split, pid, int(cam), person, rng)
    for _ in range(distractors):
        writer.write("gallery", DISTRACTOR_PID, int(rng.integers(layout.cameras)), _person(rng),
                     rng)
    writer.write("gallery", JUNK_PID, 0, None, rng)  # junk: a box with no person in it
    (folder / SPLIT_DIRS["gallery"] / "Thumbs.db").write_bytes(b"\0" * 64)  # as in the release
    (folder / SYNTHETIC_MARKER).write_text(
        f"generated by kdbench (reid fixture generator v{GENERATOR_VERSION}, seed {seed}); "
        "not real data\n")
    return folder


class _Writer:
    """Renders and saves images with increasing frame numbers (unique file names)."""

    def __init__(self, folder: Path, layout: Layout, cameras: list[_Camera],
                 frames: Iterator[int], height: int, width: int):
        self.folder, self.layout, self.cameras, self.frames = folder, layout, cameras, frames
        self.height, self.width = height, width

    def write(self, split: str, pid: int, camera: int, person: _Person | None,
              rng: np.random.Generator) -> None:
        pixels = render(person, self.cameras[camera], rng, self.height, self.width)
        frame = 0 if pid == JUNK_PID else next(self.frames)
        name = self.layout.file_name(pid, camera + 1, frame)
        Image.fromarray(pixels).save(self.folder / SPLIT_DIRS[split] / name,
                                     quality=_JPEG_QUALITY)


def write_market1501(root: str | Path, **kwargs) -> Path:
    """``write_reid_dataset`` in the Market-1501 layout."""
    return write_reid_dataset(root, MARKET1501, **kwargs)


def write_dukemtmc_reid(root: str | Path, **kwargs) -> Path:
    """``write_reid_dataset`` in the DukeMTMC-reID layout."""
    return write_reid_dataset(root, DUKEMTMC_REID, **kwargs)
