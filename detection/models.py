"""The detection task's models: mmdet detectors as the harness builds, measures and caches them.

A detection model name stands for an mmdet config (``detection/configs``): the network *and*
the schedule it trains with alone, as in mmdet's model zoo. ``build_model(name, num_classes)``
gives a :class:`Detector`, whose ``forward`` is what the harness measures: a normalised image
batch in, CenterNet's heatmap, size and offset maps out (no preprocessing, no box decoding).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from torch import nn

from kdbench.benchmarks.registry import MODELS
from kdbench.detection.mmdet_runner import build_detector

CONFIGS_DIR = Path(__file__).parent / "configs"
# name -> the mmdet config that builds and trains it alone (relative to CONFIGS_DIR)
MODEL_CONFIGS = {
    # CPU-sized CenterNets of the synthetic set (ResNet-18 backbone at half / quarter width)
    "centernet_r18w32": "smoke/teacher.py",
    "centernet_r18w16": "smoke/student.py",
    # mmdet's COCO CenterNet recipe: ResNet-50 teacher, ResNet-18 student
    "centernet_r50": "full/teacher.py",
    "centernet_r18": "full/student.py",
}


def config_path(name: str) -> Path:
    """A config named relative to ``detection/configs``, or a path to one."""
    path = Path(name).expanduser()
    return path if path.is_absolute() else CONFIGS_DIR / path


class Detector(nn.Module):
    """An mmdet detector plus the config it trains with (and that config's overrides, e.g.
    a method's ``cfg_options``); ``forward`` is its tensor mode."""

    def __init__(self, detector: nn.Module, config: Path | str,
                 options: dict[str, Any] | None = None):
        super().__init__()
        self.detector = detector
        self.config_path = Path(config)
        self.config_options = dict(options or {})

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.detector(images, mode="tensor")
        return tuple(level for per_level in outputs for level in per_level)


def build_detector_model(config: Path, num_classes: int) -> Detector:
    """The untrained detector of ``config`` with ``num_classes`` heatmap channels."""
    cfg = Config.fromfile(str(config))
    cfg.model.bbox_head.num_classes = num_classes
    return Detector(build_detector(cfg), config)


def _builder(relative: str) -> Callable[..., Detector]:
    def build(num_classes: int) -> Detector:
        return build_detector_model(config_path(relative), num_classes)

    build.mmdet_config = relative  # what the detection task and its methods ask the model
    build.__doc__ = f"mmdet {relative} (detection/configs)"
    return build


for _name, _relative in MODEL_CONFIGS.items():
    MODELS.register_module(name=_name, module=_builder(_relative))


def mmdet_config(arch: str) -> Path | None:
    """The config of a registered detection model; None for any other model."""
    from kdbench.benchmarks.registry import lookup

    relative = getattr(lookup(MODELS, arch), "mmdet_config", None)
    return None if relative is None else config_path(relative)
