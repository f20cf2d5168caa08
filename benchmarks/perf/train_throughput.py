"""Training throughput of the harness loop vs a minimal hand-written PyTorch loop.

Both train the same student with the same KD loss on the same batches (the device-side
``BatchLoader``, so only the loop differs), in the same process, in alternating rounds.
Prints images/s of each and their ratio (goal: harness / hand-written >= 0.95).

    python -m benchmarks.perf.train_throughput [--teacher resnet20 --student resnet8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.config import TrainRecipe
from benchmarks.data import BatchLoader, load_cifar100, write_cifar100
from benchmarks.data.cifar100 import load_folder
from benchmarks.method import FrozenTeacher
from benchmarks.registry import build_model
from benchmarks.train import fit
from methods.common import kd_kl


def hand_written(student, teacher, loader, recipe) -> None:
    """What a researcher would write: no checkpoints, no hooks, no progress, no checks."""
    opt = torch.optim.SGD(student.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    student.train()
    for epoch in range(recipe.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kd_kl(s, t, 4.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def harness(student, teacher, loader, recipe) -> None:
    def loss(batch, s):
        with torch.no_grad():
            t = teacher(batch.x)
        return 0.1 * F.cross_entropy(s, batch.y) + 0.9 * kd_kl(s, t, 4.0)

    fit(student, loss, loader, recipe, device=torch.device("cpu"), progress=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", help="CIFAR-100 root (default: a generated fixture)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048, help="train images per epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.root:
        data = load_cifar100(args.root)
    else:
        tmp = tempfile.mkdtemp()
        data = load_folder(write_cifar100(tmp, n_train_per_class=args.images // 100 + 1,
                                          n_test_per_class=1))
    split = data.train.subset(args.images, seed=0)
    recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, schedule="cosine")
    teacher = FrozenTeacher(build_model(args.teacher, data.num_classes))
    images = args.epochs * (len(split) // args.batch_size) * args.batch_size
    rates: dict[str, list[float]] = {"hand-written": [], "harness": []}
    loops = {"hand-written": hand_written, "harness": harness}
    for r in range(args.rounds + 1):  # round 0 warms up both loops and is discarded
        order = list(loops) if r % 2 else list(loops)[::-1]
        for name in order:
            torch.manual_seed(r)
            student = build_model(args.student, data.num_classes)
            loader = BatchLoader(split, args.batch_size, mean=data.mean, std=data.std,
                                 train=True, seed=r)
            t0 = time.perf_counter()
            loops[name](student, teacher, loader, recipe)
            if r:
                rates[name].append(images / (time.perf_counter() - t0))
    hand, ours = (statistics.median(rates[k]) for k in ("hand-written", "harness"))
    print(f"training throughput, KD {args.teacher}->{args.student}, batch {args.batch_size}, "
          f"{args.threads} threads, {images} images x {args.rounds} rounds")
    print(f"  hand-written loop : {hand:8.1f} img/s  (rounds: "
          f"{', '.join(f'{v:.1f}' for v in rates['hand-written'])})")
    print(f"  harness fit()     : {ours:8.1f} img/s  (rounds: "
          f"{', '.join(f'{v:.1f}' for v in rates['harness'])})")
    print(f"  ratio harness / hand-written: {ours / hand:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
