"""The gate's kernel pin: the same training is bit-identical whatever ISA a machine offers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import isa

WORKER = Path(__file__).with_name("isa_worker.py")


def train(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def env_with(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in isa.PIN}
    return {**env, **changes}


@pytest.mark.skipif(isa.cannot_pin() is not None, reason=f"{isa.cannot_pin()}")
def test_pinned_training_is_bit_identical_whatever_capability_was_asked_for():
    # Unpinned runs may differ from AVX2 ones (they do on AVX-512 machines); pinned ones may
    # not. ATen dies of SIGILL when asked for AVX-512 on a CPU without it, so unpinned runs
    # ask only for what the CPU has; the pin overrides any request.
    has = ("avx512", "avx2") if "avx512f" in isa.cpu_feature_flags() else ("avx2",)
    unpinned = {cap: train(env_with(ATEN_CPU_CAPABILITY=cap)) for cap in has}
    pinned = [train(isa.pinned_env(env_with(ATEN_CPU_CAPABILITY=cap)))
              for cap in ("avx512", "avx2", "default")]
    assert {p["isa"] for p in pinned} == {isa.PINNED_ISA}
    assert len({p["weights"] for p in pinned}) == 1
    # ATen's capability alone is not the pin: oneDNN (convolutions) picks its own ISA
    print("unpinned:", unpinned, "pinned:", pinned[0])  # -s shows whether kernels differ here


def test_machines_without_avx2_cannot_pin():
    assert isa.cannot_pin("aarch64", set()) is not None
    assert "AVX2" in isa.cannot_pin("x86_64", {"sse4_2", "avx"})
    assert isa.cannot_pin("x86_64", {"avx", "avx2"}) is None


def test_the_pin_overrides_what_the_environment_asked_for():
    env = isa.pinned_env({"ATEN_CPU_CAPABILITY": "avx512", "PATH": "/bin"})
    assert isa.is_pinned(env) and env["PATH"] == "/bin"
    assert not isa.is_pinned({"ATEN_CPU_CAPABILITY": "avx512"})
