"""The detection task as the harness sees it: COCO-format data that trains and scores detectors.

A detection suite lists ``detection.task`` in its ``imports``; importing it registers the
datasets ``coco_detection`` (a real COCO 2017 directory) and ``synthetic_coco`` (the generated
set, written once into the cache), the CenterNet models (``detection.models``), the
``coco_bbox`` evaluator (COCO bbox mAP / AP50 / AP75 with mmdet's ``CocoMetric``) and the
``ctkd`` method (``detection.ctkd``). Everything else — planning, the teacher cache, running,
measuring, records, the leaderboard — is the harness's, as for every other task.

A model learns this data alone (the teacher, the ``scratch`` row) with mmengine's Runner and
its own mmdet config; ``cfg_options`` in the suite's dataset section override keys of every
config trained or evaluated on the data (e.g. ``{"train_cfg.max_epochs": 2}``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from torch import nn

from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.method import RunContext
from kdbench.benchmarks.registry import DATASETS, EVALUATORS
from kdbench.detection import ctkd as _ctkd  # noqa: F401  (registers the ctkd method)
from kdbench.detection.data import DetectionData, prepare_data
from kdbench.detection.mmdet_runner import coco_scores, load_config, recipe_of, train
from kdbench.detection.models import Detector, mmdet_config

log = logging.getLogger("kdbench")


@dataclass(frozen=True, eq=False)
class CocoSplit:
    """One split of a COCO-format set (its annotation file names it); always used whole."""

    name: str  # train | val
    image_ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def labels(self) -> torch.Tensor:
        """The split's image ids: they identify the test images a teacher score is for."""
        return self.image_ids

    def subset(self, n: int | None, seed: int) -> CocoSplit:
        if n is None or n >= len(self):
            return self
        raise ConfigError(f"a detection suite trains and tests on whole COCO splits; leave "
                          f"the budget's train_subset / test_subset out (got {n} of the "
                          f"{len(self)} {self.name} images)")


@dataclass(frozen=True, eq=False)
class DetectionDataset:
    """A COCO-format dataset on disk plus how detectors train and score on it."""

    coco: DetectionData
    input_size: tuple[int, int]  # (H, W) at which MACs and latency are measured
    train: CocoSplit
    test: CocoSplit
    cfg_options: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False  # mmengine's INFO logs
    notice: str | None = None

    @property
    def name(self) -> str:
        return self.coco.name

    @property
    def data_source(self) -> str:
        return self.coco.data_source

    @property
    def fingerprint(self) -> str:
        return self.coco.fingerprint

    @property
    def num_classes(self) -> int:
        return len(self.coco.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.coco.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.input_size)

    def config(self, path: Path, *, work_dir: Path, seed: int,
               options: dict[str, Any] | None = None) -> Config:
        """The mmdet config ``path`` pointed at this data, with the dataset's cfg_options
        and then ``options``."""
        return load_config(path, self.coco, work_dir=work_dir, seed=seed,
                           options={**self.cfg_options, **(options or {})},
                           verbose=self.verbose)

    # ---- how a detector learns this data alone (benchmarks.supervised) -------------------
    def train_alone(self, model: nn.Module, *, split: Any, recipe: TrainRecipe, seed: int,
                    device: torch.device, checkpoint: Path, desc: str,
                    progress: bool | None) -> None:
        """Train ``model`` with its own mmdet config and mmengine's Runner (resuming the
        last epoch checkpoint of an interrupted run in the same work folder)."""
        detector = _detector(model)
        cfg = self.config(detector.config_path, work_dir=checkpoint.with_suffix(""), seed=seed,
                          options=detector.config_options)
        log.info("  %s: training %s with mmengine's Runner", desc, detector.config_path.name)
        detector.detector = train(cfg)

    def score(self, model: nn.Module, *, split: Any = None, recipe: TrainRecipe | None = None,
              device: torch.device | None = None) -> dict[str, float]:
        """COCO bbox mAP / AP50 / AP75 (percent) on the val split."""
        detector = _detector(model)
        with tempfile.TemporaryDirectory(prefix="kdbench-coco-eval-") as tmp:
            cfg = self.config(detector.config_path, work_dir=Path(tmp), seed=0,
                              options=detector.config_options)
            return coco_scores(detector.detector, cfg, Path(tmp) / "eval", self.verbose)

    def recipe_of(self, model: nn.Module) -> dict[str, Any] | None:
        """The schedule ``model`` trains with: its mmdet config's, with the overrides."""
        detector = _detector(model)
        return recipe_of(self.config(detector.config_path, work_dir=Path("."), seed=0,
                                     options=detector.config_options))

    def training_key(self, arch: str) -> str | None:
        """The model's mmdet config (its schedule included) with the dataset's options."""
        path = mmdet_config(arch)
        if path is None:
            raise ConfigError(f"model {arch!r} is not a detection model; a detection suite's "
                              "pairs name registered mmdet detectors (detection/models.py)")
        cfg = Config.fromfile(str(path))
        if self.cfg_options:
            cfg.merge_from_dict(dict(self.cfg_options))
        spec = {"config": cfg.to_dict()}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _detector(model: nn.Module) -> Detector:
    inner = getattr(model, "model", model)  # a FrozenTeacher holds the detector as .model
    if not isinstance(inner, Detector):
        raise ConfigError(f"the detection task trains and scores detection models "
                          f"(detection.models.Detector), not {type(inner).__name__}")
    return inner


