"""The Python API (``kdbench.run``): the README's example runs as written, the CLI is a
layer over it, and bad arguments are errors that say what is right."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import kdbench
from kdbench.benchmarks.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text[text.index("### From Python"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's 'From Python' section has no python block"
    return match.group(1)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The README example, verbatim, in a fresh folder with its own teacher cache."""
    work = tmp_path_factory.mktemp("api")
    env = {**os.environ, "KDBENCH_CACHE": str(work / "cache")}
    done = subprocess.run([sys.executable, "-c", readme_example()], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, done.stdout


def test_the_readme_example_runs_and_prints_the_kd_row(example_run):
    work, out = example_run
    match = re.search(r"kd: ([\d.]+) % top-1, ([\d.]+)x the teacher's params", out)
    assert match, out
    board = pd.read_csv(work / "results" / "leaderboard" / "digits_smoke.csv")
    kd = board[board["method"] == "kd"].iloc[0]
    assert float(match.group(1)) == pytest.approx(kd["metric_mean"], abs=0.005)
    assert float(match.group(1)) > 50  # real digits at the smoke budget: far above 10 % chance
    assert "1 record(s)" in out


def test_run_returns_the_board_and_the_records_it_planned(example_run):
    work, _ = example_run
    # Same call again: the record exists, so nothing is re-run and the result is the same.
    result = kdbench.run(suite="digits", methods=["kd"], budget="smoke", seeds=1,
                         results_dir=work / "results", cache_dir=work / "cache")
    assert result.written == []
    assert isinstance(result.board, pd.DataFrame)
    assert [r["method"] for r in result.records] == ["kd"]
    assert result.records[0]["seed"] == 0
    assert result.board.loc[result.board["method"] == "kd", "n"].item() == 1


def test_the_plugin_names_are_importable_from_kdbench():
    from kdbench.benchmarks.contract import check_contract
    from kdbench.benchmarks.method import Compressed, Method, RunContext
    from kdbench.benchmarks.registry import METHODS

    assert (kdbench.Method, kdbench.RunContext, kdbench.Compressed, kdbench.METHODS,
            kdbench.check_contract) == (Method, RunContext, Compressed, METHODS, check_contract)


@pytest.mark.parametrize("seeds, message", [
    (0, "at least 1"), ([], "non-empty list"), ([-1], "seeds >= 0")])
def test_bad_seeds_are_errors_that_say_what_is_right(tmp_path, seeds, message):
    with pytest.raises(ConfigError, match=message):
        kdbench.run(suite="digits", methods=["kd"], seeds=seeds, results_dir=tmp_path)


def test_a_method_string_is_not_read_as_letters(tmp_path):
    with pytest.raises(ConfigError, match=r"\['kd'\]"):
        kdbench.run(suite="digits", methods="kd", results_dir=tmp_path)
