"""Machine fingerprint stored next to every absolute latency (README.md, "What is measured").

Speed-ups travel across machines; absolute milliseconds only mean something together with the
CPU, its ISA extensions and caches, the thread setup, the torch build and the GPU. Every probe
is cheap and guarded: ``fingerprint()`` never raises, a probe that fails gives ``None``.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from kdbench.benchmarks.measure.latency import usable_cores

T = TypeVar("T")

# ISA extensions that change which kernels run (x86 and Arm), as /proc/cpuinfo spells them
SPEED_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
    "asimd", "asimddp", "sve", "sve2", "i8mm", "bf16",
)
_CPUINFO = Path("/proc/cpuinfo")
_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
_NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
_GIT_TIMEOUT_S = 2
# "at::get_num_threads() : 2", "ATen parallel backend: OpenMP" (not the "::" of C++ names)
_KEY_VALUE = re.compile(r"^(?P<key>.+?)\s*:\s+(?P<value>.+)$")


def fingerprint() -> dict:
    """Describe this machine and software stack as a JSON-serialisable dict."""
    cpuinfo = _safe(_read_cpuinfo) or {}
    cuda = _safe(torch.cuda.is_available) or False
    return {
        "cpu_model": cpuinfo.get("model name") or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "physical_cores": _safe(lambda: _physical_cores(cpuinfo)),
        "usable_cores": _safe(usable_cores),
        "isa_flags": _safe(lambda: _speed_flags(cpuinfo)) or [],
        "aten_cpu_capability": _safe(torch.backends.cpu.get_cpu_capability),
        # what the kernels were asked for (the regression gate's pin sets all three)
        "kernel_env": {k: os.environ.get(k)
                       for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")},
        "caches": _safe(_cache_sizes),
        "cpu_governor": _safe(lambda: _GOVERNOR.read_text().strip()),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": _safe(torch.backends.cudnn.version),
        "cuda_available": cuda,
        "gpus": _safe(_gpus) if cuda else [],
        "nvidia_driver": _safe(_nvidia_driver) if cuda else None,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "parallel_info": _safe(_parallel_summary),
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "git_commit": _safe(_git_commit),
    }


def _safe(probe: Callable[[], T]) -> T | None:
    try:
        return probe()
    except Exception:  # a fingerprint is best effort; a missing field must not stop a run
        return None


def _read_cpuinfo() -> dict[str, str]:
    """First processor's fields, plus every (physical id, core id) pair seen."""
    first: dict[str, str] = {}
    cores: set[str] = set()
    physical = ""
    for line in _CPUINFO.read_text().splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            physical = value
        elif key == "core id":
            cores.add(f"{physical}/{value}")
        first.setdefault(key, value)
    first["_cores"] = ",".join(sorted(cores))
    return first


def _physical_cores(cpuinfo: dict[str, str]) -> int | None:
    return len(cpuinfo["_cores"].split(",")) if cpuinfo.get("_cores") else None


def _speed_flags(cpuinfo: dict[str, str]) -> list[str]:
    present = set((cpuinfo.get("flags") or cpuinfo.get("Features") or "").split())
    return [f for f in SPEED_FLAGS if f in present]


def _cache_sizes() -> dict[str, str]:
    """E.g. {"L1d": "32K", "L1i": "32K", "L2": "512K", "L3": "32768K"} for cpu0."""
    sizes = {}
    for index in sorted(_CACHE_DIR.glob("index*")):
        level = (index / "level").read_text().strip()
        kind = (index / "type").read_text().strip()
        suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
        sizes[f"L{level}{suffix}"] = (index / "size").read_text().strip()
    return sizes


def _gpus() -> list[dict]:
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append({
            "name": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        })
    return gpus


def _nvidia_driver() -> str | None:
    # first line: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  ..."
    words = _NVIDIA_DRIVER.read_text().split()
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


def _parallel_summary() -> dict[str, object]:
    """``torch.__config__.parallel_info()``: its 'key : value' lines and its library lines."""
    summary: dict[str, object] = {}
    libraries = []
    for line in torch.__config__.parallel_info().splitlines():
        line = line.strip()
        match = _KEY_VALUE.match(line)
        if match:
            summary[match["key"]] = match["value"]
        elif line and not line.endswith(":"):  # section headers end with ':'
            libraries.append(line)  # e.g. "OpenMP 201511 ...", "Intel(R) MKL-DNN v3.12.0 ..."
    summary["libraries"] = libraries
    return summary


def _git_commit() -> str | None:
    """HEAD of the checkout holding this file, '+dirty' when it has uncommitted changes."""
    here = Path(__file__).resolve().parent
    head = _git(here, "rev-parse", "HEAD")
    if head is None:
        return None
    status = _git(here, "status", "--porcelain")
    return f"{head}+dirty" if status else head


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
