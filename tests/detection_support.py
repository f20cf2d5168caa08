"""Helpers shared by the detection tests: configs on the synthetic set, models, batches."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from mmdet.registry import DATASETS, MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from kdbench.detection.data import DetectionData, prepare_data
from kdbench.detection.mmdet_runner import load_config
from kdbench.detection.models import CONFIGS_DIR

register_all_modules(init_default_scope=True)


def synthetic_data(root: Path, cache_dir: Path) -> DetectionData:
    """The conftest ``synthetic_coco`` set as the benchmark sees it."""
    return prepare_data({"type": "synthetic", "num_train": 12, "num_val": 6}, cache_dir,
                        root=str(root))


def smoke_config(name: str, data: DetectionData, work_dir: Path, **options: Any) -> Config:
    return load_config(CONFIGS_DIR / "smoke" / f"{name}.py", data, work_dir=work_dir, seed=0,
                       options=options)


def build(model_cfg: Any) -> torch.nn.Module:
    return MODELS.build(copy.deepcopy(model_cfg))


def dataset(cfg: Config, split: str = "train"):
    loader = cfg.train_dataloader if split == "train" else cfg.test_dataloader
    return DATASETS.build(copy.deepcopy(loader.dataset))


def batch(cfg: Config, model: torch.nn.Module, n: int = 2, split: str = "train"):
    """``n`` images through the split's pipeline and the model's data preprocessor."""
    data = dataset(cfg, split)
    packed = pseudo_collate([data[i] for i in range(n)])
    out = model.data_preprocessor(packed, training=split == "train")
    return out["inputs"], out["data_samples"]
