"""``kdbench sweep``: a suite as (method x pair x seed) jobs, through submitit.

``--executor slurm`` submits one Slurm job array with the budget's ``resources``;
``--executor local`` runs the same jobs as local subprocesses (submitit's LocalExecutor),
``--max-parallel`` at a time. Every job is one ``Harness.run`` of one method, pair and
seed: it writes only its own record (or its ``.failed.json``) and then rebuilds the
leaderboard from whatever records exist (under a lock). The teacher cache is shared by
the jobs through its per-key file lock. ``kdbench sweep --status`` reads the sweep's
manifest, the records and the scheduler and shows what is done, running, pending and failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit

from kdbench.benchmarks.atomic import write_json
from kdbench.benchmarks.config import Pair, Resources, SuiteConfig, load_suite
from kdbench.benchmarks.errors import ConfigError, KdbenchError
from kdbench.benchmarks.options import RunOptions, add_run_options, run_options_from
from kdbench.benchmarks.records import failure_path, record_path
from kdbench.benchmarks.table import duration_text

log = logging.getLogger("kdbench")

EXECUTORS = ("slurm", "local")
# Scheduler states (sacct) by what they mean for a job that has written no record yet.
SLURM_PENDING = {"PENDING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT"}


@dataclass(frozen=True)
class SweepJob:
    """Everything one job needs; pickled by submitit and run by ``run_job`` on a node."""

    suite: str  # a suite name or config file path
    budget: str
    method: str
    teacher: str
    student: str
    seed: int
    # How the run is carried out, as `kdbench run` would (results and cache folders: absolute,
    # the job may start elsewhere). ``options.threads``: training threads; local jobs running
    # side by side get an equal share of the cores, so they do not oversubscribe them.
    options: RunOptions = field(default_factory=lambda: RunOptions(device="auto"))

    @property
    def label(self) -> str:
        return f"{self.method} {self.teacher}->{self.student} seed{self.seed}"

    @property
    def key(self) -> tuple:
        return self.method, self.teacher, self.student, self.seed

    def entry(self) -> dict[str, Any]:
        """The job in the sweep manifest: its run and its options, as plain JSON values."""
        options = {f.name: getattr(self.options, f.name)
                   for f in dataclasses.fields(RunOptions)}
        options.update(results_dir=str(self.options.results_dir),
                       cache_dir=str(self.options.cache), evaluators=list(self.options.evaluators),
                       deploy=list(self.options.deploy),
                       dataset_overrides=dict(self.options.dataset_overrides),
                       teacher_checkpoints=dict(self.options.teacher_checkpoints),
                       method_overrides={k: dict(v) for k, v in
                                         self.options.method_overrides.items()})
        return {"suite": self.suite, "budget": self.budget, "method": self.method,
                "teacher": self.teacher, "student": self.student, "seed": self.seed, **options}


def run_job(job: SweepJob) -> list[str]:
    """Run one sweep job in this process; returns the record paths it wrote."""
    from kdbench.benchmarks.board import rebuild_leaderboard
    from kdbench.benchmarks.runner import Harness

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    _export_torch_distributed_env()
    options = job.options.replace(progress=False)  # a job's log is a file, not a terminal
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    suite = load_suite(job.suite)
    harness = Harness(suite, job.budget, options)
    paths = harness.run([job.method], [job.seed], pairs=[Pair(job.teacher, job.student)])
    if paths:
        rebuild_leaderboard(options.results_dir, suite.name, job.budget)
    return [str(p) for p in paths]


class SweepRunner(submitit.helpers.Checkpointable):
    """What is submitted: ``run_job``, requeued by submitit when Slurm preempts the job or
    its time runs out (USR2); the requeued job resumes from the last epoch checkpoint."""

    def __call__(self, job: SweepJob) -> list[str]:
        return run_job(job)


def _export_torch_distributed_env() -> None:
    """In a multi-task submitit job, set the variables torchrun would (RANK, WORLD_SIZE,
    MASTER_ADDR, ...) so the shared loop trains with DDP over the job's tasks."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (e.g. a direct call)
        return
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export()


