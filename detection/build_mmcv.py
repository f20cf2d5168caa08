"""Install mmcv 2.1.0 with compiled ops into this environment: a cached wheel, else a build.

mmdet 3.3.0 needs mmcv >= 2.0.0rc4, < 2.2.0 *with* its compiled ops (``import mmdet.models``
imports ``mmcv.ops``), and PyPI has mmcv 2.1.0 only as source. Building it against torch 2.14
needs two fixes (README.md, "Installing mmdet: mmcv with compiled ops"): ``setuptools<70`` +
``wheel`` in a build env that sees the installed torch (``pip wheel --no-build-isolation``),
and C++20 instead of the ``-std=c++14/17`` that mmcv's setup.py hard-codes (torch 2.14's
headers need C++20): the compiler (and on CUDA builds nvcc) is called through a wrapper that
rewrites that flag.

    python -m kdbench.detection.build_mmcv ensure        # install: cached wheel, else build (once)
    python -m kdbench.detection.build_mmcv build --force # (re)build the wheel into the cache

Wheels are cached per Python/torch/variant in ``$KDBENCH_CACHE/wheels`` (default
``~/.cache/kdbench/wheels``). A prebuilt CPU wheel in ``--wheel-dir`` (default
``DEFAULT_WHEEL_DIR``, a local wheel cache folder beside the project checkout) is used when
its Python tag and platform match and torch is the version it was built for. CUDA kernels
are built when a CUDA device and nvcc are present (``--cuda``/``--cpu`` force either). Run it
with the environment's own interpreter.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MMCV_VERSION = "2.1.0"
# The torch the prebuilt wheel in the local wheel cache folder (``DEFAULT_WHEEL_DIR``) was
# compiled against (README.md, "Installing mmdet: mmcv with compiled ops").
PREBUILT_TORCH = "2.14.1"
# The build environment's tools, pinned (setuptools < 70: mmcv's setup.py needs pkg_resources).
BUILD_TOOLS = ("setuptools==69.5.1", "wheel==0.45.1", "ninja==1.13.0")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WHEEL_DIR = ROOT.parent / "shared" / "wheels"
# Rewrites mmcv's -std=c++14/17 to C++20 and hands everything else to the real compiler.
STD_WRAPPER = """#!/usr/bin/env bash
args=()
for a in "$@"; do
  case "$a" in -std=c++14|-std=c++17) args+=(-std=c++20) ;; *) args+=("$a") ;; esac
done
exec "{real}" "${{args[@]}}"
"""


class BuildError(RuntimeError):
    """mmcv could not be installed or built; the message says what to do."""


@dataclass(frozen=True)
class Target:
    """The environment mmcv is installed into (this interpreter)."""

    python_tag: str  # cp311
    platform: str  # linux_x86_64
    torch: str  # 2.14.1+cu130
    variant: str  # cpu | cuda

    @property
    def torch_release(self) -> str:
        return self.torch.split("+")[0]

    @property
    def key(self) -> str:
        """Names the cache folder: wheels only fit the exact Python, torch and variant."""
        return f"mmcv-{MMCV_VERSION}-{self.python_tag}-{self.platform}-torch{self.torch}-" \
               f"{self.variant}"

    def wheel_name(self) -> str:
        return f"mmcv-{MMCV_VERSION}-{self.python_tag}-{self.python_tag}-{self.platform}.whl"


def detect_target(cuda: bool | None = None) -> Target:
    """Describe this interpreter; ``cuda=None`` builds CUDA kernels only with a GPU and nvcc."""
    try:
        import torch
    except ImportError as exc:
        raise BuildError("torch is not installed in this environment; install kdbench "
                         "first (pip install -e .) so mmcv is built against its torch") from exc
    if cuda is None:
        cuda = torch.cuda.is_available() and _nvcc() is not None
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return Target(tag, platform, torch.__version__, "cuda" if cuda else "cpu")


def cache_dir() -> Path:
    from kdbench.benchmarks.teachers import default_cache_dir

    return default_cache_dir() / "wheels"


def candidate_wheels(target: Target, wheel_dirs: list[Path]) -> list[Path]:
    """Wheels that fit ``target``: our own cached build first, then matching prebuilt ones."""
    own = cache_dir() / target.key / target.wheel_name()
    found = [own] if own.is_file() else []
    if target.variant == "cpu" and target.torch_release == PREBUILT_TORCH:
        found += [w for w in (d / target.wheel_name() for d in wheel_dirs) if w.is_file()]
    return found


def ops_available() -> bool:
    """Whether this environment already imports mmcv MMCV_VERSION's compiled ops."""
    probe = (f"import mmcv, mmcv._ext; assert mmcv.__version__ == {MMCV_VERSION!r}, "
             "mmcv.__version__")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def install(wheel: Path) -> bool:
    """Install ``wheel``; True when its ops then import, else it is uninstalled again."""
    print(f"build_mmcv: installing {wheel}", flush=True)
    pip("uninstall", "-y", "mmcv")  # an mmcv without ops or of another version, if any
    pip("install", str(wheel))
    if ops_available():
        return True
    print(f"build_mmcv: {wheel} does not load here (ABI mismatch?); removing it", flush=True)
    pip("uninstall", "-y", "mmcv")
    return False


