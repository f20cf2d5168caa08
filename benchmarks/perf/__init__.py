"""Throughput scripts for kdbench's own machinery: ``python -m benchmarks.perf.<name>``."""
