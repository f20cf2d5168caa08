"""nox sessions for kdbench.

Every session runs in ONE shared environment (``.nox/kdbench``, or ``$KDBENCH_ENV``):
torch with its CUDA libraries is several GB, so sessions must not each install a copy.
The environment is created on first use and re-installed only when pyproject.toml changes.

    nox -s bench-cifar100                 # the main job (smoke budget)
    nox -s bench-cifar100 -- --methods kd,scratch --budget full --seeds 5 --device cuda
    nox -s tests                          # the test suite
    nox -s lint | perf | bench-digits
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests", "lint"]

ROOT = Path(__file__).parent
ENV = Path(os.environ.get("KDBENCH_ENV", ROOT / ".nox" / "kdbench"))
EXTRAS = "test,lint"


def shared_env(session: nox.Session) -> str:
    """Create or refresh the shared environment and return its python."""
    python = ENV / "bin" / "python"
    stamp = ENV / ".kdbench-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    if not stamp.exists() or stamp.read_text() != wanted:
        session.run(str(python), "-m", "pip", "install", "-e", f"{ROOT}[{EXTRAS}]",
                    external=True)
        stamp.write_text(wanted)
    return str(python)


def kdbench(session: nox.Session, *args: str) -> None:
    session.run(shared_env(session), "-m", "benchmarks.cli", *args, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pytest); extra arguments go to pytest."""
    session.run(shared_env(session), "-m", "pytest", *session.posargs, external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole project."""
    session.run(shared_env(session), "-m", "ruff", "check", ".", external=True)


@nox.session(name="bench-cifar100")
def bench_cifar100(session: nox.Session) -> None:
    """Every registered method on the CIFAR-100 suite, then the leaderboard.

    Arguments after ``--`` go to ``kdbench run`` (--methods, --budget, --seeds, --device ...).
    Without CIFAR-100 on disk (and no network to fetch it) it runs on generated data and
    says so in a banner and in every record (data_source=synthetic).
    """
    kdbench(session, "run", "--suite", "cifar100", *session.posargs)


@nox.session(name="bench-digits")
def bench_digits(session: nox.Session) -> None:
    """The small real-image suite (scikit-learn's handwritten digits)."""
    kdbench(session, "run", "--suite", "digits", *session.posargs)


@nox.session
def perf(session: nox.Session) -> None:
    """Throughput benchmarks that print numbers: data pipeline and training loop.

    Each script has its own flags; run it directly for those, e.g.
    ``python -m benchmarks.perf.train_throughput --teacher resnet56 --student resnet20``.
    """
    python = shared_env(session)
    for script in ("benchmarks.perf.data_throughput", "benchmarks.perf.train_throughput"):
        session.run(python, "-m", script, external=True)
