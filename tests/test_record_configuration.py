"""A row is one configuration; a run is skipped, resumed or replaced only by its own.

Every record carries the hash of what determines its result. A run whose configuration
differs from its record's is run again (the old record kept as replaced), a board row never
averages two configurations, a killed run is resumed only by a run of the same
configuration, and one failed run does not stop the others.
"""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from test_results import make_record

from kdbench.benchmarks.board import leaderboard
from kdbench.benchmarks.cli import main
from kdbench.benchmarks.errors import ConfigError, KdbenchError, RunsFailedError, TrainingError
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.records import (
    load_records,
    read_record,
    record_path,
    replaced_path,
    write_record,
)
from kdbench.benchmarks.registry import METHODS, lookup

# Two training epochs on the 1,797 real digits, one 8-epoch resnet8 teacher: seconds a run.
TINY_SUITE = """
name = "tiny-digits"
metric = "top1"
dataset = dict(type="digits", size=32)
budgets = dict(smoke=dict(
    pairs=[("resnet8", "resnet8")],
    train=dict(epochs=1, batch_size=64, lr=0.05, schedule="cosine", eval_batch_size=500),
    teacher_train=dict(epochs=1, batch_size=64, lr=0.05, schedule="cosine",
                       eval_batch_size=500),
    train_subset=256, seeds=1, latency=dict(enabled=False),
))
"""


@pytest.fixture()
def tiny(tmp_path):
    suite = tmp_path / "tiny-digits.py"
    suite.write_text(TINY_SUITE)
    return suite


def cli(suite, tmp_path, *args):
    return main(["run", "--suite", str(suite), "--results-dir", str(tmp_path / "results"),
                 "--cache-dir", str(tmp_path / "cache"), "--no-latency", "--quiet", *args])


def kd_record(tmp_path):
    return record_path(tmp_path / "results", "tiny-digits", "smoke", "real", "kd", "resnet8",
                       "resnet8", 0)


def test_a_replaced_record_is_kept_beside_the_new_one_and_off_the_board(tmp_path):
    old = make_record(seed=0, top1=60.0)
    new = dataclasses.replace(old, run_id="newer", metrics={"top1": 70.0, "top5": 90.0})
    path = write_record(old, tmp_path)
    write_record(new, tmp_path)
    kept = json.loads(replaced_path(path, old.run_id).read_text())
    assert kept["status"] == "replaced" and kept["replaced_by"] == "newer"
    assert kept["metrics"]["top1"] == 60.0
    assert [r["metrics"]["top1"] for r in load_records(tmp_path)] == [70.0]


def test_a_board_row_never_averages_two_configurations():
    t4 = [dataclasses.replace(make_record(seed=s, top1=80.0 + s), config_hash="a" * 16,
                              created=f"2026-12-01T00:00:0{s}+00:00") for s in range(3)]
    t8 = dataclasses.replace(make_record(seed=0, top1=10.0), config_hash="b" * 16,
                             created="2026-12-02T00:00:00+00:00")
    board = leaderboard([dataclasses.asdict(r) for r in (*t4, t8)])
    rows = board.set_index("method")
    # The newest configuration keeps the name; the other is its own row, named by its hash.
    assert rows.loc["kd", "n"] == 1 and rows.loc["kd", "metric_mean"] == 10.0
    other = f"kd#{'a' * 8}"
    assert rows.loc[other, "n"] == 3 and rows.loc[other, "metric_mean"] == pytest.approx(81.0)
    assert "another configuration" in rows.loc[other, "notes"]
    assert rows.loc["kd", "config_hash"] == "b" * 16


@pytest.mark.parametrize("content, says", [
    ("[1, 2]", "JSON list, not a run record"),
    ('{"schema_version": 1, "method": "kd"}', "not a complete run record: it lacks suite"),
    ("{not json", "not valid JSON"),
])
def test_a_file_that_is_not_a_record_is_named(tmp_path, content, says):
    path = tmp_path / "runs" / "s" / "smoke" / "real" / "kd" / "a-b" / "seed0.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(KdbenchError, match=says) as err:
        load_records(tmp_path)
    assert str(path) in str(err.value)
    assert read_record.__name__  # the same check serves every reader


