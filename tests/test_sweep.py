"""`kdbench sweep`: jobs through submitit (a real local run, and the Slurm array it would
submit), `--status`, and the teacher cache shared by concurrent jobs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import torch

from kdbench.benchmarks.atomic import write_json
from kdbench.benchmarks.cli import main
from kdbench.benchmarks.records import record_path
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.sweep import Sweep, status

TINY_SUITE = """\
name = "tiny"
dataset = dict(type="cifar100", root="data", download=False, synthetic_fallback=False)
budgets = dict(smoke=dict(
    pairs=[("resnet8", "resnet8"), ("resnet14", "resnet8")],
    train=dict(epochs=1, batch_size=50, eval_batch_size=200, lr=0.05),
    train_subset=200, test_subset=100,
    resources=dict(gpus_per_node=0, cpus_per_task=1, mem_gb=2, timeout_min=10),
))
"""


def _args(cifar_root: Path, tmp_path: Path) -> list[str]:
    return ["--data-root", str(cifar_root), "--no-download", "--no-synthetic-fallback",
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]


def test_local_sweep_runs_each_job_as_its_own_process(capsys, cifar_root, tmp_path):
    suite = tmp_path / "tiny.py"
    suite.write_text(TINY_SUITE)
    good, wrong = tmp_path / "resnet8.pt", tmp_path / "not-resnet14.pt"
    torch.save(build_model("resnet8", 100).state_dict(), good)
    torch.save(build_model("resnet8", 100).state_dict(), wrong)  # fails in its job, at run time
    code = main(["sweep", "--executor", "local", "--suite", str(suite), "--methods", "scratch",
                 "--seeds", "1", "--max-parallel", "2", "--no-latency",
                 "--teacher-ckpt", f"resnet8={good}", "--teacher-ckpt", f"resnet14={wrong}",
                 *_args(cifar_root, tmp_path)])
    capsys.readouterr()
    assert code == 1  # one job failed
    results = tmp_path / "results"
    counts, rows = status(results, "tiny", "smoke")
    assert counts == {"done": 1, "failed": 1}
    failed = next(r for r in rows if r[0] == "failed")
    assert "resnet14->resnet8" in failed[1] and "does not fit architecture 'resnet14'" in failed[3]
    # Each job wrote only its own record; the board has the finished run with its number and
    # the failed one marked failed, without a number.
    done = record_path(results, "tiny", "smoke", "synthetic", "scratch", "resnet8", "resnet8", 0)
    assert json.loads(done.read_text())["status"] == "ok"
    board = pd.read_csv(results / "leaderboard" / "tiny_smoke.csv")
    assert list(zip(board["teacher"], board["method"], board["status"], strict=True)) == [
        ("resnet8", "scratch", "ok"), ("resnet14", "scratch", "failed")]
    assert pd.isna(board["metric_mean"].iloc[1])
    # Two separate processes ran them (local job ids are process ids).
    ids = {e["job_id"] for e in Sweep.load(results, "tiny", "smoke").jobs}
    assert len(ids) == 2 and os.getpid() not in {int(i) for i in ids}

    assert main(["sweep", "--status", "--suite", str(suite), "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert "1 done" in out and "1 failed" in out and "0 running" in out


def _fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """sbatch/srun/sacct stand-ins: sbatch keeps the script it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "sbatch": f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n',
        "srun": "exit 0\n",
        "sacct": f"cat {tmp_path}/sacct.txt\n",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_slurm_sweep_submits_one_array_with_the_budget_resources(
        capsys, cifar_root, tmp_path, monkeypatch):
    submitted = _fake_slurm(tmp_path, monkeypatch)
    (tmp_path / "sacct.txt").write_text("JobID|State|NodeList\n")
    code = main(["sweep", "--executor", "slurm", "--methods", "kd,scratch", "--seeds", "2",
                 *_args(cifar_root, tmp_path)])
    assert code == 0, capsys.readouterr().err
    script = submitted.read_text()
    # The cifar100 suite's smoke resources: CPU-sized, one array of the 4 jobs.
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=8GB",
                 "#SBATCH --time=60", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=kdbench-cifar100-smoke"):
        assert line in script, line
    assert "--gpus-per-node" not in script
    results = tmp_path / "results"
    sweep = Sweep.load(results, "cifar100", "smoke")
    assert sorted(e["job_id"] for e in sweep.jobs) == [f"4242_{i}" for i in range(4)]
    assert {(e["method"], e["seed"]) for e in sweep.jobs} == {
        (m, s) for m in ("kd", "scratch") for s in (0, 1)}

    # The scheduler says: running, pending, failed (no record); the 4th wrote its record.
    by_id = {e["job_id"]: e for e in sweep.jobs}
    (tmp_path / "sacct.txt").write_text(
        "JobID|State|NodeList\n4242_0|RUNNING|n1\n4242_1|PENDING|\n4242_2|TIMEOUT|n2\n"
        "4242_3|COMPLETED|n1\n")
    write_json({"schema_version": 1, "status": "ok"}, Path(by_id["4242_3"]["record"]))
    counts, rows = status(results, "cifar100", "smoke")
    assert counts == {"running": 1, "pending": 1, "failed": 1, "done": 1}
    assert any("TIMEOUT" in r[3] for r in rows if r[0] == "failed")


