"""Is a speed-up's CI honest? The same teacher/student pair timed several times, apart.

Each repeat is one ``compare_latency`` call exactly as the harness makes it (interleaved
rounds, adaptive until the CI half-width is <= 5 % of the median or a cap ends them), at
batch 1 on 1 thread. If the intervals are honest, repeats on a quiet machine overlap; the
script prints each repeat's speed-up, CI and what stopped it, then whether every pair of
intervals overlaps (exit 1 if not).

    python -m kdbench.benchmarks.perf.speedup_repeats [--teacher resnet56] [--student resnet20]
        [--repeats 4] [--pause-s 30]

Weights are random: latency depends on the graph, not on the values.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from kdbench.benchmarks.measure.latency import LatencySetting, compare_latency
from kdbench.benchmarks.registry import build_model

INPUT = (3, 32, 32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--pause-s", type=float, default=30.0,
                        help="seconds between repeats (default 30)")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    teacher = build_model(args.teacher, num_classes=100).eval()
    student = build_model(args.student, num_classes=100).eval()
    setting = LatencySetting(device="cpu", threads=1, batch=1)
    print(f"{args.teacher} vs {args.student}, batch 1, 1 thread, ISA "
          f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    print(f"{'repeat':>6} {'speed-up':>9} {'95 % CI':>15} {'rounds':>6} {'stopped by':>10} noise")
    intervals = []
    for repeat in range(args.repeats):
        if repeat:
            time.sleep(args.pause_s)
        [r] = compare_latency(teacher, student, INPUT, [setting], rounds=args.rounds)
        intervals.append((r.speedup_ci_low, r.speedup_ci_high))
        ci = (f"[{r.speedup_ci_low:.2f}, {r.speedup_ci_high:.2f}]"
              if r.speedup_ci_low is not None else "–")
        print(f"{repeat + 1:>6} {r.speedup:>8.2f}× {ci:>15} {r.rounds:>6} {r.stopped_by:>10} "
              f"{r.noise}")
    disjoint = [(i + 1, j + 1) for (i, a), (j, b) in itertools.combinations(enumerate(intervals), 2)
                if a[0] is None or b[0] is None or a[1] < b[0] or b[1] < a[0]]
    if disjoint:
        print("intervals that do not overlap (repeat pairs): "
              + ", ".join(f"{i}-{j}" for i, j in disjoint))
        return 1
    print(f"all {args.repeats} intervals overlap")
    return 0


if __name__ == "__main__":
    sys.exit(main())
