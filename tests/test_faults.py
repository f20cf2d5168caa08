"""Injected faults: each one ends in a clear error and damages nothing written before it.

NaN/inf losses, corrupt/truncated/foreign/malicious checkpoints, corrupt dataset files,
read-only and full results directories, and concurrent record writers and leaderboard
rebuilds. (Kills mid-epoch are in test_ddp_and_kills.py.)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fit_worker import RECIPE, toy_data, toy_model

from kdbench.benchmarks.board import leaderboard_path, rebuild_leaderboard, write_leaderboard
from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.data import BatchLoader
from kdbench.benchmarks.errors import ConfigError, KdbenchError, TrainingError
from kdbench.benchmarks.options import RunOptions
from kdbench.benchmarks.records import failure_path, load_records, record_path, write_record
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.teachers import TeacherCache, teacher_key
from kdbench.benchmarks.train import fit

CPU = torch.device("cpu")


def ce(batch, logits):
    return F.cross_entropy(logits, batch.y)


def _loader():
    data = toy_data()
    return BatchLoader(data.train, 32, mean=data.mean, std=data.std, train=True, seed=0)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ---- NaN / inf --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_loss_names_epoch_and_step_and_keeps_the_last_good_checkpoint(bad, tmp_path):
    ckpt = tmp_path / "fit.ckpt"

    def loss(batch, logits):  # finite in epoch 1, non-finite from epoch 2 on
        return ce(batch, logits) * (bad if state["epoch"] >= 1 else 1.0)

    state = {"epoch": 0}
    # Checked every log_every=2 steps: caught at step 6, the 2nd of epoch 2 (an inf loss
    # turns the weights, and so the next loss, into nan).
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch 2, step 6; .*"
                                            rf"last good checkpoint {ckpt} is kept"):
        fit(toy_model(), loss, _loader(), RECIPE, device=CPU, checkpoint=ckpt,
            before_epoch=lambda s: state.update(epoch=s.epoch))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["model"].values())


def _nan_suite(tmp_path: Path):
    """The smoke suite, with a learning rate that explodes in epoch 2 (x1e12 at epoch 1)."""
    suite = load_suite("cifar100")
    smoke = suite.budget("smoke")
    recipe = smoke.train.replace(epochs=2, schedule="multistep", milestones=(1,), gamma=1e12)
    budget = dataclasses.replace(smoke, train=recipe, pairs=smoke.pairs[:1])
    return dataclasses.replace(suite, budgets={"smoke": budget})


def test_nan_run_writes_a_failed_record_that_never_reaches_the_leaderboard(
        cifar_root, tmp_path):
    from kdbench.benchmarks.runner import Harness

    teacher = tmp_path / "teacher.pt"  # a given teacher: no teacher training in this test
    torch.save(build_model("resnet14", 100).state_dict(), teacher)
    results = tmp_path / "results"
    harness = Harness(_nan_suite(tmp_path), "smoke", RunOptions(
        results_dir=results, cache_dir=tmp_path / "cache",
        teacher_checkpoints={"resnet14": str(teacher)},
        dataset_overrides={"root": str(cifar_root), "download": False,
                           "synthetic_fallback": False},
        measure_latency=False, progress=False))
    # An earlier good record of another method, and its leaderboard: must stay as they are.
    from test_results import make_record

    good = make_record(method="kd", seed=0)
    good = dataclasses.replace(good, teacher="resnet14", student="resnet8",
                               data_source="synthetic")
    write_record(good, results)
    rebuild_leaderboard(results, "cifar100", "smoke")
    before = _snapshot(results)

    with pytest.raises(TrainingError, match=r"method 'scratch', .*loss became (nan|inf) at "
                                            r"epoch 2, step \d+"):
        harness.run(["scratch"], [0])
    record = record_path(results, "cifar100", "smoke", "synthetic", "scratch", "resnet14",
                         "resnet8", 0)
    assert not record.exists()
    failed = json.loads(failure_path(record).read_text())
    assert failed["status"] == "failed" and failed["error_type"] == "TrainingError"
    assert "epoch 2" in failed["error"] and failed["method"] == "scratch"
    # The last good checkpoint (after epoch 1) is kept in the run's work directory.
    ckpts = list((tmp_path / "cache" / "work").glob("*/fit.ckpt"))
    assert len(ckpts) == 1 and torch.load(ckpts[0], weights_only=True)["epoch"] == 1
    # Failed runs are not records: the board's numbers come from the good one only, and
    # the failed run is a row marked failed, without a number.
    assert [r["method"] for r in load_records(results, "cifar100", "smoke")] == ["kd"]
    _, path = rebuild_leaderboard(results, "cifar100", "smoke")
    board = pd.read_csv(path)
    assert list(board["method"]) == ["kd", "scratch"]
    assert list(board["status"]) == ["ok", "failed"] and pd.isna(board["metric_mean"].iloc[1])
    board_file = str(path.relative_to(results))  # rebuilt with the failed row
    after = {k: v for k, v in _snapshot(results).items() if k != board_file}
    assert after == {**{k: v for k, v in before.items() if k != board_file},
                     str(failure_path(record).relative_to(results)):
                     failure_path(record).read_bytes()}


# ---- checkpoints -------------------------------------------------------------------------------
def _good_checkpoint(tmp_path: Path) -> Path:
    ckpt = tmp_path / "fit.ckpt"
    fit(toy_model(), ce, _loader(), RECIPE.replace(epochs=1), device=CPU, checkpoint=ckpt)
    return ckpt


class _Evil:
    """Unpickling this runs code: ``open(marker, "w")`` creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("fault", ["garbage", "truncated", "other_arch", "malicious"])