# ---- planning and submission --------------------------------------------------------------
@dataclass
class Sweep:
    """What ``--status`` needs to find the jobs again: written next to the results."""

    suite: str
    budget: str
    executor: str
    folder: str  # submitit's logs and pickles
    jobs: list[dict[str, Any]]  # SweepJob.entry() + record, job_id

    @staticmethod
    def path(results_dir: Path, suite: str, budget: str) -> Path:
        return Path(results_dir) / "sweeps" / f"{suite}_{budget}.json"

    def save(self, results_dir: Path) -> Path:
        path = self.path(results_dir, self.suite, self.budget)
        write_json(asdict(self), path)
        return path

    @classmethod
    def load(cls, results_dir: Path, suite: str, budget: str) -> Sweep:
        path = cls.path(results_dir, suite, budget)
        if not path.is_file():
            raise KdbenchError(f"no sweep of suite {suite!r}, budget {budget!r} under "
                               f"{results_dir} (looked for {path}); start one with `kdbench "
                               f"sweep --suite {suite} --budget {budget} --executor local|slurm`")
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise KdbenchError(f"sweep manifest {path} is unreadable ({exc}); delete it and "
                               "start the sweep again (finished runs keep their records)") from exc


def plan_jobs(suite: SuiteConfig, budget: str, methods: Sequence[str] | None,
              seeds: Sequence[int] | None, options: RunOptions, *,
              suite_ref: str | None = None) -> tuple[list[SweepJob], list[Path], str]:
    """The jobs still to run (validated up front), their record paths and the data source.

    Each job runs with ``options``; ``suite_ref``: how a job loads the suite (a name or an
    absolute config file path; default: ``suite.name``). Runs with a record are left out
    unless ``options.force``; pairs a method does not support are skipped with the method's
    reason, as ``kdbench run`` does.
    """
    from kdbench.benchmarks.runner import Harness

    # Planning here needs no accelerator: the jobs resolve options.device on their nodes.
    harness = Harness(suite, budget, options.replace(device="cpu", progress=False))
    plan = harness.plan(methods, seeds)
    source = harness.data.data_source  # also: a missing dataset fails before submitting
    jobs, records = [], []
    for pair in plan.pairs:
        for seed in plan.seeds:
            for name in plan.methods:
                method = harness.build_method(name)
                reason = method.supports(pair)
                if reason:
                    log.warning("%s %s: skipped, %s", name, pair.label, reason)
                    continue
                record = record_path(options.results_dir, suite.name, budget, source,
                                     name, pair.teacher, pair.student, seed)
                # As `kdbench run`: a record of another configuration (an edited suite, a
                # --set) does not count as done.
                if not options.force and not harness.stale_records(method, pair, seed):
                    continue
                jobs.append(SweepJob(suite=suite_ref or suite.name, budget=budget, method=name,
                                     teacher=pair.teacher, student=pair.student, seed=seed,
                                     options=options))
                records.append(record)
    return jobs, records, source


