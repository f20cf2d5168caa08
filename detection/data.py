"""Where a detection suite's COCO-format data lives: a real COCO directory or the synthetic set.

Both are the same on disk (``annotations/instances_{train,val}2017.json`` + image folders), so
mmdet's ``CocoDataset`` and ``CocoMetric`` read them alike; the records say which one it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.benchmarks.config import from_mapping
from kdbench.benchmarks.errors import ConfigError, DatasetError
from kdbench.benchmarks.teachers import sha256_file
from kdbench.detection.synthetic import SyntheticCocoSpec, write_synthetic_coco

DATASET_TYPES = ("coco", "synthetic")


@dataclass(frozen=True)
class CocoLayout:
    """Paths inside a COCO root (COCO 2017's names by default)."""

    train_ann: str = "annotations/instances_train2017.json"
    val_ann: str = "annotations/instances_val2017.json"
    train_images: str = "train2017/"
    val_images: str = "val2017/"

    def describe(self) -> str:
        return "\n".join(f"  <root>/{p}" for p in (self.train_ann, self.val_ann,
                                                    self.train_images, self.val_images))


@dataclass(frozen=True)
class CocoSpec(CocoLayout):
    """A suite's ``dataset`` section for real COCO: ``dict(type="coco", root=..., ...)``."""

    root: str = "data/coco"
    name: str = "coco2017"


@dataclass(frozen=True)
class DetectionData:
    """A COCO-format dataset on disk, ready for mmdet configs."""

    name: str
    root: Path
    layout: CocoLayout
    data_source: str  # real | synthetic
    classes: tuple[str, ...]
    fingerprint: str  # sha256 of the annotation files
    val_images: int  # images the metrics are computed on


def prepare_data(spec: dict[str, Any], cache_dir: Path, root: str | None = None) -> DetectionData:
    """Find (real COCO) or write once into the cache (synthetic) the suite's dataset."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind == "coco":
        coco = from_mapping(CocoSpec, {**spec, **({"root": root} if root else {})},
                            "dataset (type='coco')")
        return _real_coco(coco)
    if kind == "synthetic":
        synthetic = from_mapping(SyntheticCocoSpec, spec, "dataset (type='synthetic')")
        return _synthetic_coco(synthetic, Path(root) if root else None, cache_dir)
    raise ConfigError(f"dataset type must be one of {', '.join(DATASET_TYPES)}; got {kind!r}")


def _real_coco(spec: CocoSpec) -> DetectionData:
    root = Path(spec.root).expanduser()
    layout = CocoLayout(spec.train_ann, spec.val_ann, spec.train_images, spec.val_images)
    missing = [p for p in (layout.train_ann, layout.val_ann, layout.train_images,
                           layout.val_images) if not (root / p).exists()]
    if missing:
        raise DatasetError(
            f"COCO not found under {root.resolve()}: missing {', '.join(missing)}. Expected:\n"
            f"{layout.describe()}\nDownload COCO 2017 (train/val images and annotations) from "
            f"cocodataset.org and unpack it there, or pass --data-root DIR "
            f"(or run the synthetic suite: --suite synthetic-coco)")
    classes, images = _categories_and_images(root / layout.val_ann)
    return DetectionData(spec.name, root, layout, "real", classes, _fingerprint(root, layout),
                         images)


def _synthetic_coco(spec: SyntheticCocoSpec, root: Path | None, cache_dir: Path
                    ) -> DetectionData:
    """Write the set to ``root`` or a cache folder named by the spec's hash (written once)."""
    layout = CocoLayout()
    target = root or Path(cache_dir) / "data" / f"synthetic-coco-{spec.key}"
    if not (target / layout.val_ann).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:  # a killed run leaves no half-written set under the final name
            write_synthetic_coco(staging, spec)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    classes, images = _categories_and_images(target / layout.val_ann)
    return DetectionData("synthetic-coco", target, layout, "synthetic", classes,
                         _fingerprint(target, layout), images)


def _categories_and_images(ann_file: Path) -> tuple[tuple[str, ...], int]:
    """Category names in id order and the number of images of an instances file."""
    ann = json.loads(ann_file.read_text())
    names = tuple(c["name"] for c in sorted(ann["categories"], key=lambda c: c["id"]))
    return names, len(ann["images"])


def _fingerprint(root: Path, layout: CocoLayout) -> str:
    files = "".join(sha256_file(root / ann) for ann in (layout.train_ann, layout.val_ann))
    return hashlib.sha256(files.encode()).hexdigest()