def test_bad_checkpoint_is_refused_with_a_clear_error_and_left_as_it_was(fault, tmp_path):
    ckpt = _good_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    if fault == "garbage":
        ckpt.write_bytes(os.urandom(4096))
        says = "not a readable training checkpoint"
    elif fault == "truncated":  # e.g. copied off a full disk
        ckpt.write_bytes(ckpt.read_bytes()[:300])
        says = "not a readable training checkpoint"
    elif fault == "other_arch":
        torch.save({"model": build_model("resnet8", 4).state_dict(), "optimizer": {},
                    "epoch": 1, "step": 4}, ckpt)
        says = "is for another model than Sequential"
    else:
        torch.save({"model": _Evil(marker), "optimizer": {}, "epoch": 1, "step": 4}, ckpt)
        says = "weights_only=True"
    before = ckpt.read_bytes()
    with pytest.raises(TrainingError, match=says) as err:
        fit(toy_model(), ce, _loader(), RECIPE, device=CPU, checkpoint=ckpt)
    assert str(ckpt) in str(err.value) and "--no-resume" in str(err.value)
    assert ckpt.read_bytes() == before
    assert not marker.exists()  # the pickled code never ran


def test_malicious_teacher_checkpoint_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "teacher.pt"
    torch.save({"state_dict": _Evil(marker)}, path)
    cache = TeacherCache(tmp_path, {"resnet8": str(path)})
    key = teacher_key("resnet8", 10, "x", None, RECIPE, 0)
    with pytest.raises(ConfigError, match="weights_only=True"):
        cache.get("resnet8", key, lambda: build_model("resnet8", 10), lambda m: None,
                  lambda m: {"top1": 0.0, "top5": 0.0})
    assert not marker.exists()


