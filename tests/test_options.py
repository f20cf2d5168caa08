"""The options of a run are declared once (benchmarks.options): ``kdbench run`` and
``kdbench sweep`` take the same ones and read them into one typed ``RunOptions``; the
command modules do not import each other."""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.benchmarks.cli import build_parser
from kdbench.benchmarks.config import load_suite
from kdbench.benchmarks.errors import ConfigError
from kdbench.benchmarks.options import RunOptions, add_run_options, run_options_from

# What `kdbench sweep` adds to the run options: how and where the jobs run.
SWEEP_ONLY = {"--executor", "--status", "--folder", "--max-parallel", "--wait"}
# What `kdbench run` adds: how it prints.
RUN_ONLY = {"--quiet", "--wide"}


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}


def _declared() -> set[str]:
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    return _option_strings(parser)


def test_run_and_sweep_take_the_same_run_options():
    run, sweep = _option_strings(_subparser("run")), _option_strings(_subparser("sweep"))
    assert run - RUN_ONLY == sweep - SWEEP_ONLY == _declared()
    # the options sweep could not take before they were declared once
    assert {"--deploy", "--evaluators", "--tensorboard", "--mlflow", "--resume",
            "--no-resume"} <= sweep


def test_each_command_keeps_its_default_device():
    assert _subparser("run").parse_args([]).device == "cpu"
    assert _subparser("sweep").parse_args([]).device == "auto"


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_the_parsed_options_are_one_run_options(command):
    args = _subparser(command).parse_args([
        "--suite", "digits", "--methods", "kd,scratch", "--seeds", "0,3", "--device", "cpu",
        "--results-dir", "out", "--cache-dir", "cache", "--set", "kd.temperature=2",
        "--no-resume", "--force", "--no-latency", "--deploy", "int8, onnx",
        "--evaluators", "robust", "--tensorboard", "--mlflow", "--threads", "2"])
    options, methods, seeds = run_options_from(args, load_suite("digits"))
    assert methods == ["kd", "scratch"] and seeds == [0, 3]
    assert options == RunOptions(
        results_dir=Path("out"), cache_dir=Path("cache"), device="cpu",
        method_overrides={"kd": {"temperature": 2}}, measure_latency=False,
        evaluators=("robust",), deploy=("int8", "onnx"), force=True, resume=False,
        tensorboard=True, mlflow_uri="sqlite:///mlruns/mlflow.db", threads=2)
    assert pickle.loads(pickle.dumps(options)) == options  # what a sweep job carries


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_bad_run_options_fail_the_same_way(command):
    parser = _subparser(command)
    suite = load_suite("digits")
    with pytest.raises(ConfigError, match="no pair of suite 'digits'"):
        run_options_from(parser.parse_args(["--teacher-ckpt", "vgg13=t.pt"]), suite)
    with pytest.raises(ConfigError, match="--methods names no method"):
        run_options_from(parser.parse_args(["--methods", ","]), suite)
    with pytest.raises(ConfigError, match="--threads must be at least 1"):
        run_options_from(parser.parse_args(["--threads", "0"]), suite)


def test_an_unknown_option_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown run option\(s\) devcie; known: .*device"):
        RunOptions.of(devcie="cuda")


def test_a_sweep_job_pickles_with_its_options(tmp_path):
    from kdbench.benchmarks.sweep import SweepJob

    job = SweepJob("digits", "smoke", "kd", "resnet14", "resnet8", 0, RunOptions(
        results_dir=tmp_path, cache_dir=tmp_path / "cache", deploy=["int8"],
        method_overrides={"kd": {"alpha": 0.5}}))
    assert pickle.loads(pickle.dumps(job)) == job
    entry = json.loads(json.dumps(job.entry()))  # the sweep manifest's plain JSON
    assert entry["cache_dir"] == str(tmp_path / "cache") and entry["deploy"] == ["int8"]


def test_command_modules_do_not_import_each_other():
    code = ("import sys, kdbench.benchmarks.sweep, kdbench.benchmarks.options, "
            "kdbench.benchmarks.console; "
            "print(sorted(m for m in sys.modules if m.endswith('benchmarks.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], check=True).stdout
    assert out.strip() == "[]"
