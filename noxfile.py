"""nox sessions for kdbench.

Every session runs in ONE shared environment (``.nox/kdbench``, or ``$KDBENCH_ENV``):
torch with its CUDA libraries is several GB, so sessions must not each install a copy.
The environment is created on first use and re-installed only when pyproject.toml changes.
Only the sessions that run detection (tests, bench-detection, build-mmcv) add the detection
extra (mmdet + mmcv with compiled ops); the others need no compiler.

    nox -s bench-cifar100                 # the main job (smoke budget)
    nox -s bench-cifar100 -- --methods kd,scratch --budget full --seeds 5 --device cuda
    nox -s tests                          # the test suite
    nox -s lint | perf | bench-digits
    nox -s bench-fashion-mnist            # every method on real Fashion-MNIST images
    nox -s bench-detection                # CenterNet detection KD (mmdet), synthetic COCO
    nox -s bench-reid                     # Market-1501 ReID: baselines + KDAS-ReID
    nox -s regress                        # smoke suites vs results/baselines (CI gate)
    nox -s report                         # markdown, HTML page, Pareto plots
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
CORE_EXTRAS = "test,lint,mlflow"


def _stamp(path: Path, *parts: bytes) -> bool:
    """Whether ``path`` records exactly these inputs (so the step need not run again)."""
    wanted = hashlib.sha256(b"".join(parts)).hexdigest()
    return path.exists() and path.read_text() == wanted


def _write_stamp(path: Path, *parts: bytes) -> None:
    path.write_text(hashlib.sha256(b"".join(parts)).hexdigest())


def shared_env(session: nox.Session, detection: bool = False) -> str:
    """Create or refresh the shared environment and return its python.

    The core (torch, the harness, classification and ReID) needs no compiler. The detection
    extra (mmdet, and mmcv with compiled ops: a prebuilt wheel, else a ~36 min build from
    source on 2 cores) is added only for the sessions that run detection (``detection``).
    """
    python = ENV / "bin" / "python"
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    core_stamp = ENV / ".kdbench-installed"
    detection_stamp = ENV / ".kdbench-detection-installed"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    if not _stamp(core_stamp, pyproject, CORE_EXTRAS.encode()):
        session.run(str(python), "-m", "pip", "install", "-e", f"{ROOT}[{CORE_EXTRAS}]",
                    external=True)
        _write_stamp(core_stamp, pyproject, CORE_EXTRAS.encode())
        detection_stamp.unlink(missing_ok=True)  # reinstalled core: check detection again
    build_script = (ROOT / "detection" / "build_mmcv.py").read_bytes()
    if detection and not _stamp(detection_stamp, pyproject, build_script):
        # mmcv's compiled ops are chosen/built against the torch just installed, and must be
        # in place before mmdet is installed.
        session.run(str(python), "-m", "kdbench.detection.build_mmcv", "ensure", external=True)
        session.run(str(python), "-m", "pip", "install", "-e",
                    f"{ROOT}[{CORE_EXTRAS},detection]", external=True)
        _write_stamp(detection_stamp, pyproject, build_script)
    return str(python)


def kdbench(session: nox.Session, *args: str) -> None:
    session.run(shared_env(session), "-m", "kdbench.benchmarks.cli", *args, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pytest); extra arguments go to pytest."""
    # The whole suite, detection included: the detection extra is installed for it.
    session.run(shared_env(session, detection=True), "-m", "pytest", *session.posargs,
                external=True)


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


def gated_suites(session: nox.Session) -> list[tuple[str, bool]]:
    """The suites with a ``regress`` section, each with whether its gate writes claims."""
    listing = session.run(
        shared_env(session), "-c",
        "from kdbench.benchmarks.regress import gate_of, gated_suites\n"
        "for suite in gated_suites(): print('gated', suite, int(gate_of(suite).claims))",
        silent=True, external=True)
    return [(words[1], words[2] == "1") for words in map(str.split, str(listing or "").splitlines())
            if len(words) == 3 and words[0] == "gated"]