def test_another_configuration_is_run_not_skipped_and_the_old_record_kept(tiny, tmp_path):
    assert cli(tiny, tmp_path, "--methods", "kd") == 0
    first = read_record(kd_record(tmp_path))
    assert len(first["config_hash"]) == 16
    # Same configuration: skipped, the record untouched.
    assert cli(tiny, tmp_path, "--methods", "kd") == 0
    assert read_record(kd_record(tmp_path))["run_id"] == first["run_id"]
    # Another temperature: run, and the T=4 record kept as replaced.
    assert cli(tiny, tmp_path, "--methods", "kd", "--set", "kd.temperature=8") == 0
    second = read_record(kd_record(tmp_path))
    assert second["run_id"] != first["run_id"] and second["config"]["temperature"] == 8
    assert second["config_hash"] != first["config_hash"]
    assert replaced_path(kd_record(tmp_path), first["run_id"]).is_file()
    # --force re-runs the same configuration and keeps the record it replaces too.
    assert cli(tiny, tmp_path, "--methods", "kd", "--set", "kd.temperature=8",
               "--force") == 0
    third = read_record(kd_record(tmp_path))
    assert third["config_hash"] == second["config_hash"]
    assert replaced_path(kd_record(tmp_path), second["run_id"]).is_file()
    board = pd.read_csv(tmp_path / "results" / "leaderboard" / "tiny-digits_smoke.csv")
    assert board.loc[board["method"] == "kd", "n"].tolist() == [1]


def test_seeds_with_teachers_of_their_own_are_one_row(tiny, tmp_path):
    """Each seed trains its own teacher here (no shared teacher_seed): the teachers' bytes
    differ, the configuration does not, so the seeds average into one row (regress
    --update builds its baselines' seed spread from such rows)."""
    assert cli(tiny, tmp_path, "--methods", "scratch", "--seeds", "0,1") == 0
    records = load_records(tmp_path / "results", "tiny-digits", "smoke")
    assert len({r["teacher_checkpoint"]["sha256"] for r in records}) == 2
    board = pd.read_csv(tmp_path / "results" / "leaderboard" / "tiny-digits_smoke.csv")
    assert board.loc[board["method"] == "scratch", "n"].tolist() == [2]
    assert not board["method"].str.contains("#").any()


def test_checkpoints_are_keyed_by_configuration(tiny, tmp_path):
    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.runner import Harness

    def workdir(**overrides):
        harness = Harness(load_suite(str(tiny)), "smoke", RunOptions(
            results_dir=tmp_path / "r", cache_dir=tmp_path / "cache", method_overrides=overrides,
            measure_latency=False, progress=False))
        method = harness.build_method("kd")
        pair = harness.budget.pairs[0]
        _, info = harness.teacher(pair, 0)
        return harness, method, pair, info, harness._workdir(method, pair, 0, info)

    *_, t4 = workdir()
    harness, method, pair, info, t8 = workdir(kd={"temperature": 8})
    assert t4 != t8  # a T=8 run never resumes a killed T=4 run's checkpoints
    (t8 / "config_hash").write_text("0" * 16)  # a folder that claims another configuration
    with pytest.raises(ConfigError, match=r"holds checkpoints of configuration 0{16}"):
        harness._workdir(method, pair, 0, info)



def test_checkpoints_written_by_other_code_are_not_resumed(tiny, tmp_path):
    """A killed run resumed after a code change would continue under rules it did not start
    with (a fashion-mnist seed resumed a prox phase written before its layer floor)."""
    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.runner import Harness

    harness = Harness(load_suite(str(tiny)), "smoke", RunOptions(
        results_dir=tmp_path / "r", cache_dir=tmp_path / "cache", measure_latency=False,
        progress=False))
    method = harness.build_method("kd")
    pair = harness.budget.pairs[0]
    _, info = harness.teacher(pair, 0)
    work = harness._workdir(method, pair, 0, info)
    (work / "fit.ckpt").write_bytes(b"same code")
    assert harness._workdir(method, pair, 0, info) == work
    assert (work / "fit.ckpt").is_file()  # the same code resumes it
    (work / "code_fingerprint").write_text("0" * 16)  # as if written before an edit
    harness._workdir(method, pair, 0, info)
    assert not (work / "fit.ckpt").exists()


def test_the_code_fingerprint_follows_the_source(tmp_path, monkeypatch):
    import sys

    from kdbench.benchmarks import provenance

    package = tmp_path / "someplugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text("STEP = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("someplugin.method")
    before = provenance.code_fingerprint("someplugin.method")
    (package / "method.py").write_text("STEP = 2\n")
    provenance._folder_digest.cache_clear()
    assert provenance.code_fingerprint("someplugin.method") != before
    for name in ("someplugin.method", "someplugin"):
        sys.modules.pop(name)

