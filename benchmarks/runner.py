"""The harness: run methods on a suite, evaluate and measure what they return, write records.

Data flow of one run: suite config -> (method, pair, seed, budget) -> teacher
cache -> method.run -> evaluate -> measure (params, MACs, latency vs teacher in the same
process) -> run record JSON (atomic) -> leaderboard CSV aggregated from the records.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import inspect
import logging
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import nn

from kdbench.benchmarks import curves, distributed, mlflow_log
from kdbench.benchmarks.artifacts import save_artifacts
from kdbench.benchmarks.config import Budget, Pair, SuiteConfig
from kdbench.benchmarks.data import ImageDataset, ImageSplit
from kdbench.benchmarks.deploy import deploy_targets
from kdbench.benchmarks.deployed import DeployedMeasurer
from kdbench.benchmarks.errors import ConfigError, KdbenchError, RunsFailedError, TrainingError
from kdbench.benchmarks.evaluators import evaluate_all, run_evaluators
from kdbench.benchmarks.measure import assert_deployable
from kdbench.benchmarks.measurement import ContractError, deployed, measure_model
from kdbench.benchmarks.method import Compressed, Method, RunContext, config_dict
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.planning import RunPlan, build_method, evaluators_for, make_plan
from kdbench.benchmarks.provenance import code_fingerprint
from kdbench.benchmarks.recording import fp32_record, log_to_mlflow, record_failure
from kdbench.benchmarks.records import RunRecord, read_record, record_path, write_record
from kdbench.benchmarks.registry import DATASETS, build_model, lookup
from kdbench.benchmarks.run_config import config_hash, run_config, teacher_identity
from kdbench.benchmarks.supervised import supervised
from kdbench.benchmarks.teachers import TeacherCache, TeacherInfo, score_key, teacher_key

log = logging.getLogger("kdbench")


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


def discard_other_codes_checkpoints(workdir: Path, fingerprint: str) -> None:
    """Empty ``workdir`` when its checkpoints were written by other code: resuming them
    would continue a run under rules it did not start with (e.g. a fixed prox step)."""
    stamp = workdir / "code_fingerprint"
    written_by = stamp.read_text().strip() if stamp.is_file() else None
    if written_by != fingerprint and any(workdir.rglob("*.ckpt")):
        log.warning("  %s holds checkpoints written by other code (%s, now %s); they are "
                    "not resumed: the run starts over", workdir, written_by or "unknown",
                    fingerprint)
        for ckpt in workdir.rglob("*.ckpt"):
            ckpt.unlink()
    stamp.write_text(fingerprint)


class Harness:
    """Runs (method x pair x seed) for one suite and budget."""

    def __init__(self, suite: SuiteConfig, budget: str, options: RunOptions | None = None):
        options = options or RunOptions()
        self.options = options
        self.suite = suite
        # The suite's evaluators plus opt-in ones (e.g. robust accuracy), each once.
        self.evaluators = tuple(dict.fromkeys((*suite.evaluators, *options.evaluators)))
        self.budget: Budget = suite.budget(budget)
        self.results_dir = options.results_dir
        self.cache_dir = options.cache
        # Under torchrun: joins the process group; each rank gets its own GPU.
        self.device = distributed.setup(resolve_device(options.device))
        self.resume = options.resume  # False: a killed run's checkpoints are discarded
        self.tensorboard = options.tensorboard  # curves into <artifacts>/tensorboard
        # Each written record is also logged to this MLflow tracking URI (None: not logged);
        # a missing MLflow fails here, before any training.
        self.mlflow_uri = options.mlflow_uri
        if self.mlflow_uri is not None:
            mlflow_log.check(self.mlflow_uri)
        self.dataset_overrides = dict(options.dataset_overrides)
        self.method_overrides = {k: dict(v) for k, v in options.method_overrides.items()}
        self.measure_latency = options.measure_latency and self.budget.latency.enabled
        # Deployments measured besides eager fp32 for every method (suite budget + --deploy).
        self.deploy = deploy_targets(self.budget.deploy, options.deploy,
                                     where=f"--deploy or the {budget} budget's deploy "
                                           f"of suite {suite.name!r}")
        if self.deploy and suite.deployed_forward != "forward":
            raise ConfigError(f"suite {suite.name!r} deploys model.{suite.deployed_forward}(); "
                              f"--deploy {','.join(self.deploy)} supports suites that deploy "
                              "forward() only")
        self.progress = options.progress
        self.teachers = TeacherCache(
            self.cache_dir, {**suite.teacher_checkpoints, **options.teacher_checkpoints})
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
    def plan(self, methods: Sequence[str] | None, seeds: Sequence[int] | None,
             pairs: Sequence[Pair] | None = None) -> RunPlan:
        """The checked plan (``benchmarks.planning``); ``pairs`` None: the budget's."""
        return make_plan(self.suite, self.budget, methods, seeds, pairs,
                         overrides=self.method_overrides, evaluators=self.evaluators)

    def build_method(self, name: str) -> Method:
        return build_method(self.suite, self.budget, name, self.method_overrides)

    # ---- running ----------------------------------------------------------------------
    def run(self, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
            pairs: Sequence[Pair] | None = None) -> list[Path]:
        """Run the plan; runs with a record of their configuration are skipped unless the
        options say ``force``. Returns the record paths written."""
        plan = self.plan(methods, seeds, pairs)
        force = self.options.force
        written: list[Path] = []
        failed: list[str] = []
        done = 0
        for pair in plan.pairs:
            for seed in plan.seeds:
                for name in plan.methods:
                    done += 1
                    prefix = f"[{done}/{plan.total}] {name} {pair.label} seed {seed}"
                    method = self.build_method(name)
                    stale = self.stale_records(method, pair, seed)
                    if not stale and not force:
                        log.info("%s: record exists, skipped (use --force to re-run)", prefix)
                        continue
                    for why in stale:
                        log.info("%s: %s", prefix, why)
                    reason = method.supports(pair)
                    if reason:
                        log.warning("%s: skipped, %s", prefix, reason)
                        continue
                    log.info("%s: running", prefix)
                    try:
                        written += self.run_one(method, pair, seed)
                    except Exception as exc:  # recorded as failed; the other runs go on
                        if plan.total == 1:
                            raise
                        if isinstance(exc, KdbenchError):
                            log.error("%s: failed: %s", prefix, exc)
                        else:  # a bug in the method: its traceback helps its author
                            log.exception("%s: failed", prefix)
                        failed.append(f"{name} {pair.label} seed {seed}: "
                                      f"{type(exc).__name__}: {exc}")
        if failed:
            raise RunsFailedError(failed, plan.total)
        return written

    def stale_records(self, method: Method, pair: Pair, seed: int) -> list[str]:
        """Why the run's records do not stand for this configuration (none: skip the run).

        A record stands only when its ``config_hash`` equals this run's: an edited suite, a
        ``--set`` or another teacher makes the run run again (its old record is kept beside
        the new one as replaced). A teacher not trained yet is taken to be the record's own:
        it would be trained from the recipe, data and seed the hash already covers.
        """
        teacher_seed = self.budget.teacher_seed_for(seed)
        known = self.teachers.known_sha256(pair.teacher, self._teacher_key(pair, teacher_seed))
        reasons = []
        for deploy in ("fp32", *self.targets(method)):
            path = record_path(self.results_dir, self.suite.name, self.budget.name,
                               self.data.data_source, method.name, pair.teacher, pair.student,
                               seed, deploy)
            if not path.is_file():
                reasons.append(f"no {deploy} record yet")
                continue
            record = read_record(path)
            teacher_sha = known or record.get("teacher_checkpoint", {}).get("sha256", "")
            expected = self.config_hash(config_dict(method.cfg), pair.teacher, teacher_sha,
                                        deploy)
            if record.get("config_hash") != expected:
                reasons.append(f"the {deploy} record {path} is of another configuration "
                               f"(config_hash {record.get('config_hash') or 'none'}, this run "
                               f"{expected}): running it; the old record is kept as replaced")
        return reasons

    def run_one(self, method: Method, pair: Pair, seed: int) -> list[Path]:
        """Run one method on one pair with one seed; returns the record paths written."""
        train_split, test_split = self.splits()
        world = distributed.current()
        try:
            teacher, teacher_info = self.teacher(pair, self.budget.teacher_seed_for(seed))
            workdir = self._workdir(method, pair, seed, teacher_info)
            with self._run_lock(workdir, f"{method.name} {pair.label} seed {seed}") as waited:
                if waited and not self.stale_records(method, pair, seed):
                    log.info("  the identical run in another process wrote its record; "
                             "reusing it")
                    return []
                return self._run_one(method, pair, seed, workdir, teacher, teacher_info,
                                     train_split, test_split)
        except Exception as exc:  # not KeyboardInterrupt: a killed run is resumed, not failed
            if world.primary:
                self._record_failure(method.name, pair, seed, exc)
            if isinstance(exc, TrainingError):
                raise TrainingError(f"method {method.name!r}, {exc}") from exc
            raise

    @contextlib.contextmanager
    def _run_lock(self, workdir: Path, what: str) -> Iterator[bool]:
        """One process at a time runs a configuration (an OS lock, freed if its holder
        dies); yields whether it had to wait for another process running the same."""
        if distributed.current().distributed:  # the ranks of one run share it
            yield False
            return
        lock = FileLock(f"{workdir}.lock")
        try:
            lock.acquire(timeout=0)
            waited = False
        except Timeout:
            log.info("  %s is being run by another process; waiting for it (lock %s)",
                     what, lock.lock_file)
            lock.acquire()
            waited = True
        try:
            yield waited
        finally:
            lock.release()

    def _workdir(self, method: Method, pair: Pair, seed: int, teacher_info: TeacherInfo) -> Path:
        """The run's checkpoint folder, keyed by its configuration hash: a killed run is
        resumed only by a run of the same configuration and the same code."""
        cfg_hash = self.config_hash(config_dict(method.cfg), pair.teacher, teacher_info.sha256,
                                    "fp32")
        run_key = (f"{self.suite.name}/{self.budget.name}/{method.name}/{pair.label}/"
                   f"seed{seed}/{cfg_hash}")
        workdir = self.cache_dir / "work" / hashlib.sha1(run_key.encode()).hexdigest()[:16]
        world = distributed.current()
        if world.primary:
            if not self.resume:
                shutil.rmtree(workdir, ignore_errors=True)
            stamp = workdir / "config_hash"
            if stamp.is_file() and stamp.read_text().strip() != cfg_hash:
                raise ConfigError(f"work folder {workdir} holds checkpoints of configuration "
                                  f"{stamp.read_text().strip()}, not this run's {cfg_hash}; "
                                  "they are not resumed: delete the folder or pass --no-resume")
            workdir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(cfg_hash)
            discard_other_codes_checkpoints(workdir, code_fingerprint(type(method).__module__))
        distributed.barrier()
        return workdir

    def _record_failure(self, name: str, pair: Pair, seed: int, exc: Exception) -> None:
        record_failure(suite=self.suite, budget=self.budget, data=self.data, name=name,
                       pair=pair, seed=seed, exc=exc, results_dir=self.results_dir)

    def _run_one(self, method: Method, pair: Pair, seed: int, workdir: Path, teacher: nn.Module,
                 teacher_info: TeacherInfo, train_split: ImageSplit,
                 test_split: ImageSplit) -> list[Path]:
        ctx = RunContext(
            suite=self.suite, budget=self.budget, pair=pair, seed=seed, device=self.device,
            data=self.data, workdir=workdir, log=log, teacher_provider=lambda: teacher,
            train_split=train_split, test_split=test_split, progress=self.progress,
            artifacts_dir=self._artifacts_dir(method.name, pair, seed), cache_dir=self.cache_dir,
        )
        seed_everything(seed)
        t0 = time.perf_counter()
        board_dir = ctx.artifacts_dir / "tensorboard" if self.tensorboard and \
            distributed.current().primary else None
        with curves.recording(board_dir):
            result = method.run(ctx)
            return self._record_outputs(method, result, ctx, teacher, teacher_info, workdir,
                                        time.perf_counter() - t0)

    def _record_outputs(self, method: Method, result: Any, ctx: RunContext, teacher: nn.Module,
                        teacher_info: TeacherInfo, workdir: Path, wall: float) -> list[Path]:
        """Measure what ``method.run`` returned (and its controls), write the records."""
        if not isinstance(result, Compressed):
            raise ContractError(f"method {method.name!r} returned {type(result).__name__}; "
                                "run() must return a Compressed")
        outputs = [(method.name, result), *((f"{method.name}:{k}", c)
                                            for k, c in result.controls.items())]
        if not distributed.current().primary:
            # Only rank 0 measures and writes; the others take part in the gathered
            # evaluation (the same collectives in the same order) and wait for it.
            for _, out in outputs:
                run_evaluators(self.evaluators_for(method), out.model, ctx)
            distributed.barrier()
            return []
        records = []
        for name, out in outputs:
            record = self.measure(ctx, method, name, out, teacher, teacher_info, wall)
            records += [record, *(self.measure_deployed(ctx, name, out, teacher, teacher_info,
                                                        record, target)
                                  for target in self.targets(method))]
        paths = [write_record(r, self.results_dir) for r in records]
        if self.mlflow_uri is not None:
            log_to_mlflow(paths, self.mlflow_uri)
        main = records[0]
        curves.log_final({**main.metrics, "params_ratio": main.params_ratio,
                          "macs_ratio": main.macs_ratio})
        shutil.rmtree(workdir, ignore_errors=True)
        distributed.barrier()
        for r in records:
            if r.deploy_status != "ok":
                log.warning("  %s (%s): deployment %s", r.method, r.deploy, r.deploy_status)
                continue
            log.info("  %s (%s): %s %.2f | params %.3f× | MACs %.3f× of the teacher", r.method,
                     r.deploy, r.metric_name, r.metric, r.params_ratio, r.macs_ratio)
        return paths

    def _artifacts_dir(self, method: str, pair: Pair, seed: int) -> Path:
        """A run's kept files: RESULTS/artifacts/<suite>/<budget>/<data source>/<method>/
        <pair>/seed<N>."""
        record = record_path(self.results_dir, self.suite.name, self.budget.name,
                             self.data.data_source, method, pair.teacher, pair.student, seed)
        runs = self.results_dir / "runs"
        return self.results_dir / "artifacts" / record.relative_to(runs).with_suffix("")

    # ---- teacher ----------------------------------------------------------------------
    def _teacher_key(self, pair: Pair, seed: int) -> str:
        key = teacher_key(pair.teacher, self.data.num_classes, self.data.fingerprint,
                          self.budget.train_subset, self.budget.teacher_recipe, seed)
        own = supervised(self.data).training_key(pair.teacher)  # e.g. an mmdet config
        return key if own is None else hashlib.sha256(f"{key}:{own}".encode()).hexdigest()

    def teacher(self, pair: Pair, seed: int) -> tuple[nn.Module, TeacherInfo]:
        train_split, test_split = self.splits()
        recipe = self.budget.teacher_recipe
        key = self._teacher_key(pair, seed)

        def build() -> nn.Module:
            seed_everything(seed)
            return build_model(pair.teacher, num_classes=self.data.num_classes).to(self.device)

        # Teacher training checkpoints every epoch like a student's: a killed run resumes it.
        workdir = self.cache_dir / "work" / f"teacher-{pair.teacher}-{key[:16]}"

        def train(model: nn.Module) -> None:
            log.info("training teacher %s (seed %d); it is cached for later runs",
                     pair.teacher, seed)
            if distributed.current().primary:
                if not self.resume:
                    shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True, exist_ok=True)
                discard_other_codes_checkpoints(workdir, code_fingerprint(__name__))
            supervised(self.data).train_alone(
                model, split=train_split, recipe=recipe, seed=seed, device=self.device,
                checkpoint=workdir / "fit.ckpt", desc=f"teacher {pair.teacher} seed{seed}",
                progress=self.progress)

        def score(model: nn.Module) -> dict[str, float]:
            return supervised(self.data).score(model, split=test_split, recipe=recipe,
                                               device=self.device)

        model, info = self.teachers.get(
            pair.teacher, key, build, train, score,
            score_key(self.data.fingerprint, test_split.labels, recipe.eval_batch_size,
                      self.device))
        if info.source == "trained" and distributed.current().primary:
            shutil.rmtree(workdir, ignore_errors=True)  # the cached teacher replaces it
        return model.eval(), info

    # ---- measurement ------------------------------------------------------------------
    def evaluators_for(self, method: Method) -> tuple[str, ...]:
        return evaluators_for(method, self.evaluators)

    def measure(self, ctx: RunContext, method: Method, name: str, out: Compressed,
                teacher: nn.Module, teacher_info: TeacherInfo, wall: float) -> RunRecord:
        """Evaluate and measure one returned model (eager fp32) into its record."""
        model = out.model
        try:
            assert_deployable(model)
        except ValueError as exc:
            raise ContractError(f"method {name!r} returned a model that is not deployable "
                                f"(the harness measures what is deployed): {exc}") from exc
        metrics, evaluated_with = run_evaluators(self.evaluators_for(method), model, ctx)
        if self.suite.metric not in metrics:
            raise ConfigError(f"suite {self.suite.name!r} reports metric {self.suite.metric!r} "
                              f"but its evaluators produce {', '.join(sorted(metrics))}")
        cpu_model = self._deployed(copy.deepcopy(model).cpu().eval(), name)
        cpu_teacher = self._deployed(copy.deepcopy(teacher).cpu().eval(), "teacher")
        measured = measure_model(
            cpu_model, cpu_teacher, self.data.input_shape,
            latency=self.budget.latency if self.measure_latency else None,
            what=f"the model {name!r} returned",
            teacher_report=self._teacher_reports.get(ctx.pair.teacher),
            on_device=(self._deployed(teacher, "teacher"), self._deployed(model, "model"),
                       self.device))
        self._teacher_reports.setdefault(ctx.pair.teacher, measured.teacher_report)
        # What was measured, kept beside the record (kdbench export reads it back).
        artifacts = save_artifacts(cpu_model, measured.example,
                                   self._artifacts_dir(name, ctx.pair, ctx.seed),
                                   self.results_dir)
        return fp32_record(
            suite=self.suite, budget=self.budget, data=self.data, ctx=ctx, method=method,
            name=name, out=out, metrics=metrics, evaluated_with=evaluated_with,
            measurement=measured, teacher_metrics=self._teacher_metrics(ctx, teacher, teacher_info),
            teacher_info=teacher_info, wall=wall, artifacts=artifacts,
            config_hash=self.config_hash(config_dict(method.cfg), ctx.pair.teacher,
                                         teacher_info.sha256, "fp32"))

    def config_hash(self, method_config: dict[str, Any], teacher_arch: str,
                    teacher_sha256: str, deploy: str) -> str:
        teacher = teacher_identity(self.budget, teacher_arch, teacher_sha256,
                                   teacher_arch in self.teachers.user_checkpoints)
        return config_hash(run_config(self.suite, self.budget, method_config,
                                      self.data.fingerprint, teacher, deploy))

    def _deployed(self, model: nn.Module, name: str) -> nn.Module:
        """``model`` as the suite deploys it (``deployed_forward``), for measurement."""
        return deployed(model, self.suite.deployed_forward, name, self.suite.name)

    def _teacher_metrics(self, ctx: RunContext, teacher: nn.Module,
                         info: TeacherInfo) -> dict[str, float]:
        """The teacher's scores: the cache's (top-1/top-5, mAP, ...), or, when the headline
        metric is another one (rank-1, ...), the suite's evaluators, run once per checkpoint."""
        if self.suite.metric in info.scores:
            return dict(info.scores)
        if info.sha256 not in self._teacher_scores:
            self._teacher_scores[info.sha256] = evaluate_all(self.suite.evaluators, teacher, ctx)
        return self._teacher_scores[info.sha256]

    # ---- deployment (int8, onnx) -------------------------------------------------------
    @functools.cached_property
    def deployed_measurer(self) -> DeployedMeasurer:
        return DeployedMeasurer(
            input_shape=self.data.input_shape,
            latency=self.budget.latency if self.measure_latency else None,
            batch_sizes=self.budget.latency.batch_sizes, evaluators=self.evaluators,
            results_dir=self.results_dir, cache_dir=self.cache_dir, deployed=self._deployed,
            artifacts_dir=self._artifacts_dir, config_hash=self.config_hash)

    def targets(self, method: Method) -> tuple[str, ...]:
        """Deployments measured for ``method`` besides fp32: the harness's and its own."""
        return deploy_targets(self.deploy, method.deploy, where=f"deploy of method {method.name!r}")

    def measure_deployed(self, ctx: RunContext, name: str, out: Compressed, teacher: nn.Module,
                         teacher_info: TeacherInfo, fp32: RunRecord, target: str) -> RunRecord:
        """The record of ``out.model`` deployed as ``target`` (``benchmarks.deployed``)."""
        return self.deployed_measurer.measure(ctx, name, out, teacher, teacher_info, fp32,
                                              target)
