"""Throughput scripts for kdbench's own machinery: ``python -m kdbench.benchmarks.perf.<name>``."""