def build(target: Target, jobs: int | None = None) -> Path:
    """Build the wheel from PyPI's source into the cache; returns its path."""
    out = cache_dir() / target.key
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kdbench-mmcv-") as tmp:
        work = Path(tmp)
        build_python = _build_env(work / "venv")
        env = _build_environ(work, target, jobs)
        print(f"build_mmcv: building mmcv {MMCV_VERSION} ({target.variant} ops, "
              f"{env['MAX_JOBS']} jobs) against torch {target.torch}; this takes about "
              "36 min on 2 cores (CPU ops), longer with CUDA kernels",
              flush=True)
        start = time.perf_counter()
        subprocess.run([str(build_python), "-m", "pip", "wheel", "--no-build-isolation",
                        "--no-deps", "--no-binary", "mmcv", "-w", str(work / "dist"),
                        f"mmcv=={MMCV_VERSION}"], check=True, env=env)
        built = next((work / "dist").glob(f"mmcv-{MMCV_VERSION}-*.whl"))
        final = out / built.name
        shutil.move(str(built), final)
    print(f"build_mmcv: built {final} in {(time.perf_counter() - start) / 60:.1f} min",
          flush=True)
    return final


def _build_env(venv: Path) -> Path:
    """A venv with the pinned build tools that also sees this environment's torch."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # appended after the venv's own site-packages, so its setuptools < 70 wins
    paths = "\n".join(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "kdbench_target_env.pth").write_text(paths + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--upgrade", *BUILD_TOOLS], check=True)
    return python


def _build_environ(work: Path, target: Target, jobs: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MMCV_WITH_OPS="1", MAX_JOBS=str(jobs or os.cpu_count() or 1),
               CXX=str(_wrapper(work / "cxx", os.environ.get("CXX") or "g++")))
    env["FORCE_CUDA"] = "1" if target.variant == "cuda" else "0"
    if target.variant == "cuda":
        nvcc = _nvcc()
        if nvcc is None:
            raise BuildError("a CUDA build needs nvcc (set CUDA_HOME), or build with --cpu")
        env["CUDA_HOME"] = str(_cuda_home_with_wrapped_nvcc(work / "cuda", nvcc.parent.parent))
    return env


def _wrapper(path: Path, real: str) -> Path:
    resolved = shutil.which(real) or real
    path.write_text(STD_WRAPPER.format(real=resolved))
    path.chmod(0o755)
    return path


def _nvcc() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = Path(CUDA_HOME or "/nonexistent") / "bin" / "nvcc"
    return nvcc if nvcc.is_file() else None


def _cuda_home_with_wrapped_nvcc(home: Path, real: Path) -> Path:
    """A CUDA_HOME mirroring ``real`` whose bin/nvcc is the C++20 wrapper.

    torch calls ``$CUDA_HOME/bin/nvcc`` directly, so the flag can only be rewritten there.
    """
    (home / "bin").mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "bin":
            (home / entry.name).symlink_to(entry)
    for tool in (real / "bin").iterdir():
        if tool.name != "nvcc":
            (home / "bin" / tool.name).symlink_to(tool)
    _wrapper(home / "bin" / "nvcc", str(real / "bin" / "nvcc"))
    return home


def ensure(target: Target, wheel_dirs: list[Path], jobs: int | None = None) -> str:
    """Make mmcv's ops importable here; returns how ("present", a wheel path or "built")."""
    if ops_available():
        return "present"
    for wheel in candidate_wheels(target, wheel_dirs):
        if install(wheel):
            return str(wheel)
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler or not shutil.which(compiler):
        raise BuildError(
            f"mmcv {MMCV_VERSION} with compiled ops is needed for detection, and there is "
            f"neither a prebuilt wheel for this machine ({target.wheel_name()} in "
            f"{', '.join(map(str, wheel_dirs))} or {cache_dir() / target.key}) nor a C++ "
            "compiler to build one. Install a compiler (e.g. `apt-get install g++`; the build "
            "then takes about 36 min on 2 cores), or put a matching wheel in one of those "
            "folders (`--wheel-dir DIR`)")
    wheel = build(target, jobs)
    if not install(wheel):
        raise BuildError(f"the freshly built {wheel} does not import mmcv._ext; see the build "
                         "log above")
    return "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdbench.detection.build_mmcv",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("ensure", "build"))
    parser.add_argument("--wheel-dir", type=Path, action="append", default=None,
                        help=f"prebuilt wheels to try (default: {DEFAULT_WHEEL_DIR})")
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--cuda", dest="cuda", action="store_true", default=None,
                         help="build CUDA kernels (needs nvcc)")
    variant.add_argument("--cpu", dest="cuda", action="store_false", help="CPU kernels only")
    parser.add_argument("--jobs", type=int, help="parallel compile jobs (default: all cores)")
    parser.add_argument("--force", action="store_true", help="build even if a wheel is cached")
    args = parser.parse_args(argv)
    try:
        target = detect_target(args.cuda)
        if args.command == "build":
            cached = cache_dir() / target.key / target.wheel_name()
            wheel = cached if cached.is_file() and not args.force else build(target, args.jobs)
            print(f"build_mmcv: wheel at {wheel}")
            return 0 if install(wheel) else 1
        how = ensure(target, args.wheel_dir or [DEFAULT_WHEEL_DIR], args.jobs)
        print(f"build_mmcv: mmcv {MMCV_VERSION} with ops ready ({how})")
        return 0
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"build_mmcv: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
