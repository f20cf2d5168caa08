"""The harness: run methods on a suite, evaluate and measure what they return, write records.

Data flow of one run: suite config -> (method, pair, seed, budget) -> teacher
cache -> method.run -> evaluate -> measure (params, MACs, latency vs teacher in the same
process) -> run record JSON (atomic) -> leaderboard CSV aggregated from the records.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock, Timeout
from torch import nn

from benchmarks import curves, distributed, mlflow_log
from benchmarks.artifacts import save_artifacts, sha256_of
from benchmarks.config import Budget, Pair, SuiteConfig
from benchmarks.data import ImageDataset, ImageSplit
from benchmarks.deploy import (
    CALIBRATION_IMAGES,
    QUANTIZER,
    CompiledProgram,
    DeployError,
    deploy_targets,
    export_program,
    program_report,
    quantize_int8,
    torchao_version,
)
from benchmarks.deploy_onnx import (
    ONNX_TARGETS,
    OrtProgram,
    export_onnx,
    initializer_bytes,
    quantize_onnx_int8,
    runtime_versions,
    weight_bits,
)
from benchmarks.deploy_onnx import QUANTIZER as ORT_QUANTIZER
from benchmarks.errors import (
    ConfigError,
    KdbenchError,
    RunsFailedError,
    TrainingError,
    UnknownNameError,
)
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
from benchmarks.provenance import code_fingerprint
from benchmarks.registry import (
    DATASETS,
    EVALUATORS,
    METHODS,
    MODELS,
    build_model,
    known,
    lookup,
)
from benchmarks.results import (
    FailedRun,
    RunRecord,
    read_record,
    record_path,
    write_failure,
    write_record,
)
from benchmarks.run_config import config_hash, run_config, teacher_identity
from benchmarks.teachers import TeacherCache, TeacherInfo, score_key, teacher_key
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
        resume: bool = True,
        deploy: Sequence[str] = (),
        tensorboard: bool = False,
        mlflow_uri: str | None = None,
    ):
        self.suite = suite
        # The suite's evaluators plus opt-in ones (e.g. robust accuracy), each once.
        self.evaluators = tuple(dict.fromkeys((*suite.evaluators, *evaluators)))
        self.budget: Budget = suite.budget(budget)
        self.results_dir = Path(results_dir)
        self.cache_dir = Path(cache_dir)
        # Under torchrun: joins the process group; each rank gets its own GPU.
        self.device = distributed.setup(resolve_device(device))
        self.resume = resume  # False: a killed run's checkpoints are discarded, not resumed
        self.tensorboard = tensorboard  # curves into <artifacts>/tensorboard (benchmarks.curves)
        # Each written record is also logged to this MLflow tracking URI (None: not logged);
        # a missing MLflow fails here, before any training.
        self.mlflow_uri = mlflow_uri
        if mlflow_uri is not None:
            mlflow_log.check(mlflow_uri)
        self.dataset_overrides = dict(dataset_overrides or {})
        self.method_overrides = method_overrides or {}
        self.measure_latency = measure_latency and self.budget.latency.enabled
        # Deployments measured besides eager fp32 for every method (suite budget + --deploy).
        self.deploy = deploy_targets(self.budget.deploy, deploy,
                                     where=f"--deploy or the {budget} budget's deploy "
                                           f"of suite {suite.name!r}")
        if self.deploy and suite.deployed_forward != "forward":
            raise ConfigError(f"suite {suite.name!r} deploys model.{suite.deployed_forward}(); "
                              f"--deploy {','.join(self.deploy)} supports suites that deploy "
                              "forward() only")
        self._compiled_teachers: dict[str, CompiledProgram] = {}
        self._onnx_teachers: dict[str, OrtProgram] = {}
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
        built = [self.build_method(name) for name in names]
        for evaluator in dict.fromkeys(e for m in built for e in self.evaluators_for(m)):
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
        failed = FailedRun(
            run_id=hashlib.sha1(f"{name}/{pair.label}/{seed}/{time.time_ns()}".encode())
            .hexdigest()[:16],
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            suite=self.suite.name, dataset=self.data.name, data_source=self.data.data_source,
            budget=self.budget.name, method=name, teacher=pair.teacher, student=pair.student,
            seed=seed, error=str(exc), error_type=type(exc).__name__, environment=fingerprint())
        try:
            path = write_failure(failed, self.results_dir)
        except KdbenchError as write_exc:  # the run's own error is the one to report
            log.error("could not record the failure of %s: %s", name, write_exc)
        else:
            log.error("%s %s seed %d failed; recorded in %s", name, pair.label, seed, path)

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
            self._log_to_mlflow(paths)
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

    def _log_to_mlflow(self, paths: Sequence[Path]) -> None:
        """Log the written records; a tracking failure never undoes a record (it is kept)."""
        for path in paths:
            try:
                mlflow_log.log_record(read_record(path), path, self.mlflow_uri)
            except Exception as exc:  # any tracking error: warn, keep the record
                log.warning("  MLflow (%s) did not take %s: %s: %s; the record is kept, "
                            "`kdbench mlflow` logs it later", self.mlflow_uri, path,
                            type(exc).__name__, exc)

    def _artifacts_dir(self, method: str, pair: Pair, seed: int) -> Path:
        """A run's kept files: RESULTS/artifacts/<suite>/<budget>/<data source>/<method>/
        <pair>/seed<N>."""
        record = record_path(self.results_dir, self.suite.name, self.budget.name,
                             self.data.data_source, method, pair.teacher, pair.student, seed)
        runs = self.results_dir / "runs"
        return self.results_dir / "artifacts" / record.relative_to(runs).with_suffix("")

    # ---- teacher ----------------------------------------------------------------------
    def _teacher_key(self, pair: Pair, seed: int) -> str:
        return teacher_key(pair.teacher, self.data.num_classes, self.data.fingerprint,
                           self.budget.train_subset, self.budget.teacher_recipe, seed)

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
            loader = make_loader(self.data, train_split, train=True, seed=seed,
                                 batch_size=recipe.batch_size, device=self.device,
                                 channels_last=recipe.channels_last_on(self.device))
            fit(model, lambda b, logits: F.cross_entropy(logits, b.y), loader, recipe,
                device=self.device, desc=f"teacher {pair.teacher} seed{seed}",
                progress=self.progress, checkpoint=workdir / "fit.ckpt")

        def score(model: nn.Module) -> dict[str, float]:
            loader = make_loader(self.data, test_split, train=False, seed=seed,
                                 batch_size=recipe.eval_batch_size, device=self.device,
                                 channels_last=recipe.channels_last_on(self.device))
            return evaluate(model, loader, self.device)

        model, info = self.teachers.get(
            pair.teacher, key, build, train, score,
            score_key(self.data.fingerprint, test_split.labels, recipe.eval_batch_size,
                      self.device))
        if info.source == "trained" and distributed.current().primary:
            shutil.rmtree(workdir, ignore_errors=True)  # the cached teacher replaces it
        return model.eval(), info

    # ---- measurement ------------------------------------------------------------------
    def evaluators_for(self, method: Method) -> tuple[str, ...]:
        """The suite's and the user's evaluators, then those the method's claims need."""
        return tuple(dict.fromkeys((*self.evaluators, *method.evaluators)))

    def measure(self, ctx: RunContext, method: Method, name: str, out: Compressed,
                teacher: nn.Module, teacher_info: TeacherInfo, wall: float) -> RunRecord:
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
        # What was measured, kept beside the record (kdbench export reads it back).
        artifacts = save_artifacts(cpu_model, example, self._artifacts_dir(
            name, ctx.pair, ctx.seed), self.results_dir)
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
                                "path": teacher_info.path, "seed": ctx.teacher_seed,
                                "shared_by_seeds": self.budget.teacher_seed is not None},
            reference=method.reference,
            params=report.params, params_nonzero=report.params_nonzero, macs=report.macs,
            flops=report.flops, artifact_bytes=report.artifact_bytes,
            weight_bytes=report.weight_bytes, teacher_weight_bytes=t_report.weight_bytes,
            teacher_params=t_report.params, teacher_macs=t_report.macs,
            params_ratio=report.params / t_report.params,
            macs_ratio=report.macs / t_report.macs,
            model_report=dataclasses.asdict(report),
            latency=[dataclasses.asdict(r) for r in latency],
            wall_time_s=wall, notes=list(out.notes), extras={**out.extras, **(
                {"evaluators": evaluated_with} if evaluated_with else {})},
            config=config_dict(method.cfg), recipe=dataclasses.asdict(self.budget.train),
            environment=fingerprint(), test_images=len(ctx.test_split),
            config_hash=self.config_hash(config_dict(method.cfg), ctx.pair.teacher,
                                         teacher_info.sha256, "fp32"),
            artifacts=artifacts,
        )

    def config_hash(self, method_config: dict[str, Any], teacher_arch: str,
                    teacher_sha256: str, deploy: str) -> str:
        teacher = teacher_identity(self.budget, teacher_arch, teacher_sha256,
                                   teacher_arch in self.teachers.user_checkpoints)
        return config_hash(run_config(self.suite, self.budget, method_config,
                                      self.data.fingerprint, teacher, deploy))

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


    # ---- deployment (INT8) ------------------------------------------------------------
    def targets(self, method: Method) -> tuple[str, ...]:
        """Deployments measured for ``method`` besides fp32: the harness's and its own."""
        return deploy_targets(self.deploy, method.deploy, where=f"deploy of method {method.name!r}")

    def measure_deployed(self, ctx: RunContext, name: str, out: Compressed, teacher: nn.Module,
                         teacher_info: TeacherInfo, fp32: RunRecord, target: str) -> RunRecord:
        """The record of ``out.model`` deployed as ``target`` (int8), measured like fp32.

        Accuracy, artifact bytes and latency are those of the compiled INT8 program; params and
        MACs are the float graph's (logical weights, MACs run in int8), with the stored bits per
        weight. Latency is compiled INT8 vs the compiled fp32 teacher. A failure at any stage
        gives a record with ``deploy_status`` "failed: ..." and no metrics, never an fp32 copy.
        """
        if target not in ("int8", *ONNX_TARGETS):  # deploy_targets admits nothing else
            raise ConfigError(f"no deployment path for {target!r}")
        start = time.perf_counter()
        base = dataclasses.replace(
            fp32, run_id=hashlib.sha1(f"{fp32.run_id}/{target}".encode()).hexdigest()[:16],
            deploy=target, macs_dtype=target, latency=[], metrics={}, artifacts={},
            config_hash=self.config_hash(fp32.config, fp32.teacher, teacher_info.sha256,
                                         target))
        try:
            if distributed.current().distributed:
                raise DeployError("harness", RuntimeError(
                    "int8 deployment is measured in a single process; run it without torchrun"))
            if target == "int8":
                record = self._measure_int8(ctx, out, teacher, teacher_info, base)
            else:
                record = self._measure_onnx(ctx, name, out, teacher, teacher_info, base, target)
        except DeployError as exc:
            versions = {"torchao": torchao_version()} if target == "int8" else runtime_versions()
            return dataclasses.replace(
                base, deploy_status=f"failed: {exc}", artifact_bytes=None,
                notes=[*fp32.notes, f"{target} deployment failed at {exc.stage}"],
                extras={**fp32.extras, "deploy": {
                    "target": target, "failed_stage": exc.stage, **versions,
                    "quantizer": QUANTIZER if target == "int8" else ORT_QUANTIZER}})
        record.wall_time_s = fp32.wall_time_s + time.perf_counter() - start
        return record

    def _measure_int8(self, ctx: RunContext, out: Compressed, teacher: nn.Module,
                      teacher_info: TeacherInfo, base: RunRecord) -> RunRecord:
        shape = self.data.input_shape
        calibration = self._calibration_batches(ctx)
        program = quantize_int8(out.model, calibration, shape)
        size = program_report(program.module, shape)
        batches = self.budget.latency.batch_sizes if self.measure_latency else ()
        compiled = CompiledProgram(program.module, shape, batches)
        metrics, evaluated_with, latency = self._score_and_time(
            ctx, compiled, lambda: self._compiled_teacher(teacher, teacher_info, batches),
            "compiled")
        details = {
            "target": "int8", "quantizer": QUANTIZER, "torchao": torchao_version(),
            "export_strict": program.export_strict, "export_error": program.export_error,
            "calibration": {"split": "train", "batches": program.calibration_batches,
                            "images": program.calibration_images},
            "quantize_s": program.quantize_s, "compile_s": compiled.compile_s,
            "program": dataclasses.asdict(size), "fp32_artifact_bytes": base.artifact_bytes,
            "latency_mode": "torch.compile (inductor, freezing) vs the compiled fp32 teacher",
            "cpu_capability": base.environment.get("aten_cpu_capability"),
            "isa_flags": base.environment.get("isa_flags"),
        }
        if evaluated_with:
            details["evaluators"] = evaluated_with
        return dataclasses.replace(
            base, metrics=metrics, artifact_bytes=size.artifact_bytes,
            weight_bytes=size.weight_bytes,
            bits_per_weight=size.bits_per_weight, latency=latency,
            model_report={**base.model_report, "macs_dtype": "int8",
                          "artifact_bytes": size.artifact_bytes},
            notes=[*base.notes, f"int8 (PT2E x86, compiled); MACs are the float graph's "
                                f"run in int8, {size.bits_per_weight:.2f} bits/weight"],
            extras={**base.extras, "deploy": details})

    def _measure_onnx(self, ctx: RunContext, name: str, out: Compressed, teacher: nn.Module,
                      teacher_info: TeacherInfo, base: RunRecord, target: str) -> RunRecord:
        """``out.model`` exported to ONNX (quantized for onnx-int8) and run by onnxruntime:
        accuracy evaluated, latency against the teacher exported the same way (fp32 ONNX)."""
        shape = self.data.input_shape
        folder = self._artifacts_dir(name, ctx.pair, ctx.seed)
        cpu_model = self._deployed(copy.deepcopy(out.model).cpu().eval(), name)
        path = export_onnx(cpu_model, shape, folder / "model.onnx")
        if target == "onnx-int8":
            path = quantize_onnx_int8(path, folder / "model.int8.onnx",
                                      self._calibration_batches(ctx))
        threads = sorted({s.threads for s in _settings("cpu", self.budget.latency.batch_sizes)})
        program = OrtProgram(path, threads)
        metrics, evaluated_with, latency = self._score_and_time(
            ctx, program, lambda: self._onnx_teacher(teacher, teacher_info, threads), "ort")
        int8 = target == "onnx-int8"
        bits = weight_bits(path, base.params) if int8 else 32.0
        details = {"target": target, **runtime_versions(),
                   "quantizer": ORT_QUANTIZER if int8 else None,
                   "latency_mode": "onnxruntime CPU EP vs the fp32 teacher in onnxruntime",
                   "providers": ["CPUExecutionProvider"],
                   "fp32_artifact_bytes": base.artifact_bytes}
        if evaluated_with:
            details["evaluators"] = evaluated_with
        return dataclasses.replace(
            base, metrics=metrics, artifact_bytes=path.stat().st_size, bits_per_weight=bits,
            weight_bytes=initializer_bytes(path),
            latency=latency, macs_dtype="int8" if int8 else "fp32",
            artifacts={"onnx": {"path": str(path.relative_to(self.results_dir)),
                                "sha256": sha256_of(path), "bytes": path.stat().st_size}},
            notes=[*base.notes, f"{target} (onnxruntime CPU); MACs are the float graph's"
                                + (f" run in int8, {bits:.2f} bits/weight" if int8 else "")],
            extras={**base.extras, "deploy": details})

    def _score_and_time(self, ctx: RunContext, program: nn.Module,
                        teacher_program: Callable[[], nn.Module], mode: str
                        ) -> tuple[dict[str, float], dict[str, Any], list[dict[str, Any]]]:
        """A deployed program's metrics (the suite's evaluators, on CPU) and its latency
        against the teacher deployed the same way (``mode``: its board columns)."""
        cpu_ctx = dataclasses.replace(ctx, device=torch.device("cpu"))
        try:
            metrics, evaluated_with = run_evaluators(self.evaluators, program, cpu_ctx)
        except Exception as exc:  # e.g. an evaluator that needs gradients through the model
            raise DeployError("evaluate", exc) from exc
        latency: list[dict[str, Any]] = []
        if self.measure_latency:
            teacher = teacher_program()
            try:
                latency = [_mode_entry(r, mode) for r in self._cpu_latency(teacher, program)]
            except Exception as exc:  # a program that runs once but not in a loop
                raise DeployError("latency", exc) from exc
        return metrics, evaluated_with, latency

    def _onnx_teacher(self, teacher: nn.Module, info: TeacherInfo,
                      threads: Sequence[int]) -> OrtProgram:
        """The fp32 teacher as ONNX in onnxruntime (exported once per checkpoint, cached)."""
        if info.sha256 not in self._onnx_teachers:
            path = self.cache_dir / "onnx" / f"teacher-{info.sha256[:16]}.onnx"
            if not path.is_file():
                cpu_teacher = self._deployed(copy.deepcopy(teacher).cpu().eval(), "teacher")
                try:
                    export_onnx(cpu_teacher, self.data.input_shape, path)
                except DeployError as exc:
                    raise DeployError("onnx export of the fp32 teacher", exc) from exc
            self._onnx_teachers[info.sha256] = OrtProgram(path, threads)
        return self._onnx_teachers[info.sha256]

    def _calibration_batches(self, ctx: RunContext) -> list[torch.Tensor]:
        """Training-split inputs (no augmentation) for the observers; never test data."""
        images = min(CALIBRATION_IMAGES, len(ctx.train_split))
        split = ctx.train_split.subset(images, seed=0)
        return [b.x.cpu() for b in ctx.loader(split, train=False, batch_size=64)]

    def _compiled_teacher(self, teacher: nn.Module, info: TeacherInfo,
                          batches: Sequence[int]) -> CompiledProgram:
        """The fp32 teacher exported and compiled exactly as the INT8 programs (once each)."""
        if info.sha256 not in self._compiled_teachers:
            try:
                exported = export_program(teacher, self.data.input_shape)
            except DeployError as exc:
                raise DeployError("export of the fp32 teacher", exc) from exc
            self._compiled_teachers[info.sha256] = CompiledProgram(
                exported.module, self.data.input_shape, batches)
        return self._compiled_teachers[info.sha256]

    def _cpu_latency(self, teacher: nn.Module, model: nn.Module) -> list:
        cfg = self.budget.latency
        return compare_latency(teacher, model, self.data.input_shape,
                               _settings("cpu", cfg.batch_sizes), device="cpu",
                               rounds=cfg.rounds, warmup=cfg.warmup, min_iters=cfg.min_iters,
                               max_iters=cfg.max_iters, target_round_s=cfg.target_round_s)


def _mode_entry(result: Any, mode: str) -> dict[str, Any]:
    """A latency entry marked with its runtime track (compiled, ort): its own board columns."""
    entry = dataclasses.asdict(result)
    entry["setting"]["mode"] = mode
    return entry


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