def make_executor(kind: str, folder: Path, resources: Resources, name: str) -> Any:
    """A submitit executor with the budget's per-job resources."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=kind)
    except RuntimeError as exc:  # e.g. no srun/sbatch on this machine
        raise KdbenchError(f"cannot submit to {kind}: {exc}; run this on a Slurm login node, "
                           "or use --executor local") from exc
    params: dict[str, Any] = dict(name=name, timeout_min=resources.timeout_min)
    if kind == "slurm":
        params.update(
            nodes=resources.nodes, tasks_per_node=resources.tasks_per_node,
            cpus_per_task=resources.cpus_per_task, mem_gb=resources.mem_gb,
            slurm_array_parallelism=resources.array_parallelism)
        if resources.gpus_per_node:  # some clusters reject an explicit --gpus-per-node=0
            params["gpus_per_node"] = resources.gpus_per_node
        if resources.partition:
            params["slurm_partition"] = resources.partition
        if resources.slurm_extra:
            params["slurm_additional_parameters"] = dict(resources.slurm_extra)
    else:  # one process per job on this machine, with the GPUs it asks for when present
        import torch

        params["gpus_per_node"] = min(resources.gpus_per_node, torch.cuda.device_count())
    executor.update_parameters(**params)
    return executor


def submit(jobs: list[SweepJob], records: list[Path], *, executor_kind: str, folder: Path,
           resources: Resources, suite: str, budget: str, results_dir: Path,
           max_parallel: int = 1, wait: bool = False) -> Sweep:
    """Submit ``jobs``; ``local`` runs them here, at most ``max_parallel`` at once."""
    executor = make_executor(executor_kind, folder, resources, f"kdbench-{suite}-{budget}")
    sweep = _merged_manifest(results_dir, suite, budget, executor_kind, folder)
    entries = {_key(e): e for e in sweep.jobs}
    for job, record in zip(jobs, records, strict=True):
        entries[job.key] = {**job.entry(), "record": str(record), "job_id": None}
    sweep.jobs = list(entries.values())
    if executor_kind == "slurm":
        with executor.batch():  # one job array
            handles = [executor.submit(SweepRunner(), job) for job in jobs]
        for job, handle in zip(jobs, handles, strict=True):
            entries[job.key]["job_id"] = handle.job_id
        sweep.save(results_dir)
        log.info("submitted %d jobs as Slurm array %s; follow them with `kdbench sweep "
                 "--status --suite %s --budget %s`", len(handles),
                 handles[0].job_id.split("_")[0] if handles else "-", suite, budget)
        if wait:
            _collect(list(zip(jobs, handles, strict=True)))
        return sweep
    max_parallel = max(1, max_parallel)
    share = max(1, (os.cpu_count() or 1) // max_parallel)  # unless --threads says otherwise
    _run_locally(executor, [dataclasses.replace(job, options=job.options.replace(
                     threads=job.options.threads or share)) for job in jobs],
                 entries, sweep, results_dir, max_parallel)
    return sweep


def _run_locally(executor: Any, jobs: list[SweepJob], entries: dict[tuple, dict[str, Any]],
                 sweep: Sweep, results_dir: Path, max_parallel: int) -> None:
    queue, running = list(jobs), []
    started = time.perf_counter()
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                job = queue.pop(0)
                handle = executor.submit(SweepRunner(), job)
                entries[job.key]["job_id"] = handle.job_id
                sweep.save(results_dir)  # --status from another shell sees it running
                log.info("started %s (local job %s)", job.label, handle.job_id)
                running.append((job, handle))
            finished = [(j, h) for j, h in running if h.done()]
            running = [(j, h) for j, h in running if not h.done()]
            _collect(finished)
            if running:
                time.sleep(0.5)
        log.info("%d local jobs, %d at a time (%d training threads each), in %s wall",
                 len(jobs), max_parallel, jobs[0].options.threads if jobs else 0,
                 duration_text(time.perf_counter() - started))
    except KeyboardInterrupt:
        for _, handle in running:  # stop them too; their checkpoints make them resumable
            handle.cancel(check=False)
        raise


def _collect(pairs: list[tuple[SweepJob, Any]]) -> None:
    """Wait for jobs and log each outcome; a failed job does not stop the others."""
    for job, handle in pairs:
        try:
            handle.result()
        except Exception as exc:  # submitit re-raises the job's error with its traceback
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.error("%s failed (job %s): %s", job.label, handle.job_id, last)
        else:
            log.info("%s done (job %s)", job.label, handle.job_id)


def _key(entry: dict[str, Any]) -> tuple:
    return entry["method"], entry["teacher"], entry["student"], entry["seed"]


def _merged_manifest(results_dir: Path, suite: str, budget: str, executor: str,
                     folder: Path) -> Sweep:
    """The existing manifest (earlier submissions keep their entries) or a new one."""
    try:
        old = Sweep.load(results_dir, suite, budget)
    except KdbenchError:
        return Sweep(suite, budget, executor, str(folder), [])
    if old.executor != executor:  # job ids of the other executor would be misread
        old.jobs = [e for e in old.jobs if Path(e["record"]).exists()]
    old.executor, old.folder = executor, str(folder)
    return old


# ---- status ---------------------------------------------------------------------------------
def job_state(entry: dict[str, Any], executor: str, folder: Path) -> tuple[str, str]:
    """(done | running | pending | failed, detail) of one manifest entry.

    The record decides first (jobs write it last); then the scheduler: sacct for Slurm,
    the job's process for local jobs.
    """
    record = Path(entry["record"])
    failure = failure_path(record)
    if failure.is_file():
        try:
            return "failed", json.loads(failure.read_text()).get("error", "")
        except json.JSONDecodeError:
            return "failed", f"unreadable failure record {failure}"
    if record.is_file():
        return "done", str(record)
    job_id = entry.get("job_id")
    if not job_id:
        return "pending", "not submitted yet"
    if executor == "slurm":
        state = submitit.SlurmJob(folder=folder, job_id=job_id).state.split(" ")[0]
        if state in SLURM_PENDING:
            return "pending", f"slurm job {job_id} {state}"
        if state in SLURM_RUNNING:
            return "running", f"slurm job {job_id} {state}"
        if state == "UNKNOWN":
            return "pending", f"slurm job {job_id}: sacct does not know it (yet)"
        return "failed", f"slurm job {job_id} ended {state} without a record; see its log in " \
                         f"{folder}"
    if _alive(int(job_id)):
        return "running", f"local job {job_id}"
    return "failed", f"local job {job_id} ended without a record (killed?); re-run the sweep " \
                     "to resume it"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id
        return True
    return True


def status(results_dir: Path, suite: str, budget: str) -> tuple[Counter, list[tuple]]:
    sweep = Sweep.load(results_dir, suite, budget)
    rows = []
    for entry in sweep.jobs:
        state, detail = job_state(entry, sweep.executor, Path(sweep.folder))
        rows.append((state, f"{entry['method']} {entry['teacher']}->{entry['student']} "
                            f"seed{entry['seed']}", entry.get("job_id") or "-", detail))
    return Counter(r[0] for r in rows), rows


# ---- command line ---------------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="run a suite as (method x pair x seed) jobs on a "
                           "Slurm cluster or as local processes (submitit)")
    # The options of `kdbench run`, declared once (benchmarks.options); jobs resolve the
    # device on their own node.
    add_run_options(sweep, device="auto", device_help="cpu, cuda or auto (on each job's node)")
    sweep.add_argument("--executor", default="local", choices=EXECUTORS)
    sweep.add_argument("--status", action="store_true",
                       help="show the sweep's done / running / pending / failed jobs")
    sweep.add_argument("--folder", type=Path, help="submitit logs and pickles "
                       "(default: RESULTS/sweeps/SUITE_BUDGET)")
    sweep.add_argument("--max-parallel", type=int, default=1,
                       help="local executor: jobs running at once")
    sweep.add_argument("--wait", action="store_true",
                       help="slurm executor: wait for the jobs and report each outcome")


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from kdbench.benchmarks.console import show_leaderboard

    suite = load_suite(args.suite)
    if args.status:
        counts, rows = status(args.results_dir, suite.name, args.budget)
        table = Table(title=f"sweep {suite.name} · {args.budget}: " + ", ".join(
            f"{counts.get(s, 0)} {s}" for s in ("done", "running", "pending", "failed")))
        for col in ("state", "run", "job", "detail"):
            table.add_column(col, overflow="fold")
        order = {"failed": 0, "running": 1, "pending": 2, "done": 3}
        for row in sorted(rows, key=lambda r: order[r[0]]):
            table.add_row(*row)
        Console(width=200).print(table)
        return 0
    if args.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {args.max_parallel}")
    options, methods, seeds = run_options_from(args, suite)
    # The jobs may start in another folder (or on another node): absolute paths.
    options = options.replace(results_dir=options.results_dir.resolve(),
                              cache_dir=options.cache.resolve())
    results_dir = options.results_dir
    suite_ref = (args.suite if Path(args.suite).suffix != ".py"
                 else str(Path(args.suite).resolve()))
    jobs, records, source = plan_jobs(suite, args.budget, methods, seeds, options,
                                      suite_ref=suite_ref)
    folder = (args.folder or results_dir / "sweeps" / f"{suite.name}_{args.budget}").resolve()
    log.info("sweep %s · %s (%s data): %d jobs to run on %s", suite.name, args.budget, source,
             len(jobs), args.executor)
    submit(jobs, records, executor_kind=args.executor, folder=folder,
           resources=suite.budget(args.budget).resources, suite=suite.name, budget=args.budget,
           results_dir=results_dir, max_parallel=args.max_parallel, wait=args.wait)
    counts, _ = status(results_dir, suite.name, args.budget)
    log.info("sweep status: %s", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if args.executor == "local" or args.wait:
        if counts.get("done"):
            show_leaderboard(suite.name, args.budget, results_dir, metrics=suite.table_metrics)
        return 0 if not counts.get("failed") else 1
    return 0
