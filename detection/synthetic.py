"""A tiny synthetic COCO set: coloured shapes on noise, written in the real COCO layout.

``write_synthetic_coco(root)`` writes what a real COCO directory holds, at toy scale::

    root/annotations/instances_train2017.json   root/train2017/000001.png ...
    root/annotations/instances_val2017.json     root/val2017/000001.png ...

so mmdet's ``CocoDataset``, its pipelines and ``CocoMetric`` read it exactly as they read COCO,
and tests and the smoke benchmark run offline. Each image has a uniform-noise background and
1-3 filled rectangles or ellipses; the class is the colour (one hue per class, small jitter).
Boxes never overlap, so no object is hidden and same-class centres are at least 3 cells apart
on a stride-4 map: CenterNet's 3x3 local-maximum decoding can then recover every object, which
makes "ground-truth targets decoded back give AP = 1.0" an exact check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from kdbench.benchmarks.errors import ConfigError

# Bump when the generated pixels or annotations change, so cached sets are regenerated.
GENERATOR_VERSION = 1
SPLITS = ("train2017", "val2017")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 70, 220),
    "green": (40, 190, 60),
    "yellow": (230, 210, 40),
}
_COLOUR_JITTER = 20
_NOISE_RANGE = (60, 170)  # background grey levels: darker and lighter than every class colour
_MAX_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class SyntheticCocoSpec:
    """Everything that determines the generated set (its cache key)."""

    num_train: int = 16
    num_val: int = 8
    image_size: int = 128
    classes: tuple[str, ...] = ("red", "blue")
    min_side: int = 12
    max_side: int = 60
    max_objects: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in PALETTE]
        if unknown or not self.classes:
            raise ConfigError(f"synthetic COCO classes must be a non-empty subset of "
                              f"{', '.join(PALETTE)}; got {list(self.classes)}")
        if not 4 <= self.min_side <= self.max_side <= self.image_size // 2:
            raise ConfigError(f"need 4 <= min_side <= max_side <= image_size/2; got "
                              f"min_side={self.min_side}, max_side={self.max_side}, "
                              f"image_size={self.image_size}")
        if self.num_train < 1 or self.num_val < 1 or self.max_objects < 1:
            raise ConfigError("num_train, num_val and max_objects must be at least 1")

    @property
    def key(self) -> str:
        """Short hash of the spec and the generator version (names the cache folder)."""
        spec = {**asdict(self), "version": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def write_synthetic_coco(root: Path | str, spec: SyntheticCocoSpec | None = None) -> Path:
    """Write the set under ``root`` (created) and return ``root``; deterministic in ``spec``."""
    spec = spec or SyntheticCocoSpec()
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    for split, count in zip(SPLITS, (spec.num_train, spec.num_val), strict=True):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            file_name = f"{image_id:06d}.png"
            picture, objects = _draw_image(rng, spec)
            picture.save(root / split / file_name)
            images.append({"id": image_id, "file_name": file_name,
                           "width": spec.image_size, "height": spec.image_size})
            for category_id, box in objects:
                annotations.append(_annotation(len(annotations) + 1, image_id, category_id, box))
        _write_json(root / "annotations" / f"instances_{split}.json", {
            "info": {"description": f"kdbench synthetic COCO v{GENERATOR_VERSION}",
                     "spec": asdict(spec)},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(spec.classes)],
        })
    return root


def _draw_image(rng: np.random.Generator, spec: SyntheticCocoSpec
                ) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    size = spec.image_size
    noise = rng.integers(*_NOISE_RANGE, size=(size, size, 1), dtype=np.uint8)
    picture = Image.fromarray(np.repeat(noise, 3, axis=2), mode="RGB")
    draw = ImageDraw.Draw(picture)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        box = _place_box(rng, spec, [b for _, b in objects])
        if box is None:
            break
        label = int(rng.integers(len(spec.classes)))
        colour = _jitter(rng, PALETTE[spec.classes[label]])
        x, y, w, h = box
        corners = (x, y, x + w - 1, y + h - 1)  # PIL's corners are inclusive
        if rng.random() < 0.5:
            draw.rectangle(corners, fill=colour)
        else:
            draw.ellipse(corners, fill=colour)
        objects.append((label + 1, box))
    return picture, objects


def _place_box(rng: np.random.Generator, spec: SyntheticCocoSpec,
               taken: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    """A random (x, y, w, h) box inside the image that overlaps none of ``taken``."""
    for _ in range(_MAX_PLACEMENT_TRIES):
        w, h = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
        x = int(rng.integers(0, spec.image_size - w + 1))
        y = int(rng.integers(0, spec.image_size - h + 1))
        if not any(_overlap((x, y, w, h), other) for other in taken):
            return x, y, w, h
    return None


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int]) -> tuple[int, int, int]:
    shift = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3)
    r, g, b = (int(c) for c in np.clip(np.asarray(colour) + shift, 0, 255))
    return r, g, b


def _annotation(ann_id: int, image_id: int, category_id: int,
                box: tuple[int, int, int, int]) -> dict[str, Any]:
    x, y, w, h = box
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
