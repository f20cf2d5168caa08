"""Pinning the CPU kernels' instruction set, so the regression gate is portable.

ATen and oneDNN choose their CPU kernels by the instruction set they find at start-up
(AVX2, AVX-512, AVX-512 VNNI/AMX, ...). Different kernels sum floats in different orders, so
the same seed trains to slightly different weights on an AVX-512 machine than on an AVX2
one, and every data-dependent choice downstream (a searched cell, which channels reach zero)
follows. The gate therefore trains with the kernels pinned to AVX2, which every x86-64 CI
runner has. ATen and oneDNN are not the only dispatchers: torch's float matrix products
(linear layers, attention) run in MKL, which picks AVX-512 on an Intel AVX-512 CPU whatever
ATen was told, and other code paths on AMD. The pin therefore also fixes MKL's code branch
(``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility on the branch meant for
Intel and non-Intel CPUs alike, with fixed cache sizes and deterministic reductions). The
gate's matrix products are small (classifier heads), so the slow branch costs little. The
pin must be in the environment before torch is imported: ``pinned_command`` re-runs the CLI
in a child process with it.

Outside the gate nothing is pinned: a user's runs use the fastest kernels of their machine,
and every record states the instruction set it ran with (``aten_cpu_capability``).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# the level every x86-64 CI runner has; names as ATen and oneDNN spell them
PIN = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
PINNED_ISA = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports under the pin
MKL_BRANCH = "MKL_CBWR"  # MKL's code-branch setting; part of what names a run's kernels
_X86 = ("x86_64", "AMD64", "amd64", "i686")
_CPUINFO = Path("/proc/cpuinfo")


def is_pinned(env: Mapping[str, str] | None = None) -> bool:
    """True when ``env`` (default: this process's) already carries the pin."""
    env = os.environ if env is None else env
    return all(env.get(k, "").lower() == v.lower() for k, v in PIN.items())


def pinned_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` with the pin set, whatever capability it asked for before."""
    return {**(os.environ if env is None else env), **PIN}


def cannot_pin(machine: str | None = None, cpu_flags: set[str] | None = None) -> str | None:
    """Why this machine cannot run the pinned kernels, or None when it can."""
    machine = machine or platform.machine()
    if machine not in _X86:
        return f"this is a {machine} machine, not x86-64: it has no AVX2 kernels to pin"
    flags = cpu_feature_flags() if cpu_flags is None else cpu_flags
    if flags and "avx2" not in flags:
        return "this x86-64 CPU lacks AVX2 (see the flags in /proc/cpuinfo)"
    return None


def pinned_command(argv: Sequence[str]) -> list[str]:
    """The command that re-runs ``kdbench ARGV`` in a fresh interpreter."""
    return [sys.executable, "-m", "kdbench.benchmarks.cli", *argv]


def active_isa() -> str:
    """The instruction set ATen dispatches to in this process (e.g. AVX2, AVX512)."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def kernels_label(capability: str | None, mkl_branch: str | None) -> str | None:
    """What names the kernels a run used: ATen's ISA, plus MKL's branch where one was fixed
    (``AVX2+MKL_CBWR=COMPATIBLE`` under the gate's pin, plain ``AVX512`` for a user's run)."""
    if capability is None:
        return None
    return f"{capability}+{MKL_BRANCH}={mkl_branch}" if mkl_branch else capability


def active_kernels() -> str:
    """``kernels_label`` of this process."""
    return str(kernels_label(active_isa(), os.environ.get(MKL_BRANCH)))


def cpu_feature_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()