def test_one_failed_run_does_not_stop_the_others(tiny, tmp_path, monkeypatch, capsys):
    def diverge(self, ctx):
        raise TrainingError("loss became nan at epoch 1, step 3")

    monkeypatch.setattr(lookup(METHODS, "kd"), "run", diverge)
    code = cli(tiny, tmp_path, "--methods", "kd,scratch")
    err = capsys.readouterr().err
    assert code == 2
    assert "1 of 2 runs failed" in err and "kd resnet8->resnet8 seed 0" in err
    assert "loss became nan" in err
    # scratch ran after kd failed, and the board has both: scratch with its number, kd failed.
    board = pd.read_csv(tmp_path / "results" / "leaderboard" / "tiny-digits_smoke.csv")
    rows = board.set_index("method")
    assert rows.loc["scratch", "status"] == "ok" and rows.loc["scratch", "n"] == 1
    assert rows.loc["kd", "status"] == "failed" and pd.isna(rows.loc["kd", "metric_mean"])
    assert "loss became nan" in rows.loc["kd", "notes"]


def test_runs_failed_error_lists_every_failure():
    exc = RunsFailedError(["kd a->b seed 0: boom", "lma a->b seed 1: bang"], 10)
    assert "2 of 10 runs failed" in str(exc) and "boom" in str(exc) and "bang" in str(exc)


def test_teacher_training_resumes_from_its_last_epoch(tiny, tmp_path, monkeypatch):
    from kdbench.benchmarks import train
    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.runner import Harness

    suite = load_suite(str(tiny))
    budget = suite.budget("smoke")
    recipe = budget.teacher_recipe.replace(epochs=3)
    suite = dataclasses.replace(suite, budgets={"smoke": dataclasses.replace(
        budget, teacher_train=recipe)})

    def harness():
        return Harness(suite, "smoke", RunOptions(results_dir=tmp_path / "r",
                                                  cache_dir=tmp_path / "cache",
                                                  measure_latency=False, progress=False))

    real_save, starts = train._save, []

    def killed_after_epoch_1(path, model, optimizer, epoch, *args, **kwargs):
        real_save(path, model, optimizer, epoch, *args, **kwargs)
        if epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    real_resume = train._resume

    def resume(*args, **kwargs):
        start = real_resume(*args, **kwargs)
        starts.append(start[0])
        return start

    monkeypatch.setattr(train, "_resume", resume)
    monkeypatch.setattr(train, "_save", killed_after_epoch_1)
    pair = budget.pairs[0]
    with pytest.raises(KeyboardInterrupt):
        harness().teacher(pair, 0)
    monkeypatch.setattr(train, "_save", real_save)
    _, info = harness().teacher(pair, 0)
    assert starts == [0, 1]  # the second training began at epoch 1 of 3, not at the start
    assert info.source == "trained"
    assert not list((tmp_path / "cache" / "work").glob("teacher-*/fit.ckpt"))


def test_a_checkpoint_save_onto_a_full_disk_is_a_clear_error_and_leaves_no_temp(
        tmp_path, monkeypatch):
    import torch

    from kdbench.benchmarks import train

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = tmp_path / "fit.ckpt"
    train._save(ckpt, model, optimizer, 1, 4)
    before = ckpt.read_bytes()
    temps = []

    def full_disk(obj, f, *a, **k):
        temps.append(f)
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    for _ in range(2):
        with pytest.raises(TrainingError, match=rf"could not write checkpoint {ckpt}.*free space"):
            train._save(ckpt, model, optimizer, 2, 8)
    assert ckpt.read_bytes() == before  # the last good checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.ckpt"]  # no temp left
    assert temps[0] != temps[1]  # each save its own temp name: concurrent saves never collide


def test_an_identical_run_in_another_process_is_waited_for_and_reused(tiny, tmp_path):
    import subprocess
    import sys
    import threading
    import time

    from filelock import FileLock

    from kdbench.benchmarks.config import load_suite
    from kdbench.benchmarks.runner import Harness

    assert cli(tiny, tmp_path, "--methods", "kd") == 0  # the record the other run writes
    record = read_record(kd_record(tmp_path))
    harness = Harness(load_suite(str(tiny)), "smoke", RunOptions(
        results_dir=tmp_path / "results", cache_dir=tmp_path / "cache", measure_latency=False,
        progress=False))
    method, pair = harness.build_method("kd"), harness.budget.pairs[0]
    _, info = harness.teacher(pair, 0)
    workdir = harness._workdir(method, pair, 0, info)
    # Another process is running the same configuration: it holds the run's lock.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from filelock import FileLock\n"
        f"lock = FileLock({str(workdir)!r} + '.lock'); lock.acquire()\n"
        "print('held', flush=True); sys.stdin.readline()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        paths=harness.run_one(method, pair, 0)))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive()  # waiting for the lock, not training into the same folder
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)
    waiter.join(timeout=60)
    assert result["paths"] == []  # the other process's record is reused, not run again
    assert read_record(kd_record(tmp_path))["run_id"] == record["run_id"]
    assert not FileLock(f"{workdir}.lock").is_locked
