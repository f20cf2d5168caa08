"""Measurement: MACs, what the deployed model is, latency vs the teacher, machine fingerprint.

One implementation of each, used for every method (what each reports: README.md, "What is
measured"; how and why: each module's docstring).
"""

from kdbench.benchmarks.measure.flops import count_flops, count_macs
from kdbench.benchmarks.measure.latency import (
    LatencyResult,
    LatencySetting,
    ModelLatency,
    compare_latency,
    default_settings,
    summarize,
)
from kdbench.benchmarks.measure.machine import fingerprint
from kdbench.benchmarks.measure.params import ModelReport, assert_deployable, inspect_model

__all__ = [
    "LatencyResult",
    "LatencySetting",
    "ModelLatency",
    "ModelReport",
    "assert_deployable",
    "compare_latency",
    "count_flops",
    "count_macs",
    "default_settings",
    "fingerprint",
    "inspect_model",
    "summarize",
]
