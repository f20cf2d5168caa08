"""mmengine's Runner for the detection task: configs pointed at the data, training, COCO scoring.

The harness never calls mmengine itself: the detection task (``detection.task``) and its
methods (``detection.ctkd``) train and score through these functions, with mmdet's own
datasets, pipelines, CenterNet and ``CocoMetric``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from torch import nn

from kdbench.benchmarks.errors import ConfigError
from kdbench.detection.data import DetectionData

METRICS = {"mAP": "coco/bbox_mAP", "AP50": "coco/bbox_mAP_50", "AP75": "coco/bbox_mAP_75"}
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def load_config(path: Path, data: DetectionData, *, work_dir: Path, seed: int,
                options: Mapping[str, Any] | None = None, verbose: bool = False) -> Config:
    """An mmdet config pointed at ``data``, with the run's seed, work dir and log level."""
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(dict(options))
    for loader in DATALOADERS:
        if loader in cfg:
            _point_dataset(_innermost_dataset(cfg[loader]["dataset"]), data,
                           train=loader == "train_dataloader")
    for evaluator in ("val_evaluator", "test_evaluator"):
        if evaluator in cfg:
            cfg[evaluator]["ann_file"] = str(data.root / data.layout.val_ann)
    _check_classes(cfg, data, path)
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=seed)
    cfg.resume = True  # continue from the last epoch checkpoint when a run was interrupted
    cfg.log_level = "INFO" if verbose else "WARNING"
    # mmengine keeps one global visualizer per name; a shared name would keep writing into the
    # first run's (deleted) work dir
    cfg.experiment_name = f"{path.stem}-seed{seed}-{time.time_ns()}"
    if "visualizer" in cfg:
        cfg.visualizer["name"] = cfg.experiment_name
    return cfg


def _innermost_dataset(dataset: dict) -> dict:
    """The CocoDataset inside wrappers such as RepeatDataset."""
    while "dataset" in dataset:
        dataset = dataset["dataset"]
    return dataset


def _point_dataset(dataset: dict, data: DetectionData, train: bool) -> None:
    layout = data.layout
    dataset["data_root"] = str(data.root)
    dataset["ann_file"] = layout.train_ann if train else layout.val_ann
    dataset["data_prefix"] = dict(img=layout.train_images if train else layout.val_images)


def _check_classes(cfg: Config, data: DetectionData, path: Path) -> None:
    names = _innermost_dataset(cfg.train_dataloader.dataset).get("metainfo", {}).get("classes")
    if names is not None and tuple(names) != data.classes:
        raise ConfigError(f"{path}: dataset classes {tuple(names)} differ from the data's "
                          f"categories {data.classes}")
    head_classes = cfg.model.bbox_head.num_classes
    if head_classes != len(data.classes):
        raise ConfigError(f"{path}: model.bbox_head.num_classes={head_classes} but the data has "
                          f"{len(data.classes)} categories ({', '.join(data.classes)})")


def train(cfg: Config) -> nn.Module:
    """Train with mmengine's Runner; return the trained model (unwrapped, eval mode).

    The config's in-training validation is switched off: the harness evaluates the returned
    model itself, once, right after.
    """
    cfg = copy.deepcopy(cfg)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    with model_key_errors(cfg):
        runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return model.eval()


def coco_scores(detector: nn.Module, cfg: Config, work_dir: Path, verbose: bool = False
                ) -> dict[str, float]:
    """COCO bbox mAP / AP50 / AP75 (percent) of ``detector`` with the config's CocoMetric."""
    runner = Runner(model=detector, work_dir=str(work_dir), test_dataloader=cfg.test_dataloader,
                    test_evaluator=cfg.test_evaluator, test_cfg=cfg.test_cfg,
                    default_scope=cfg.get("default_scope", "mmdet"), env_cfg=cfg.env_cfg,
                    log_level=cfg.log_level, experiment_name=f"eval-{time.time_ns()}")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:  # pycocotools prints its whole summary table
        results = runner.test()
    return {name: 100.0 * float(results[key]) for name, key in METRICS.items()}


def build_detector(cfg: Config) -> nn.Module:
    """The (untrained) detector of ``cfg.model``."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    with model_key_errors(cfg):
        return MODELS.build(copy.deepcopy(cfg.model))


def recipe_of(cfg: Config) -> dict[str, Any]:
    """The training schedule as recorded: loop, optimizer, batch size, schedulers."""
    return {
        "train_cfg": cfg.get("train_cfg"),
        "optimizer": cfg.optim_wrapper.get("optimizer"),
        "batch_size": cfg.train_dataloader.batch_size,
        "param_scheduler": cfg.get("param_scheduler"),
    }


@contextlib.contextmanager
def model_key_errors(cfg: Config) -> Iterator[None]:
    """A model config key its class does not take (often a cfg_options typo, or a ctkd-only
    key given to every model) becomes a ConfigError naming the config, not a traceback."""
    try:
        yield
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"{cfg.filename}: {exc}. Check the model keys of this config and of "
                          f"the cfg_options given to it: the dataset's cfg_options reach every "
                          f"model, a key that only ctkd's config has belongs in "
                          f"ctkd's own (--set ctkd.cfg_options=...)") from exc
