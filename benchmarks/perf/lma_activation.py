"""Per-element CPU cost of the LMA activation vs ReLU (methods/common/lma_activation.py).

Times, in the same process and in interleaved rounds with rotating order, ReLU and three
LMA formulations with the same output: ``naive`` (the authors' floor/int64 index and two
gathers), ``fused`` (the module's default: in-place int64 index, two gathers, one
``addcmul``) and ``bucketize`` (``torch.bucketize`` over the K-1 edges + one ``addcmul``,
kept here as the reference it was measured against). Prints the median ns/element over
rounds for inference (eval mode, running statistics) and for a training step (batch
statistics, forward + backward), at a training-size and a batch-1 activation.

    python -m kdbench.benchmarks.perf.lma_activation [--segments 8 --threads 1 --rounds 7]

The end-to-end cost inside a network is what the harness's latency records show for the
``lma`` rows; this script isolates the activation itself.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from kdbench.methods.common.lma_activation import LMA

SHAPES = {"train batch 64x16x32x32": (64, 16, 32, 32), "batch 1 1x16x32x32": (1, 16, 32, 32)}


class BucketizeLMA(LMA):
    """LMA with the segment index from ``torch.bucketize`` over the K-1 inner edges."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._statistics(x)
        std = std.clamp_min(1e-12)
        step = 6 * std / self.num_segments
        edges = mean - 3 * std + step * torch.arange(1, self.num_segments, device=x.device)
        index = torch.bucketize(x.detach(), edges, right=True)
        slopes = self.slopes + self.slope_offsets
        return torch.addcmul(self.intercepts[index], slopes[index], x)


def candidates(segments: int) -> dict[str, nn.Module]:
    """The activations compared, LMA ones with random parameters and running statistics."""
    torch.manual_seed(0)
    lmas = {"lma naive": LMA(segments, impl="naive"), "lma fused": LMA(segments, impl="fused"),
            "lma bucketize": BucketizeLMA(segments)}
    for lma in lmas.values():
        with torch.no_grad():
            lma.slopes.normal_()
            lma.intercepts.normal_()
            lma.running_mean.fill_(0.1)
            lma.running_std.fill_(1.0)
    return {"relu": nn.ReLU(), **lmas}


def step_fn(module: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    """One inference call (eval, no autograd) or one training forward + backward."""
    if not train:
        module.eval()

        def infer() -> None:
            with torch.inference_mode():
                module(x)

        return infer
    module.train()
    grad = torch.ones_like(x)

    def train_step() -> None:
        xi = x.detach().requires_grad_(True)
        module(xi).backward(grad)

    return train_step


def time_per_element(fn: Callable[[], None], elements: int, iters: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(iters):
        fn()
    return (time.perf_counter_ns() - start) / (iters * elements)


def measure(shape: tuple[int, ...], train: bool, segments: int, rounds: int,
            target_s: float) -> dict[str, float]:
    """Median ns/element over ``rounds`` interleaved rounds for each candidate."""
    x = torch.randn(shape)
    fns = {name: step_fn(m, x, train) for name, m in candidates(segments).items()}
    iters = {}
    for name, fn in fns.items():  # warm-up, then size each round to about target_s
        fn()
        probe = time_per_element(fn, x.numel(), 3) * x.numel() * 1e-9
        iters[name] = max(3, int(target_s / max(probe, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(time_per_element(fns[name], x.numel(), iters[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--segments", type=int, default=8, help="K")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-seconds", type=float, default=0.2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"LMA vs ReLU, K={args.segments}, {args.threads} thread(s), median of {args.rounds} "
          "interleaved rounds, ns per element (x ReLU)")
    for label, shape in SHAPES.items():
        for train in (False, True):
            result = measure(shape, train, args.segments, args.rounds, args.round_seconds)
            mode = "train fwd+bwd" if train else "inference"
            relu = result["relu"]
            cells = ", ".join(f"{name} {ns:6.2f} ({ns / relu:4.1f}x)"
                              for name, ns in result.items())
            print(f"  {label:24s} {mode:13s}: {cells}")


if __name__ == "__main__":
    main()
