"""The harness: run methods on a suite, evaluate and measure what they return, write records.

Data flow of one run (DESIGN.md): suite config -> (method, pair, seed, budget) -> teacher
cache -> method.run -> evaluate -> measure (params, MACs, latency vs teacher in the same
process) -> run record JSON (atomic) -> leaderboard CSV aggregated from the records.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.config import Budget, Pair, SuiteConfig
from benchmarks.data import ImageDataset
from benchmarks.errors import ConfigError, KdbenchError, UnknownNameError
from benchmarks.evaluators import as_evaluation, evaluator_config
from benchmarks.measure import (
    LatencySetting,
    assert_deployable,
    compare_latency,
    default_settings,
    fingerprint,
    inspect_model,
)
from benchmarks.method import Compressed, Method, RunContext, config_dict, make_loader
from benchmarks.registry import (
    DATASETS,
    EVALUATORS,
    METHODS,
    MODELS,
    build_model,
    known,
    lookup,
)
from benchmarks.results import RunRecord, record_path, write_record
from benchmarks.teachers import TeacherCache, TeacherInfo, teacher_key
from benchmarks.train import evaluate, fit

log = logging.getLogger("kdbench")


class ContractError(KdbenchError):
    """A method broke the plugin contract (e.g. returned a masked, not pruned, model)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available; "
                          "use --device cpu")
    return torch.device(name)


def load_dataset(suite: SuiteConfig, overrides: dict[str, Any] | None = None,
                 cache_dir: Path | None = None) -> ImageDataset:
    spec = {**suite.dataset, **(overrides or {})}
    builder = lookup(DATASETS, spec.pop("type"))
    if cache_dir is not None and "cache_dir" in inspect.signature(builder).parameters:
        spec.setdefault("cache_dir", str(cache_dir))  # where generated data is kept
    try:
        return builder(**spec)
    except TypeError as exc:  # an unknown keyword in the suite's dataset section
        raise ConfigError(f"dataset section of suite {suite.name!r}: {exc}") from exc


@dataclass
class RunPlan:
    methods: list[str]
    pairs: list[Pair]
    seeds: list[int]

    @property
    def total(self) -> int:
        return len(self.methods) * len(self.pairs) * len(self.seeds)


