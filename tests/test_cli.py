"""Bad input gets a one-line error naming what is wrong and what would be right."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdbench.benchmarks.cli import main, parse_seeds
from kdbench.benchmarks.data.fixtures import corrupt_cifar100, write_cifar100
from kdbench.benchmarks.errors import ConfigError


def run_cli(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def data_args(root, tmp_path):
    return ["--data-root", str(root), "--no-download", "--no-synthetic-fallback",
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")]


def test_unknown_method_lists_the_known_ones(capsys, cifar_root, tmp_path):
    code, err = run_cli(capsys, "run", "--methods", "kd,distill_magic",
                        *data_args(cifar_root, tmp_path))
    assert code == 2
    assert "unknown method 'distill_magic'" in err
    assert "kd" in err and "scratch" in err and "teacher" in err
    assert not (tmp_path / "results").exists()  # nothing ran


def test_unknown_suite_lists_the_known_ones(capsys):
    code, err = run_cli(capsys, "run", "--suite", "imagenet")
    assert code == 2 and "unknown suite 'imagenet'" in err and "cifar100" in err


def test_unknown_model_in_a_suite_is_named(capsys, cifar_root, tmp_path):
    suite = tmp_path / "mine.py"
    suite.write_text(
        "name = 'mine'\ndataset = dict(type='cifar100')\n"
        "budgets = dict(smoke=dict(pairs=[('resnet20', 'resnet7')]))\n")
    code, err = run_cli(capsys, "run", "--suite", str(suite), "--methods", "kd",
                        *data_args(cifar_root, tmp_path))
    assert code == 2 and "unknown model 'resnet7'" in err and "resnet8" in err


def test_unknown_method_config_key_is_named(capsys, cifar_root, tmp_path):
    code, err = run_cli(capsys, "run", "--methods", "kd", "--set", "kd.temprature=2",
                        *data_args(cifar_root, tmp_path))
    assert code == 2
    assert "unknown key 'temprature'" in err and "temperature" in err


def test_unknown_suite_config_key_is_named(capsys, cifar_root, tmp_path):
    suite = tmp_path / "mine.py"
    suite.write_text(
        "name = 'mine'\ndataset = dict(type='cifar100')\n"
        "budgets = dict(smoke=dict(pairs=[('resnet20', 'resnet8')], train=dict(lr_rate=1)))\n")
    code, err = run_cli(capsys, "run", "--suite", str(suite), *data_args(cifar_root, tmp_path))
    assert code == 2 and "'lr_rate'" in err and "allowed keys" in err


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(capsys, tmp_path):
    empty = tmp_path / "nothing-here"
    code, err = run_cli(capsys, "run", "--methods", "kd", *data_args(empty, tmp_path))
    assert code == 2
    assert str(empty) in err.replace("\n", "")
    assert "cifar-100-python.tar.gz" in err.replace("\n", "")


def test_corrupt_dataset_names_the_file(capsys, tmp_path):
    root = tmp_path / "bad"
    folder = write_cifar100(root, n_train_per_class=1, n_test_per_class=1)
    corrupt_cifar100(folder, "train", "truncate")
    code, err = run_cli(capsys, "run", "--methods", "kd", *data_args(root, tmp_path))
    assert code == 2 and str(folder / "train") in err.replace("\n", "")


def test_seed_argument():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,4,7") == [0, 4, 7]
    assert parse_seeds("2,") == [2]
    assert parse_seeds(None) is None
    with pytest.raises(ConfigError, match=r"seed 0 alone.*--seeds 0,"):
        parse_seeds("0")
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("three")


@pytest.mark.slow
def test_a_killed_run_leaves_no_record_and_resumes(cifar_root, cache_dir, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "kdbench.benchmarks.cli", "run", "--methods", "scratch",
           "--no-latency",
           "--data-root", str(cifar_root), "--no-download", "--no-synthetic-fallback",
           "--results-dir", str(results), "--cache-dir", str(cache_dir)]
    env = {**os.environ, "KDBENCH_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    work = Path(cache_dir) / "work"
    while not list(work.glob("*/fit.ckpt")):  # killed after its first epoch was saved
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(results.rglob("*.json")), "a killed run left a record"
    assert not list(results.rglob("*.tmp*"))

    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed" in done.stdout + done.stderr
    assert len(list(results.rglob("seed0.json"))) == 1
    assert not list(work.glob("*/fit.ckpt"))  # the finished run cleaned up after itself
