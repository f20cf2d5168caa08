"""One import root: the built wheel installs `kdbench` alone, with the project's folders inside
it (kdbench.benchmarks, kdbench.methods, kdbench.detection, kdbench.reid) and their data files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "kdbench", "benchmarks", "methods", "detection", "reid")
CHECK = """
import json, sys
import kdbench
from kdbench import METHODS, Compressed, Method, RunContext, check_contract
from kdbench.benchmarks.config import known_suites, load_suite
from kdbench.benchmarks.registry import known
from kdbench.detection.models import CONFIGS_DIR
print(json.dumps({"file": kdbench.__file__, "suites": known_suites(),
                  "methods": known(METHODS), "cifar100": load_suite("cifar100").name,
                  "configs": sorted(p.name for p in CONFIGS_DIR.glob("smoke/*.py"))}))
"""


def test_the_wheel_installs_one_import_root_that_works(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info folders
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(source)], check=True)
    wheel, = (tmp_path / "dist").glob("kdbench-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"kdbench"}

    venv = tmp_path / "venv"  # fresh, with the wheel alone; dependencies come from this env
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = subprocess.run([venv / "bin" / "python", "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    target, str(wheel)], check=True)
    # this environment's packages for the dependencies, but not its editable kdbench: a
    # PYTHONPATH folder's .pth files (the editable finder) are not run
    deps = sysconfig.get_paths()["purelib"]
    done = subprocess.run([venv / "bin" / "python", "-c", CHECK], cwd=tmp_path,
                          env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin",
                               "HOME": str(tmp_path)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["file"].startswith(target)  # the wheel's kdbench, not the checkout
    assert {"cifar100", "digits", "fashion-mnist", "synthetic-coco"} <= set(seen["suites"])
    assert {"kd", "scratch", "teacher", "okddip"} <= set(seen["methods"])
    assert seen["cifar100"] == "cifar100" and "ctkd.py" in seen["configs"]
    for top in ("benchmarks", "methods", "detection", "reid"):  # no generic top-level names
        probe = subprocess.run([venv / "bin" / "python", "-c", f"import {top}"], cwd=tmp_path,
                               env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
                               capture_output=True, text=True)
        assert probe.returncode != 0, top


def test_no_module_imports_a_project_folder_as_a_top_level_package():
    """In a checkout ``benchmarks`` is importable by accident (the checkout is on sys.path);
    installed it is not: every import goes through ``kdbench``."""
    pattern = re.compile(r"^\s*(from|import) (benchmarks|methods|detection|reid)\b", re.M)
    hits = [f"{path.relative_to(ROOT)}" for folder in (*SOURCES[2:], "tests")
            for path in sorted((ROOT / folder).rglob("*.py")) if pattern.search(path.read_text())]
    assert not hits, hits
