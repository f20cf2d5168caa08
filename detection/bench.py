"""The detection benchmark: teacher, student alone and ``ctkd`` through mmengine's Runner.

``python -m detection.bench --suite synthetic-coco --budget smoke`` (or ``nox -s
bench-detection``) trains the teacher once (cached like classification teachers), the student
alone (``scratch``) and ``ctkd``; evaluates each exported detector with mmdet's ``CocoMetric``
(bbox mAP / AP50 / AP75, percent); measures it with the harness's own measurement (params and
MACs of the tensor-mode forward at the suite's input size, CPU/GPU latency and speed-up vs the
teacher); and writes kdbench run records, so ``kdbench leaderboard --suite synthetic-coco``
aggregates them like any classification suite.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from mmdet.models.detectors import CenterNet
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from rich.logging import RichHandler
from rich.markup import escape
from torch import nn

from benchmarks.cli import console, parse_assignments, parse_seeds, show_leaderboard
from benchmarks.config import LatencyConfig
from benchmarks.errors import ConfigError, KdbenchError
from benchmarks.measure import (
    LatencyResult,
    ModelReport,
    compare_latency,
    default_settings,
    fingerprint,
    inspect_model,
)
from benchmarks.results import RunRecord, record_path, write_json_atomic, write_record
from benchmarks.teachers import (
    atomic_torch_save,
    default_cache_dir,
    load_state_dict,
    sha256_file,
)
from detection.ctkd import CenterNetKD
from detection.data import DetectionData, prepare_data
from detection.suite import METHODS, DetectionBudget, DetectionSuite, load_detection_suite

log = logging.getLogger("kdbench")

TEACHER_CACHE_VERSION = 1  # bump when teacher training changes in a way that matters
METRICS = {"mAP": "coco/bbox_mAP", "AP50": "coco/bbox_mAP_50", "AP75": "coco/bbox_mAP_75"}
LABELS = {"ctkd": "after Gao et al. 2021"}
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


class TensorModeDetector(nn.Module):
    """A detector's tensor-mode forward as a plain module: images in, head maps out.

    This is what is measured: the network without data preprocessing or box decoding, taking
    a normalised image batch and returning CenterNet's heatmap, size and offset maps.
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.detector(images, mode="tensor")
        return tuple(level for per_level in outputs for level in per_level)


@dataclass(frozen=True)
class TrainedTeacher:
    detector: CenterNet
    path: Path
    sha256: str
    source: str  # trained | cache | user
    metrics: dict[str, float]
    train_seconds: float  # 0 when loaded


def load_config(path: Path, data: DetectionData, *, work_dir: Path, seed: int,
                options: dict[str, Any] | None = None, verbose: bool = False) -> Config:
    """An mmdet config pointed at ``data``, with the run's seed, work dir and log level."""
    cfg = Config.fromfile(str(path))
    if options:
        cfg.merge_from_dict(options)
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