# ---- datasets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["truncate", "wrong_size"])
def test_corrupt_dataset_fails_clearly_and_keeps_earlier_results(kind, capsys, tmp_path):
    from test_results import make_record

    from kdbench.benchmarks.cli import main
    from kdbench.benchmarks.data.fixtures import corrupt_cifar100, write_cifar100

    results = tmp_path / "results"
    write_record(make_record(), results)
    rebuild_leaderboard(results, "cifar100", "smoke")
    before = _snapshot(results)
    folder = write_cifar100(tmp_path / "data", n_train_per_class=1, n_test_per_class=1)
    bad = corrupt_cifar100(folder, "train", kind)
    code = main(["run", "--methods", "kd", "--data-root", str(tmp_path / "data"),
                 "--no-download", "--no-synthetic-fallback", "--results-dir", str(results),
                 "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.replace("\n", "")
    assert code == 2 and str(bad) in err
    assert _snapshot(results) == before


# ---- read-only / full results directory ----------------------------------------------------
def _fail_with(monkeypatch, code: int, where: str) -> None:
    """Root ignores file modes, so the OS errors are injected where they would surface."""
    def boom(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if where == "create":  # read-only: creating the temporary file fails
        monkeypatch.setattr("kdbench.benchmarks.atomic.tempfile.mkstemp", boom)
    else:  # full: the data does not fit (write/flush/fsync)
        monkeypatch.setattr("kdbench.benchmarks.atomic.os.fsync", boom)
        monkeypatch.setattr(pd.DataFrame, "to_csv", boom)


@pytest.mark.parametrize("fault,code,where,says", [
    ("read-only", errno.EROFS, "create", "Read-only file system"),
    ("permission", errno.EACCES, "create", "Permission denied"),
    ("full", errno.ENOSPC, "write", "no space left on the device"),
])
def test_unwritable_results_dir_is_a_clear_error_and_nothing_is_damaged(
        fault, code, where, says, monkeypatch, tmp_path):
    from test_results import make_record

    results = tmp_path / "results"
    path = write_record(make_record(top1=70.0), results)
    _, csv = rebuild_leaderboard(results, "cifar100", "smoke")
    before = _snapshot(results)
    _fail_with(monkeypatch, code, where)
    with pytest.raises(KdbenchError, match=rf"cannot write {path}: {says}.*nothing there was "
                                           "changed"):
        write_record(make_record(top1=10.0), results)
    board = pd.read_csv(csv)
    with pytest.raises(KdbenchError, match=rf"cannot write {csv}: {says}"):
        write_leaderboard(board, csv)
    assert _snapshot(results) == before  # old record and CSV intact, no temporary files


def test_checkpoint_on_a_full_disk_keeps_the_previous_one(monkeypatch, tmp_path):
    ckpt = _good_checkpoint(tmp_path)
    before = ckpt.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("kdbench.benchmarks.train.torch.save", full)
    with pytest.raises(TrainingError, match=rf"could not write checkpoint {ckpt}"):
        fit(toy_model(), ce, _loader(), RECIPE, device=CPU, checkpoint=ckpt)
    assert ckpt.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "fit.ckpt"]


# ---- concurrent writers ------------------------------------------------------------------------
WRITERS, RECORDS_EACH = 6, 5


def _writer(results: str, index: int) -> None:
    from test_results import make_record

    for seed in range(RECORDS_EACH):
        write_record(make_record(method=f"m{index}", seed=seed, top1=50.0 + seed), Path(results))
        rebuild_leaderboard(Path(results), "cifar100", "smoke")


def test_concurrent_writers_lose_no_record_and_never_leave_a_partial_csv(tmp_path):
    results = tmp_path / "results"
    csv = leaderboard_path(results, "cifar100", "smoke")
    ctx = multiprocessing.get_context("fork")  # the writers only touch JSON and pandas
    procs = [ctx.Process(target=_writer, args=(str(results), i)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    reads = 0
    columns = None
    while any(p.is_alive() for p in procs):  # readers racing the writers
        if csv.exists():
            text = csv.read_text()
            assert text.endswith("\n"), "a partial CSV was visible"
            board = pd.read_csv(csv)
            columns = columns or list(board.columns)
            assert list(board.columns) == columns and len(board) <= WRITERS
            reads += 1
        time.sleep(0.005)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 0
    records = load_records(results, "cifar100", "smoke")
    assert len(records) == WRITERS * RECORDS_EACH  # no record lost
    board = pd.read_csv(csv)
    assert sorted(board["method"]) == [f"m{i}" for i in range(WRITERS)]
    assert set(board["n"]) == {RECORDS_EACH}  # the last rebuild saw every record
    assert not list(results.rglob("*.tmp*"))