def test_no_slurm_here_is_a_clear_error(capsys, cifar_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun / sbatch
    code = main(["sweep", "--executor", "slurm", "--methods", "kd", "--seeds", "1",
                 *_args(cifar_root, tmp_path)])
    err = capsys.readouterr().err.replace("\n", "")
    assert code == 2 and "cannot submit to slurm" in err and "--executor local" in err


def test_status_without_a_sweep_says_how_to_start_one(capsys, tmp_path):
    code = main(["sweep", "--status", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.replace("\n", "")
    assert code == 2 and "no sweep of suite 'cifar100'" in err and "kdbench sweep" in err


TEACHER_JOB = """
import json, logging, os, sys, time
from pathlib import Path
import torch
from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.teachers import TeacherCache, teacher_key

logging.basicConfig(level=logging.INFO)
tmp = Path(sys.argv[1])
(tmp / f"started-{os.getpid()}").touch()

def train(model):
    # Hold the lock until the other job is surely waiting for it.
    while len(list(tmp.glob("started-*"))) < 2:
        time.sleep(0.05)
    time.sleep(1.0)
    with open(tmp / "trained.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)

key = teacher_key("resnet8", 10, "data", None, TrainRecipe(), 0)
_, info = TeacherCache(tmp / "cache").get("resnet8", key, lambda: build_model("resnet8", 10),
                                          train, lambda m: {"top1": 1.0, "top5": 5.0})
print(json.dumps({"source": info.source, "sha256": info.sha256}))
"""


def test_two_jobs_needing_one_teacher_train_it_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", textwrap.dedent(TEACHER_JOB), str(tmp_path)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parents[1]) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    infos = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len((tmp_path / "trained.log").read_text().split()) == 1  # trained once
    assert sorted(i["source"] for i in infos) == ["cache", "trained"]
    assert infos[0]["sha256"] == infos[1]["sha256"]
    assert any("being trained by another job; waiting" in err for _, err in outs)


def test_local_jobs_side_by_side_share_the_cores(tmp_path, monkeypatch):
    # Two jobs at the default thread count would each start one thread per core and
    # oversubscribe them; each gets cpu_count // max_parallel training threads instead.
    from kdbench.benchmarks import sweep as sweep_module
    from kdbench.benchmarks.config import Resources
    from kdbench.benchmarks.options import RunOptions
    from kdbench.benchmarks.sweep import SweepJob, submit

    seen: dict[str, list[SweepJob]] = {}
    monkeypatch.setattr(sweep_module, "_run_locally",
                        lambda executor, jobs, *rest: seen.update(jobs=jobs))
    monkeypatch.setattr(sweep_module.os, "cpu_count", lambda: 8)
    options = RunOptions(results_dir=tmp_path, cache_dir=tmp_path / "cache", device="auto")
    jobs = [SweepJob("tiny", "smoke", "scratch", "resnet8", "resnet8", seed, options)
            for seed in (0, 1, 2)]
    submit(jobs, [tmp_path / f"{j.seed}.json" for j in jobs], executor_kind="local",
           folder=tmp_path / "jobs", resources=Resources(), suite="tiny", budget="smoke",
           results_dir=tmp_path, max_parallel=3)
    assert [job.options.threads for job in seen["jobs"]] == [2, 2, 2]
    # the caller's jobs are left as they were
    assert all(job.options.threads is None for job in jobs)
    # --threads, when given, is what each local job gets
    given = [dataclasses.replace(job, options=options.replace(threads=1)) for job in jobs]
    submit(given, [tmp_path / f"{j.seed}.json" for j in jobs], executor_kind="local",
           folder=tmp_path / "jobs", resources=Resources(), suite="tiny", budget="smoke",
           results_dir=tmp_path, max_parallel=3)
    assert [job.options.threads for job in seen["jobs"]] == [1, 1, 1]


def test_a_record_of_another_configuration_is_not_done(cifar_root, tmp_path):
    # A fashion-mnist short sweep after a suite edit skipped every job with an old record:
    # the sweep's plan, like `kdbench run`, counts only records of this configuration.
    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.method import config_dict
    from kdbench.benchmarks.options import RunOptions
    from kdbench.benchmarks.records import _RECORD_KEYS, SCHEMA_VERSION
    from kdbench.benchmarks.runner import Harness
    from kdbench.benchmarks.sweep import plan_jobs

    suite = load_suite("cifar100")
    options = RunOptions(results_dir=tmp_path / "results", cache_dir=tmp_path / "cache",
                         dataset_overrides={"root": str(cifar_root), "download": False,
                                            "synthetic_fallback": False})
    harness = Harness(suite, "smoke", options)
    pair = harness.budget.pairs[0]
    path = record_path(tmp_path / "results", "cifar100", "smoke", harness.data.data_source,
                       "kd", pair.teacher, pair.student, 0)
    expected = harness.config_hash(config_dict(harness.build_method("kd").cfg), pair.teacher,
                                   "ab" * 32, "fp32")
    for config_hash, planned in (("another-configuration", True), (expected, False)):
        write_json({"schema_version": SCHEMA_VERSION, "status": "ok",
                    "config_hash": config_hash, "teacher_checkpoint": {"sha256": "ab" * 32},
                    **dict.fromkeys(_RECORD_KEYS, 0)}, path)
        jobs, _, _ = plan_jobs(suite, "smoke", ["kd"], [0], options)
        assert bool(jobs) is planned, config_hash