def teacher_cache_key(teacher_config: Path, options: dict[str, Any], data: DetectionData,
                      seed: int) -> str:
    """Hash of what the teacher depends on: its config (with overrides), the data and the seed.

    The config is hashed before data paths are filled in: the data enter by fingerprint, so
    the same data in another folder finds the same teacher.
    """
    cfg = Config.fromfile(str(teacher_config))
    if options:
        cfg.merge_from_dict(options)
    spec = {"version": TEACHER_CACHE_VERSION, "config": cfg.to_dict(),
            "data": data.fingerprint, "seed": seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def train(cfg: Config) -> nn.Module:
    """Train with mmengine's Runner; return the trained model (unwrapped, eval mode).

    The config's in-training validation is switched off: the benchmark evaluates the
    exported model itself, once, right after.
    """
    cfg = copy.deepcopy(cfg)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    with _model_key_errors(cfg):
        runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return model.eval()


def evaluate(detector: nn.Module, cfg: Config, work_dir: Path, verbose: bool = False
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


class DetectionBenchmark:
    """Runs teacher / scratch / ctkd for one detection suite and budget, writing records."""

    def __init__(self, suite: DetectionSuite, budget: str, *, results_dir: Path,
                 cache_dir: Path, data_root: str | None = None, teacher_ckpt: str | None = None,
                 cfg_options: dict[str, Any] | None = None, measure_latency: bool = True,
                 verbose: bool = False):
        self.suite = suite
        self.budget: DetectionBudget = suite.budget(budget)
        self.results_dir = Path(results_dir)
        self.cache_dir = Path(cache_dir)
        self.data_root = data_root
        self.teacher_ckpt = teacher_ckpt
        # each row's config overrides (validates the METHOD: prefixes before anything runs)
        self.cfg_options = {m: scope_options(cfg_options or {}, m) for m in METHODS}
        self.measure_latency = measure_latency and self.budget.latency.enabled
        self.verbose = verbose
        self._data: DetectionData | None = None
        self._teachers: dict[int, TrainedTeacher] = {}
        self._teacher_reports: dict[str, ModelReport] = {}  # by checkpoint sha256

    @property
    def data(self) -> DetectionData:
        if self._data is None:
            self._data = prepare_data(self.suite.dataset, self.cache_dir, self.data_root)
        return self._data

    def config(self, method: str, seed: int, work_dir: Path) -> Config:
        return load_config(self.budget.config_for(method), self.data, work_dir=work_dir,
                           seed=seed, options=self.cfg_options[method],
                           verbose=self.verbose)

    def work_dir(self, *parts: object) -> Path:
        key = "/".join(str(p) for p in (self.suite.name, self.budget.name, *parts))
        return self.cache_dir / "work" / hashlib.sha1(key.encode()).hexdigest()[:16]

    # ---- running ----------------------------------------------------------------------
    def run(self, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            *, force: bool = False) -> list[Path]:
        names = list(methods or METHODS)
        unknown = sorted(set(names) - set(METHODS))
        if unknown:
            raise ConfigError(f"unknown detection method(s) {', '.join(unknown)}; "
                              f"a detection suite runs: {', '.join(METHODS)}")
        written = []
        for seed in (list(seeds) if seeds is not None else range(self.budget.seeds)):
            for method in names:
                path = record_path(self.results_dir, self.suite.name, self.budget.name,
                                   self.data.data_source, method, self.budget.teacher,
                                   self.budget.student, seed)
                if path.exists() and not force:
                    log.info("%s seed %d: record exists, skipped (use --force to re-run)",
                             method, seed)
                    continue
                written.append(self.run_one(method, seed))
        return written

    def run_one(self, method: str, seed: int) -> Path:
        """Train (or take the cached teacher), evaluate, measure and write one record."""
        teacher = self.teacher(seed)
        log.info("%s seed %d on %s (%s): running", method, seed, self.data.name,
                 self.data.data_source)
        # a re-run resumes from this folder's last epoch only if nothing it depends on changed
        work_dir = self.work_dir(method, seed, teacher.sha256,
                                 json.dumps(self.cfg_options[method], sort_keys=True,
                                            default=str))
        cfg = self.config(method, seed, work_dir)
        t0 = time.perf_counter()
        extras: dict[str, Any] = {"mmdet_config": str(self.budget.config_for(method))}
        method_config: dict[str, Any] = {}
        if method == "teacher":
            detector = teacher.detector
        elif method == "scratch":
            detector = train(cfg)
        else:
            cfg.model.teacher_ckpt = str(teacher.path)
            kd_model = train(cfg)
            if not isinstance(kd_model, CenterNetKD):
                raise ConfigError(f"{self.budget.config_for(method)} must build a CenterNetKD "
                                  f"model, not {type(kd_model).__name__}")
            extras["tau_per_epoch"] = [tau for _, tau in kd_model.tau_log]
            method_config = dataclasses.asdict(kd_model.distill_cfg)
            detector = kd_model.export_student()
        wall = teacher.train_seconds if method == "teacher" else time.perf_counter() - t0
        metrics = teacher.metrics if method == "teacher" else evaluate(
            detector, cfg, work_dir / "eval", self.verbose)
        record = self.record(method, seed, cfg, detector, metrics, teacher, wall, extras,
                             method_config)
        path = write_record(record, self.results_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
        log.info("  %s: mAP %.1f AP50 %.1f | params %.3f× | MACs %.3f× of the teacher",
                 method, metrics["mAP"], metrics["AP50"], record.params_ratio, record.macs_ratio)
        return path

    # ---- teacher ----------------------------------------------------------------------
    def teacher(self, seed: int) -> TrainedTeacher:
        """The seed's teacher: user checkpoint, else the cache, else trained and cached."""
        if seed not in self._teachers:
            self._teachers[seed] = self._load_or_train_teacher(seed)
        return self._teachers[seed]

    def _load_or_train_teacher(self, seed: int) -> TrainedTeacher:
        key = teacher_cache_key(self.budget.config_for("teacher"), self.cfg_options["teacher"],
                                self.data, seed)
        work_dir = self.work_dir("teacher", key)
        cfg = self.config("teacher", seed, work_dir)
        cached = self.cache_dir / "teachers" / f"det-{self.budget.teacher}-{key[:16]}.pt"
        detector, train_seconds = _build_detector(cfg), 0.0
        if self.teacher_ckpt:
            path, source = Path(self.teacher_ckpt).expanduser(), "user"
            load_state_dict(detector, path, self.budget.teacher)
        elif cached.is_file():
            path, source = cached, "cache"
            load_state_dict(detector, path, self.budget.teacher)
        else:
            log.info("training teacher %s (seed %d); it is cached for later runs",
                     self.budget.teacher, seed)
            started = time.perf_counter()
            detector = train(cfg)
            train_seconds = time.perf_counter() - started
            path, source = cached, "trained"
            atomic_torch_save(detector.state_dict(), path)
        detector.eval()
        metrics = evaluate(detector, cfg, work_dir / "eval", self.verbose)
        teacher = TrainedTeacher(detector, path, sha256_file(path), source, metrics,
                                 train_seconds)
        if source == "trained":  # for people browsing the cache; re-evaluated on every load
            write_json_atomic({"arch": self.budget.teacher, "path": str(path), "source": source,
                               "sha256": teacher.sha256, "metrics": metrics},
                              path.with_suffix(".json"))
        shutil.rmtree(work_dir, ignore_errors=True)
        log.info("teacher %s (%s): mAP %.1f", self.budget.teacher, source, metrics["mAP"])
        return teacher

    # ---- measurement ------------------------------------------------------------------
    def record(self, method: str, seed: int, cfg: Config, detector: nn.Module,
               metrics: dict[str, float], teacher: TrainedTeacher, wall: float,
               extras: dict[str, Any], method_config: dict[str, Any]) -> RunRecord:
        """Measure the exported detector against the teacher and build its run record."""
        example = (torch.randn(1, 3, *self.suite.input_size),)
        student = TensorModeDetector(copy.deepcopy(detector).cpu().eval())
        reference = TensorModeDetector(copy.deepcopy(teacher.detector).cpu().eval())
        report = _inspect(student, example, method)
        if teacher.sha256 not in self._teacher_reports:
            self._teacher_reports[teacher.sha256] = _inspect(reference, example, "teacher")
        t_report = self._teacher_reports[teacher.sha256]
        latency = self._latency(reference, student, teacher.detector, detector) \
            if self.measure_latency else []
        return RunRecord(
            run_id=hashlib.sha1(f"{self.suite.name}/{self.budget.name}/{method}/{seed}/"
                                f"{time.time_ns()}".encode()).hexdigest()[:16],
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            suite=self.suite.name, dataset=self.data.name, data_source=self.data.data_source,
            budget=self.budget.name, method=method, method_label=LABELS.get(method, ""),
            teacher=self.budget.teacher, student=self.budget.student, seed=seed,
            metric_name=self.suite.metric, metrics=metrics, accuracy_statistic="last_epoch",
            teacher_metrics=teacher.metrics,
            teacher_checkpoint={"sha256": teacher.sha256, "source": teacher.source,
                                "path": str(teacher.path)},
            reference="teacher",
            params=report.params, params_nonzero=report.params_nonzero, macs=report.macs,
            flops=report.flops, artifact_bytes=report.artifact_bytes,
            teacher_params=t_report.params, teacher_macs=t_report.macs,
            params_ratio=report.params / t_report.params, macs_ratio=report.macs / t_report.macs,
            model_report=dataclasses.asdict(report),
            latency=[dataclasses.asdict(r) for r in latency],
            wall_time_s=wall, notes=[], extras=extras,
            config=method_config, recipe=_recipe(cfg),
            environment=fingerprint(), test_images=self.data.val_images,
        )

    def _latency(self, cpu_teacher: nn.Module, cpu_student: nn.Module, teacher: nn.Module,
                 student: nn.Module) -> list[LatencyResult]:
        cfg: LatencyConfig = self.budget.latency
        kwargs = dict(rounds=cfg.rounds, warmup=cfg.warmup, min_iters=cfg.min_iters,
                      max_iters=cfg.max_iters, target_round_s=cfg.target_round_s)
        shape = (3, *self.suite.input_size)
        results = compare_latency(cpu_teacher, cpu_student, shape,
                                  _settings("cpu", cfg.batch_sizes), device="cpu", **kwargs)
        if cfg.cuda and torch.cuda.is_available():
            gpu_teacher = TensorModeDetector(copy.deepcopy(teacher).cuda().eval())
            gpu_student = TensorModeDetector(copy.deepcopy(student).cuda().eval())
            results += compare_latency(gpu_teacher, gpu_student, shape,
                                       _settings("cuda", cfg.batch_sizes), device="cuda",
                                       **kwargs)
        return results


def _build_detector(cfg: Config) -> CenterNet:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    with _model_key_errors(cfg):
        return MODELS.build(copy.deepcopy(cfg.model))


@contextlib.contextmanager
def _model_key_errors(cfg: Config) -> Iterator[None]:
    """A model config key its class does not take (often a --cfg-options typo, or a ctkd-only
    key given to every row) becomes a ConfigError naming the config, not a traceback."""
    try:
        yield
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(f"{cfg.filename}: {exc}. Check the model keys of this config and of "
                          f"--cfg-options; prefix a key that only one row's config has with "
                          f"that row (ctkd:model.distill.tau0=1)") from exc


def _inspect(model: nn.Module, example: tuple[torch.Tensor, ...], name: str) -> ModelReport:
    report = inspect_model(model, example)
    if report.macs is None:
        raise KdbenchError(f"could not count the MACs of the {name} detector "
                           f"({report.macs_error}); the leaderboard needs them")
    return report


def _settings(device: str, batch_sizes: Sequence[int]):
    return [s for s in default_settings(device) if s.batch in batch_sizes]


def _recipe(cfg: Config) -> dict[str, Any]:
    """The training schedule as recorded: loop, optimizer, batch size, schedulers."""
    return {
        "train_cfg": cfg.get("train_cfg"),
        "optimizer": cfg.optim_wrapper.get("optimizer"),
        "batch_size": cfg.train_dataloader.batch_size,
        "param_scheduler": cfg.get("param_scheduler"),
    }


def scope_options(options: dict[str, Any], method: str) -> dict[str, Any]:
    """The config overrides for ``method``'s config.

    A plain key applies to every row's config; ``METHOD:KEY`` only to that row's, for keys that
    exist in one config alone (``ctkd:model.distill.tau0=1``; the teacher and the student
    alone are plain CenterNets without a ``distill`` key).
    """
    scoped = {}
    for key, value in options.items():
        target, sep, name = key.rpartition(":")
        if sep and target not in METHODS:
            raise ConfigError(f"--cfg-options {key}: {target!r} is not a row of a detection "
                              f"suite; prefix a key with one of {', '.join(METHODS)}")
        if not sep or target == method:
            scoped[name] = value
    return scoped


def parse_cfg_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as mmdet's ``--cfg-options`` (VALUE parsed as a Python literal)."""
    options = {}
    for key, raw in parse_assignments(list(items), "--cfg-options").items():
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detection.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="synthetic-coco", help="detection suite or file")
    parser.add_argument("--budget", default="smoke", choices=("smoke", "short", "full"))
    parser.add_argument("--methods", help=f"comma-separated, from {', '.join(METHODS)} "
                        "(default: all)")
    parser.add_argument("--seeds", help="number of seeds (3) or a list (0,1,2; '2,' is seed 2 "
                        "alone); default: the budget's")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="teacher cache, synthetic data, work dirs (default ~/.cache/kdbench)")
    parser.add_argument("--data-root", help="dataset root (overrides the suite's)")
    parser.add_argument("--teacher-ckpt", help="your own teacher weights instead of training one")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override keys of every mmdet config, as in mmdet's tools; "
                        "METHOD:KEY=VALUE only in that row's (ctkd:model.distill.tau0=1)")
    parser.add_argument("--force", action="store_true", help="re-run runs that have a record")
    parser.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    parser.add_argument("--verbose", action="store_true", help="mmengine's INFO logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True,
                        handlers=[RichHandler(console=console, show_path=False)])
    try:
        suite = load_detection_suite(args.suite)
        bench = DetectionBenchmark(
            suite, args.budget, results_dir=args.results_dir,
            cache_dir=args.cache_dir or default_cache_dir(), data_root=args.data_root,
            teacher_ckpt=args.teacher_ckpt, cfg_options=parse_cfg_options(args.cfg_options),
            measure_latency=not args.no_latency, verbose=args.verbose)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()] \
            if args.methods else None
        seeds = parse_seeds(args.seeds)
        data = bench.data
        console.print(f"suite {suite.name} · budget {args.budget} · {data.name} "
                      f"({data.data_source}) at {data.root}")
        bench.run(methods, seeds, force=args.force)
        return show_leaderboard(suite.name, args.budget, args.results_dir)
    except KdbenchError as exc:
        console.print(f"[bold red]kdbench: error:[/] {escape(str(exc))}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
