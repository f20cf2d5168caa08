"""Training throughput of the harness loop vs a minimal hand-written PyTorch loop.

Both train the same student with the same KD loss on the same batches (the device-side
``BatchLoader``, so only the loop differs), in the same process, in alternating rounds.
Prints images/s of each and their ratio as the median of per-round (paired) ratios with a
95 % CI over rounds, as latency does (goal: harness / hand-written >= 0.95); the harness with
channels_last against NCHW, paired the same way; and the share of this machine's matmul
peak (``torch.mm``, same threads) the harness reaches: training FLOPs = 3x the student's
forward (forward + backward) + the teacher's forward. Then the teacher's own training (CE)
through the harness against the same peak, and ``torch.compile`` of the student's training
step (Inductor): its one-off compile time and its steady-state speed against eager, paired by
rounds, so whether it pays for a run of a given length can be read off.

    python -m kdbench.benchmarks.perf.train_throughput [--teacher resnet20 --student resnet8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.data import BatchLoader, load_cifar100, write_cifar100
from kdbench.benchmarks.data.cifar100 import load_folder
from kdbench.benchmarks.measure import count_flops
from kdbench.benchmarks.measure.latency import speedup_ci
from kdbench.benchmarks.method import FrozenTeacher
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.train import fit
from kdbench.methods.common import kd_kl


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
    rates: dict[str, list[float]] = {"hand-written": [], "harness": [],
                                     "harness, channels_last": []}
    nhwc = recipe.replace(cpu_channels_last=True)
    loops = {"hand-written": hand_written, "harness": harness,
             "harness, channels_last": lambda s, t, loader, _: harness(s, t, loader, nhwc)}
    for r in range(args.rounds + 1):  # round 0 warms up both loops and is discarded
        order = list(loops) if r % 2 else list(loops)[::-1]
        for name in order:
            torch.manual_seed(r)
            student = build_model(args.student, data.num_classes)
            loader = BatchLoader(split, args.batch_size, mean=data.mean, std=data.std,
                                 train=True, seed=r,
                                 channels_last=name == "harness, channels_last")
            t0 = time.perf_counter()
            loops[name](student, teacher, loader, recipe)
            if r:
                rates[name].append(images / (time.perf_counter() - t0))
    hand, ours = (statistics.median(rates[k]) for k in ("hand-written", "harness"))
    ratio = paired(rates["harness"], rates["hand-written"])
    nhwc = paired(rates["harness, channels_last"], rates["harness"])
    example = (torch.randn(1, *data.input_shape),)
    flops = (3 * count_flops(build_model(args.student, data.num_classes), example)
             + count_flops(teacher.model, example))
    peak = matmul_peak_gflops()
    teacher_rate = teacher_training_rate(args.teacher, data, split, recipe)
    teacher_flops = 3 * count_flops(teacher.model, example)
    compiled = compile_rates(args.student, data, split, teacher, recipe, args.rounds)
    print(f"training throughput, KD {args.teacher}->{args.student}, batch {args.batch_size}, "
          f"{args.threads} threads, {images} images x {args.rounds} rounds")
    print(f"  hand-written loop : {hand:8.1f} img/s  (rounds: "
          f"{', '.join(f'{v:.1f}' for v in rates['hand-written'])})")
    print(f"  harness fit()     : {ours:8.1f} img/s  (rounds: "
          f"{', '.join(f'{v:.1f}' for v in rates['harness'])})")
    cl = statistics.median(rates["harness, channels_last"])
    print(f"  harness, channels_last: {cl:8.1f} img/s")
    print(f"  harness / hand-written: {ratio}  (median of paired round ratios; goal >= 0.95)")
    print(f"  channels_last / NCHW  : {nhwc}")
    achieved = ours * flops / 1e9
    print(f"  training FLOPs {flops / 1e6:.1f} M/image -> {achieved:.1f} GFLOP/s = "
          f"{100 * achieved / peak:.0f} % of the torch.mm peak ({peak:.1f} GFLOP/s, "
          f"{args.threads} threads)")
    print(f"  teacher {args.teacher} trained alone (CE, harness): {teacher_rate:8.1f} img/s, "
          f"{teacher_flops / 1e6:.1f} M FLOPs/image -> "
          f"{100 * teacher_rate * teacher_flops / 1e9 / peak:.0f} % of the torch.mm peak")
    eager_rate = statistics.median(compiled["eager"])
    compiled_rate = statistics.median(compiled["compiled"])
    saved_per_image = 1 / eager_rate - 1 / compiled_rate
    break_even = (f"{compiled['compile_s'] / saved_per_image:,.0f} training images"
                  if saved_per_image > 0 else "never (not faster)")
    print(f"  torch.compile of the student's step: compile {compiled['compile_s']:.1f} s "
          f"(first epoch minus a steady one); steady state compiled / eager: "
          f"{paired(compiled['compiled'], compiled['eager'])}; it pays for itself after "
          f"{break_even}")


def teacher_training_rate(arch: str, data, split, recipe: TrainRecipe) -> float:
    """Images/s of the harness loop training ``arch`` alone with cross-entropy."""
    torch.manual_seed(0)
    model = build_model(arch, data.num_classes)
    loader = BatchLoader(split, recipe.batch_size, mean=data.mean, std=data.std, train=True,
                         seed=0)
    result = fit(model, lambda batch, logits: F.cross_entropy(logits, batch.y), loader,
                 recipe.replace(epochs=2), device=torch.device("cpu"), progress=False)
    return len(loader) * recipe.batch_size / result.history[-1]["seconds"]  # the 2nd epoch


def compile_rates(arch: str, data, split, teacher, recipe: TrainRecipe,
                  rounds: int) -> dict[str, Any]:
    """Steady-state images/s of one epoch of KD training, eager and with the student under
    ``torch.compile`` (alternating rounds), and the compile time of the compiled one."""
    out: dict[str, Any] = {"eager": [], "compiled": []}
    models = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        student = build_model(arch, data.num_classes)
        models[name] = torch.compile(student) if name == "compiled" else student
    loader = BatchLoader(split, recipe.batch_size, mean=data.mean, std=data.std, train=True,
                         seed=0)
    images = len(loader) * recipe.batch_size
    one_epoch = recipe.replace(epochs=1)

    def epoch(name: str) -> float:
        t0 = time.perf_counter()
        hand_written(models[name], teacher, loader, one_epoch)
        return time.perf_counter() - t0

    first = {name: epoch(name) for name in ("eager", "compiled")}
    for r in range(rounds):
        for name in (("eager", "compiled") if r % 2 else ("compiled", "eager")):
            out[name].append(images / epoch(name))
    steady = images / statistics.median(out["compiled"])
    out["compile_s"] = max(0.0, first["compiled"] - steady)
    return out


def paired(a: list[float], b: list[float]) -> str:
    """Median of per-round ratios a/b with its 95 % CI over rounds (benchmarks.measure)."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    low, high, method = speedup_ci(ratios)
    ci = "" if low is None else f" [{low:.3f}, {high:.3f}] 95 % CI ({method})"
    return f"{statistics.median(ratios):.3f}{ci}, {len(ratios)} rounds"


def matmul_peak_gflops(n: int = 1024, repeats: int = 20) -> float:
    """Best-of GFLOP/s of an n x n fp32 matmul at the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


if __name__ == "__main__":
    main()
