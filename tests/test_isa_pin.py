"""The gate's kernel pin: the same training is bit-identical whatever ISA a machine offers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdbench.benchmarks import isa

WORKER = Path(__file__).with_name("isa_worker.py")


def train(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def env_with(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in isa.PIN and k != "MKL_ENABLE_INSTRUCTIONS"}
    return {**env, **changes}


@pytest.mark.skipif(isa.cannot_pin() is not None, reason=f"{isa.cannot_pin()}")
def test_pinned_training_is_bit_identical_whatever_capability_was_asked_for():
    # Unpinned runs may differ from AVX2 ones (they do on AVX-512 machines); pinned ones may
    # not. ATen dies of SIGILL when asked for AVX-512 on a CPU without it, so unpinned runs
    # ask only for what the CPU has; the pin overrides any request.
    # MKL (the linear layers) is asked for its widest and narrowest vector ISA in turn: an
    # MKL cap is a ceiling, never an instruction the CPU lacks.
    has = ("avx512", "avx2") if "avx512f" in isa.cpu_feature_flags() else ("avx2",)
    unpinned = {cap: train(env_with(ATEN_CPU_CAPABILITY=cap)) for cap in has}
    aten_onednn = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    unpinned["ATen+oneDNN at AVX2"] = train(env_with(**aten_onednn))
    unpinned["ATen+oneDNN+MKL at AVX2"] = train(env_with(**aten_onednn,
                                                         MKL_ENABLE_INSTRUCTIONS="AVX2"))
    pinned = [train(isa.pinned_env(env_with(ATEN_CPU_CAPABILITY=cap,
                                            MKL_ENABLE_INSTRUCTIONS=mkl)))
              for cap, mkl in (("avx512", "AVX512"), ("avx2", "AVX2"), ("default", "SSE4_2"))]
    assert {p["isa"] for p in pinned} == {isa.PINNED_ISA}
    assert len({p["weights"] for p in pinned}) == 1
    # ATen's capability alone is not the pin: oneDNN (convolutions) and MKL (matrix
    # products) pick their own ISAs; on an Intel AVX-512 CPU the last two unpinned runs
    # differ by MKL alone
    print("unpinned:", unpinned, "pinned:", pinned[0])  # -s shows whether kernels differ here


def test_machines_without_avx2_cannot_pin():
    assert isa.cannot_pin("aarch64", set()) is not None
    assert "AVX2" in isa.cannot_pin("x86_64", {"sse4_2", "avx"})
    assert isa.cannot_pin("x86_64", {"avx", "avx2"}) is None


def test_the_pin_overrides_what_the_environment_asked_for():
    env = isa.pinned_env({"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "PATH": "/bin"})
    assert isa.is_pinned(env) and env["PATH"] == "/bin" and env["MKL_CBWR"] == "COMPATIBLE"
    assert not isa.is_pinned({"ATEN_CPU_CAPABILITY": "avx512"})
    # ATen and oneDNN pinned but MKL free is not the pin: MKL picks AVX-512 on Intel CPUs
    assert not isa.is_pinned({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})


def test_kernels_are_named_with_the_mkl_branch_only_where_one_was_fixed():
    assert isa.kernels_label("AVX2", "COMPATIBLE") == "AVX2+MKL_CBWR=COMPATIBLE"
    assert isa.kernels_label("AVX512", None) == "AVX512"
    assert isa.kernels_label(None, "COMPATIBLE") is None