@nox.session
def regress(session: nox.Session) -> None:
    """Re-run the gated suites' smoke budgets (CPU; the suites with a ``regress`` section,
    e.g. generated CIFAR-100, real digits and Fashion-MNIST) with the CPU kernels pinned to
    AVX2 and compare them with ``results/baselines/*.csv``; fails on a regression.
    ``-- --update`` rewrites the baselines (3 seeds) and prints what changed. The
    leaderboards and report go to results/regress/.
    """
    kdbench(session, "regress", "--markdown", "results/regress/report.md", *session.posargs)
    gated = gated_suites(session)
    for suite, _ in gated:
        kdbench(session, "report", "--suite", suite, "--results-dir", "results/regress")
    # A report, not a gate: smoke has too few steps (and seeds) for stable verdicts.
    for suite, claims in gated:
        if claims:
            kdbench(session, "claims", "--suite", suite, "--budget", "smoke",
                    "--results-dir", "results/regress")


@nox.session
def report(session: nox.Session) -> None:
    """Markdown table, sortable HTML page and Pareto plots from the records in results/.

    Arguments after ``--`` go to ``kdbench report`` (--suite, --budget, --results-dir, --out).
    """
    kdbench(session, "report", *session.posargs)


@nox.session(name="bench-fashion-mnist")
def bench_fashion_mnist(session: nox.Session) -> None:
    """Every registered method on real Fashion-MNIST (smoke budget), then the leaderboard.

    Needs the four IDX files (``apt-get install dataset-fashion-mnist``, or under
    ``--data-root``); arguments after ``--`` go to ``kdbench run`` (--budget short ...).
    """
    kdbench(session, "run", "--suite", "fashion-mnist", *session.posargs)


@nox.session(name="bench-digits")
def bench_digits(session: nox.Session) -> None:
    """The small real-image suite (scikit-learn's handwritten digits)."""
    kdbench(session, "run", "--suite", "digits", *session.posargs)


@nox.session(name="bench-reid")
def bench_reid(session: nox.Session) -> None:
    """Market-1501 person ReID (rank-1/mAP): the baselines and KDAS-ReID, then the leaderboard.

    Arguments after ``--`` go to ``kdbench run`` (default methods: the suite's
    ``default_methods``). Without Market-1501 under data/ it runs on a generated set in the
    same layout (data_source=synthetic).
    """
    kdbench(session, "run", "--suite", "reid-market1501", *session.posargs)


@nox.session(name="bench-detection")
def bench_detection(session: nox.Session) -> None:
    """CenterNet detection KD (teacher, student alone, ctkd) with mmdet, then the leaderboard.

    ``kdbench run --suite synthetic-coco`` in the environment with the detection extra;
    arguments after ``--`` are ``kdbench run``'s (``--suite coco --budget full``, ...).
    """
    session.run(shared_env(session, detection=True), "-m", "kdbench.benchmarks.cli", "run",
                "--suite", "synthetic-coco", *session.posargs, external=True)


@nox.session(name="build-mmcv")
def build_mmcv(session: nox.Session) -> None:
    """Build the mmcv 2.1.0 wheel (compiled ops) into the cache and install it.

    ``-- --force`` rebuilds even when a wheel is cached; ``-- --cuda`` builds CUDA kernels.
    """
    session.run(shared_env(session, detection=True), "-m", "kdbench.detection.build_mmcv",
                "build", *session.posargs, external=True)


@nox.session
def perf(session: nox.Session) -> None:
    """Benchmarks that print numbers: data pipeline, training loop, LMA activation cost,
    peak training memory of proximal-gradient vs ADMM pruning, INT8 vs compiled fp32, and
    whether repeated speed-up measurements of one pair have overlapping CIs.

    Each script has its own flags; run it directly for those, e.g.
    ``python -m kdbench.benchmarks.perf.train_throughput --teacher resnet56 --student resnet20``.
    """
    python = shared_env(session)
    for script in ("data_throughput", "train_throughput", "lma_activation",
                   "prox_vs_admm_memory", "int8_speedup", "speedup_repeats"):
        session.run(python, "-m", f"kdbench.benchmarks.perf.{script}", external=True)