def _dataset(coco: DetectionData, input_size: tuple[int, int] | None,
             cfg_options: dict[str, Any] | None, verbose: bool) -> DetectionDataset:
    train_ids, val_ids = (_image_ids(coco.root / ann)
                          for ann in (coco.layout.train_ann, coco.layout.val_ann))
    size = tuple(input_size) if input_size else None
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ConfigError(f"dataset input_size must be (height, width), got {input_size!r}")
    return DetectionDataset(coco, size or (512, 512), CocoSplit("train", train_ids),
                            CocoSplit("val", val_ids), dict(cfg_options or {}), verbose)


def _image_ids(ann_file: Path) -> torch.Tensor:
    ids = sorted(image["id"] for image in json.loads(ann_file.read_text())["images"])
    return torch.tensor(ids, dtype=torch.int64)


@DATASETS.register_module("coco_detection")
def coco_detection(root: str = "data/coco", input_size: tuple[int, int] = (512, 512),
                   cfg_options: dict[str, Any] | None = None, verbose: bool = False,
                   **layout: Any) -> DetectionDataset:
    """A COCO 2017 directory (``annotations/instances_{train,val}2017.json``, ``train2017/``,
    ``val2017/``; other names via ``train_ann``, ``val_ann``, ``train_images``,
    ``val_images``); ``--data-root`` points ``root`` elsewhere."""
    coco = prepare_data({"type": "coco", "root": root, **layout}, Path("."))
    return _dataset(coco, input_size, cfg_options, verbose)


@DATASETS.register_module("synthetic_coco")
def synthetic_coco(cache_dir: str, root: str | None = None,
                   input_size: tuple[int, int] | None = None,
                   cfg_options: dict[str, Any] | None = None, verbose: bool = False,
                   **spec: Any) -> DetectionDataset:
    """The generated COCO-format set (detection/synthetic.py): written once into the cache
    (or into ``root``), measured at its image size unless ``input_size`` says otherwise."""
    coco = prepare_data({"type": "synthetic", **spec}, Path(cache_dir), root)
    size = spec.get("image_size", 128)
    return _dataset(coco, input_size or (size, size), cfg_options, verbose)


@EVALUATORS.register_module("coco_bbox")
def coco_bbox(model: nn.Module, ctx: RunContext) -> dict[str, float]:
    """COCO bbox mAP / AP50 / AP75 (percent) of a returned detector on the val split."""
    data = ctx.data
    if not isinstance(data, DetectionDataset):
        raise ConfigError(f"the coco_bbox evaluator needs a detection dataset; suite "
                          f"{ctx.suite.name!r} has {type(data).__name__}")
    return data.score(model)