class Harness:
    """Runs (method x pair x seed) for one suite and budget."""

    def __init__(
        self,
        suite: SuiteConfig,
        budget: str,
        *,
        results_dir: Path,
        cache_dir: Path,
        device: str = "cpu",
        dataset_overrides: dict[str, Any] | None = None,
        teacher_checkpoints: dict[str, str] | None = None,
        method_overrides: dict[str, dict[str, Any]] | None = None,
        measure_latency: bool = True,
        progress: bool | None = None,
        evaluators: Sequence[str] = (),
    ):
        self.suite = suite
        # The suite's evaluators plus opt-in ones (e.g. robust accuracy), each once.
        self.evaluators = tuple(dict.fromkeys((*suite.evaluators, *evaluators)))
        self.budget: Budget = suite.budget(budget)
        self.results_dir = Path(results_dir)
        self.cache_dir = Path(cache_dir)
        self.device = resolve_device(device)
        self.dataset_overrides = dict(dataset_overrides or {})
        self.method_overrides = method_overrides or {}
        self.measure_latency = measure_latency and self.budget.latency.enabled
        self.progress = progress
        self.teachers = TeacherCache(
            self.cache_dir, {**suite.teacher_checkpoints, **(teacher_checkpoints or {})})
        self._data: ImageDataset | None = None
        self._teacher_reports: dict[str, Any] = {}
        self._teacher_scores: dict[str, dict[str, float]] = {}

    # ---- data -------------------------------------------------------------------------
    @property
    def data(self) -> ImageDataset:
        if self._data is None:
            self._data = load_dataset(self.suite, {**self.budget.dataset, **self.dataset_overrides},
                                      self.cache_dir)
        return self._data

    def splits(self):
        # The subsets are fixed across seeds (seed 0) so that seeds differ only in
        # initialisation, data order and augmentation.
        return (self.data.train.subset(self.budget.train_subset, seed=0),
                self.data.test.subset(self.budget.test_subset, seed=0))

    # ---- planning ---------------------------------------------------------------------
    def plan(self, methods: Sequence[str] | None, seeds: Sequence[int] | None) -> RunPlan:
        """Validate names and configs up front, so bad input fails before any training."""
        names = list(methods) if methods else [*known(METHODS), *self.budget.variants]
        for name in names:
            self.build_method(name)
        for evaluator in self.evaluators:
            evaluator_config(evaluator, lookup(EVALUATORS, evaluator), self.suite, self.budget)
        for pair in self.budget.pairs:
            lookup(MODELS, pair.teacher)
            lookup(MODELS, pair.student)
        unused = set(self.method_overrides) - set(names)
        if unused:
            raise ConfigError(f"--set names method(s) {', '.join(sorted(unused))} that are not "
                              f"being run; running: {', '.join(names)}")
        return RunPlan(names, list(self.budget.pairs),
                       list(seeds) if seeds is not None else list(range(self.budget.seeds)))

    def build_method(self, name: str) -> Method:
        """The method registered as ``name``, or the suite's variant ``name`` (its base
        method's settings, then the variant's config, then ``--set name.key=...``)."""
        variant = self.suite.variants.get(name)
        if variant is None:
            if name not in known(METHODS):
                raise UnknownNameError("method", name, [*known(METHODS), *self.suite.variants])
            base, variant_config = name, None
        elif name in known(METHODS):
            raise ConfigError(f"variant {name!r} of suite {self.suite.name!r} has the name of a "
                              "registered method; give the variant another name")
        else:
            base, variant_config = variant.method, variant.config
        cls = lookup(METHODS, base)
        cfg = cls.make_config(
            self.budget.name,
            self.suite.methods.get(base),
            self.budget.methods.get(base),
            variant_config,
            self.method_overrides.get(name),
            name=name,
        )
        method = cls(cfg)
        method.name = name
        if variant is not None:
            settings = ", ".join(f"{k}={v}" for k, v in variant.config.items())
            method.label = "; ".join(filter(None, (cls.label, f"{base} with {settings}")))
        return method

    # ---- running ----------------------------------------------------------------------
    def run(self, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            *, force: bool = False) -> list[Path]:
        plan = self.plan(methods, seeds)
        written: list[Path] = []
        done = 0
        for pair in plan.pairs:
            for seed in plan.seeds:
                for name in plan.methods:
                    done += 1
                    prefix = f"[{done}/{plan.total}] {name} {pair.label} seed {seed}"
                    path = record_path(self.results_dir, self.suite.name, self.budget.name,
                                       self.data.data_source, name, pair.teacher,
                                       pair.student, seed)
                    if path.exists() and not force:
                        log.info("%s: record exists, skipped (use --force to re-run)", prefix)
                        continue
                    method = self.build_method(name)
                    reason = method.supports(pair)
                    if reason:
                        log.warning("%s: skipped, %s", prefix, reason)
                        continue
                    log.info("%s: running", prefix)
                    written += self.run_one(method, pair, seed)
        return written

    def run_one(self, method: Method, pair: Pair, seed: int) -> list[Path]:
        """Run one method on one pair with one seed; returns the record paths written."""
        train_split, test_split = self.splits()
        run_key = f"{self.suite.name}/{self.budget.name}/{method.name}/{pair.label}/seed{seed}"
        workdir = self.cache_dir / "work" / hashlib.sha1(run_key.encode()).hexdigest()[:16]
        teacher, teacher_info = self.teacher(pair, seed)
        ctx = RunContext(
            suite=self.suite, budget=self.budget, pair=pair, seed=seed, device=self.device,
            data=self.data, workdir=workdir, log=log, teacher_provider=lambda: teacher,
            train_split=train_split, test_split=test_split, progress=self.progress,
            artifacts_dir=self._artifacts_dir(method.name, pair, seed),
        )
        seed_everything(seed)
        t0 = time.perf_counter()
        result = method.run(ctx)
        if not isinstance(result, Compressed):
            raise ContractError(f"method {method.name!r} returned {type(result).__name__}; "
                                "run() must return a Compressed")
        wall = time.perf_counter() - t0
        outputs = [(method.name, result), *((f"{method.name}:{k}", c)
                                            for k, c in result.controls.items())]
        records = [self.measure(ctx, method, name, out, teacher, teacher_info, wall)
                   for name, out in outputs]
        paths = [write_record(r, self.results_dir) for r in records]
        shutil.rmtree(workdir, ignore_errors=True)
        for r in records:
            log.info("  %s: %s %.2f | params %.3f× | MACs %.3f× of the teacher", r.method,
                     r.metric_name, r.metric, r.params_ratio, r.macs_ratio)
        return paths

    def _artifacts_dir(self, method: str, pair: Pair, seed: int) -> Path:
        """RESULTS/artifacts/<suite>/<budget>/<method>/<pair>/seed<N>: a run's kept files."""
        record = record_path(self.results_dir, self.suite.name, self.budget.name,
                             self.data.data_source, method, pair.teacher, pair.student, seed)
        runs = self.results_dir / "runs"
        return self.results_dir / "artifacts" / record.relative_to(runs).with_suffix("")

    # ---- teacher ----------------------------------------------------------------------
    def teacher(self, pair: Pair, seed: int) -> tuple[nn.Module, TeacherInfo]:
        train_split, test_split = self.splits()
        recipe = self.budget.teacher_recipe
        key = teacher_key(pair.teacher, self.data.num_classes, self.data.fingerprint,
                          self.budget.train_subset, recipe, seed)

        def build() -> nn.Module:
            seed_everything(seed)
            return build_model(pair.teacher, num_classes=self.data.num_classes).to(self.device)

        def train(model: nn.Module) -> None:
            log.info("training teacher %s (seed %d); it is cached for later runs",
                     pair.teacher, seed)
            loader = make_loader(self.data, train_split, train=True, seed=seed,
                                 batch_size=recipe.batch_size, device=self.device,
                                 channels_last=recipe.channels_last)
            fit(model, lambda b, logits: F.cross_entropy(logits, b.y), loader, recipe,
                device=self.device, desc=f"teacher {pair.teacher} seed{seed}",
                progress=self.progress)

        def score(model: nn.Module) -> dict[str, float]:
            loader = make_loader(self.data, test_split, train=False, seed=seed,
                                 batch_size=recipe.eval_batch_size, device=self.device,
                                 channels_last=recipe.channels_last)
            return evaluate(model, loader, self.device)

        model, info = self.teachers.get(pair.teacher, key, build, train, score)
        return model.eval(), info

    # ---- measurement ------------------------------------------------------------------
    def measure(self, ctx: RunContext, method: Method, name: str, out: Compressed,
                teacher: nn.Module, teacher_info: TeacherInfo, wall: float) -> RunRecord:
        model = out.model
        try:
            assert_deployable(model)
        except ValueError as exc:
            raise ContractError(f"method {name!r} returned a model that is not deployable "
                                f"(the harness measures what is deployed): {exc}") from exc
        metrics, evaluated_with = run_evaluators(self.evaluators, model, ctx)
        if self.suite.metric not in metrics:
            raise ConfigError(f"suite {self.suite.name!r} reports metric {self.suite.metric!r} "
                              f"but its evaluators produce {', '.join(sorted(metrics))}")
        example = (torch.randn(1, *self.data.input_shape),)
        cpu_model = self._deployed(copy.deepcopy(model).cpu().eval(), name)
        cpu_teacher = self._deployed(copy.deepcopy(teacher).cpu().eval(), "teacher")
        report = inspect_model(cpu_model, example)
        if report.macs is None:
            raise ContractError(f"could not count the MACs of the model {name!r} returned "
                                f"({report.macs_error}); the leaderboard needs them")
        t_report = self._teacher_report(ctx.pair.teacher, cpu_teacher, example)
        latency = self._latency(cpu_teacher, cpu_model, teacher, model) \
            if self.measure_latency else []
        return RunRecord(
            run_id=hashlib.sha1(f"{self.suite.name}/{self.budget.name}/{name}/"
                                f"{ctx.pair.label}/{ctx.seed}/{time.time_ns()}".encode())
            .hexdigest()[:16],
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            suite=self.suite.name, dataset=self.data.name, data_source=self.data.data_source,
            budget=self.budget.name, method=name, method_label=method.label,
            teacher=ctx.pair.teacher, student=ctx.pair.student, seed=ctx.seed,
            metric_name=self.suite.metric, metrics=metrics, accuracy_statistic="last_epoch",
            teacher_metrics=self._teacher_metrics(ctx, teacher, teacher_info),
            teacher_checkpoint={"sha256": teacher_info.sha256, "source": teacher_info.source,
                                "path": teacher_info.path},
            reference=method.reference,
            params=report.params, params_nonzero=report.params_nonzero, macs=report.macs,
            flops=report.flops, artifact_bytes=report.artifact_bytes,
            teacher_params=t_report.params, teacher_macs=t_report.macs,
            params_ratio=report.params / t_report.params,
            macs_ratio=report.macs / t_report.macs,
            model_report=dataclasses.asdict(report),
            latency=[dataclasses.asdict(r) for r in latency],
            wall_time_s=wall, notes=list(out.notes), extras={**out.extras, **(
                {"evaluators": evaluated_with} if evaluated_with else {})},
            config=config_dict(method.cfg), recipe=dataclasses.asdict(self.budget.train),
            environment=fingerprint(), test_images=len(ctx.test_split),
        )

    def _deployed(self, model: nn.Module, name: str) -> nn.Module:
        """``model`` as the suite deploys it (``deployed_forward``), for measurement."""
        how = self.suite.deployed_forward
        if how == "forward":
            return model
        if not callable(getattr(model, how, None)):
            raise ContractError(
                f"suite {self.suite.name!r} deploys model.{how}(x), but the model of {name!r} "
                f"({type(model).__name__}) has no {how}() method")
        return DeployedView(model, how)

    def _teacher_metrics(self, ctx: RunContext, teacher: nn.Module,
                         info: TeacherInfo) -> dict[str, float]:
        """The teacher's scores: the cache's top-1/top-5, or, when the headline metric is
        another one (rank-1, ...), the suite's evaluators, run once per teacher checkpoint."""
        cached = {"top1": info.top1, "top5": info.top5}
        if self.suite.metric in cached:
            return cached
        if info.sha256 not in self._teacher_scores:
            self._teacher_scores[info.sha256] = evaluate_all(self.suite.evaluators, teacher, ctx)
        return self._teacher_scores[info.sha256]

    def _teacher_report(self, arch: str, teacher: nn.Module, example):
        if arch not in self._teacher_reports:
            self._teacher_reports[arch] = inspect_model(teacher, example)
        return self._teacher_reports[arch]

    def _latency(self, cpu_teacher: nn.Module, cpu_model: nn.Module, teacher: nn.Module,
                 model: nn.Module) -> list:
        cfg = self.budget.latency
        kwargs = dict(rounds=cfg.rounds, warmup=cfg.warmup, min_iters=cfg.min_iters,
                      max_iters=cfg.max_iters, target_round_s=cfg.target_round_s)
        results = compare_latency(cpu_teacher, cpu_model, self.data.input_shape,
                                  _settings("cpu", cfg.batch_sizes), device="cpu", **kwargs)
        if cfg.cuda and self.device.type == "cuda":
            results += compare_latency(self._deployed(teacher, "teacher"),
                                       self._deployed(model, "model"), self.data.input_shape,
                                       _settings(str(self.device), cfg.batch_sizes),
                                       device=str(self.device), **kwargs)
        return results


class DeployedView(nn.Module):
    """A model whose ``forward`` is one of its other methods (e.g. ReID's ``embed``)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(x)


def evaluate_all(names: Sequence[str], model: nn.Module, ctx: RunContext) -> dict[str, float]:
    """Metrics of ``model`` from each named evaluator (registered in ``EVALUATORS``)."""
    return run_evaluators(names, model, ctx)[0]


def run_evaluators(names: Sequence[str], model: nn.Module,
                   ctx: RunContext) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Metrics of ``model`` and, per evaluator that reports them, the settings used."""
    metrics: dict[str, float] = {}
    details: dict[str, dict[str, Any]] = {}
    for name in names:
        result = as_evaluation(lookup(EVALUATORS, name)(model, ctx))
        metrics.update(result.metrics)
        if result.details:
            details[name] = result.details
    return metrics, details


def _settings(device: str, batch_sizes: Sequence[int]) -> list[LatencySetting]:
    return [s for s in default_settings(device) if s.batch in batch_sizes]

