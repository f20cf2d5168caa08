"""`kdbench new-method`: the scaffold passes the contract as generated, and the contract
catches a scaffold edited to hand back the teacher."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.benchmarks.cli import main
from kdbench.benchmarks.scaffold import new_method

REPO = Path(__file__).resolve().parents[1]
CHECK = """
import sys
from kdbench.benchmarks.contract import check_contract
check_contract(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3], data_root=sys.argv[4])
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of the project's packages, so scaffolding never touches the real tree."""
    root = tmp_path / "checkout"
    for package in ("kdbench", "benchmarks", "methods"):
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests").mkdir()
    return root


def contract(root: Path, name: str, tmp_path: Path, cache_dir: Path, cifar_root: Path):
    """Check the contract in a fresh interpreter that imports the scaffolded checkout."""
    return subprocess.run(
        [sys.executable, "-c", CHECK, name, str(tmp_path / "run"), str(cache_dir),
         str(cifar_root)], cwd=root, capture_output=True, text=True, timeout=900,
        env={"PYTHONPATH": str(root), "KDBENCH_PROGRESS": "0", "PATH": "/usr/bin:/bin"})


def test_names_are_validated(checkout):
    for bad in ("My-Method", "1kd", "class", "kd", "teacher", "common"):
        with pytest.raises(Exception, match=r"method|name"):
            new_method(bad, checkout)


def test_cli_writes_the_method_and_its_test(checkout, capsys):
    assert main(["new-method", "my_kd", "--root", str(checkout)]) == 0
    assert (checkout / "methods" / "my_kd.py").read_text().count(
        '@METHODS.register_module("my_kd")') == 1
    assert "check_contract(\"my_kd\"" in (checkout / "tests" / "test_my_kd.py").read_text()
    assert main(["new-method", "my_kd", "--root", str(checkout)]) == 2  # no overwrite


@pytest.mark.slow
def test_generated_method_passes_the_contract_and_fails_when_it_returns_the_teacher(
        checkout, tmp_path, cache_dir, cifar_root):
    new_method("my_kd", checkout)
    done = contract(checkout, "my_kd", tmp_path, cache_dir, cifar_root)
    assert done.returncode == 0, done.stdout + done.stderr

    method = checkout / "methods" / "my_kd.py"
    method.write_text(method.read_text().replace(
        "return Compressed(model=student)", "return Compressed(model=teacher.model)"))
    broken = contract(checkout, "my_kd", tmp_path / "again", cache_dir, cifar_root)
    assert broken.returncode != 0
    assert "returned the teacher unchanged" in broken.stderr
