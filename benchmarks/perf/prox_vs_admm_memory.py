"""Peak training memory: proximal-gradient pruning vs ADMM (Lee & Lee 2021's memory claim).

Both variants run the same adversarial-KD training steps through the shared ``fit`` loop on
the same model and batches; they differ only in the sparsity machinery:

- ``prox``: after each optimiser step, the group-lasso prox over channels (no extra state);
- ``admm``: Ye et al. 2019's ADMM, keeping an auxiliary copy Z (projected onto the filter
  sparsity set) and a dual copy U of every prunable weight, adding ρ/2·‖W − Z + U‖² to the
  loss and updating Z, U every ``--admm-every`` steps.

Each variant runs in a fresh process so one's allocations cannot hide the other's. GPU:
``torch.cuda.max_memory_allocated``. CPU: the peak resident set (VmHWM, reset before
training through /proc/self/clear_refs) above the resident set when training starts;
tracemalloc cannot see tensor memory, which torch allocates outside Python's allocator.

    python -m kdbench.benchmarks.perf.prox_vs_admm_memory [--arch vgg13 --batch 32 --steps 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import re
from pathlib import Path
from typing import Any

import torch

from kdbench.benchmarks.attacks import PGDConfig, seeded_generator
from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.data import BatchLoader, ImageSplit
from kdbench.benchmarks.method import FrozenTeacher
from kdbench.benchmarks.registry import build_model
from kdbench.benchmarks.train import FitState, fit
from kdbench.methods.common.adversarial import AdversarialForward, adversarial_kd_loss
from kdbench.methods.common.proximal import prox_group_
from kdbench.methods.common.pruning import channel_groups, classifier_of, prunable_layers

MEAN, STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)
MIB = 2**20


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Admm:
    """ADMM state for filter sparsity: Z = Π_S(W + U), U += W − Z; penalty ρ/2‖W − Z + U‖²."""

    def __init__(self, layers: list[torch.nn.Module], keep_fraction: float, rho: float):
        self.layers, self.keep_fraction, self.rho = layers, keep_fraction, rho
        self.z = [self.project(m.weight.detach().clone()) for m in layers]
        self.u = [torch.zeros_like(m.weight) for m in layers]

    def project(self, w: torch.Tensor) -> torch.Tensor:
        """Keep the ⌈fraction·C⌉ filters of largest L2 norm, zero the rest."""
        norms = w.flatten(1).norm(dim=1)
        keep = norms.topk(max(1, math.ceil(self.keep_fraction * len(norms)))).indices
        mask = torch.zeros_like(norms, dtype=torch.bool)
        mask[keep] = True
        return w * mask.view(-1, *([1] * (w.dim() - 1)))

    def penalty(self) -> torch.Tensor:
        return self.rho / 2 * sum(((m.weight - z + u) ** 2).sum()
                                  for m, z, u in zip(self.layers, self.z, self.u, strict=True))

    @torch.no_grad()
    def update(self) -> None:
        for i, m in enumerate(self.layers):
            self.z[i] = self.project(m.weight + self.u[i])
            self.u[i] += m.weight - self.z[i]

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.z, *self.u))


def run_variant(variant: str, args: dict[str, Any]) -> dict[str, Any]:
    """Train ``args['steps']`` steps of one variant in this process; return its memory."""
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    torch.manual_seed(0)
    teacher_model = build_model(args["arch"], num_classes=100)
    teacher = FrozenTeacher(teacher_model).to(device)
    student = copy.deepcopy(teacher_model).requires_grad_(True).train().to(device)
    g = torch.Generator().manual_seed(0)
    n = args["batch"] * args["steps"]
    split = ImageSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                       torch.randint(0, 100, (n,), generator=g))
    loader = BatchLoader(split, args["batch"], mean=MEAN, std=STD, train=True, device=device)
    attack = PGDConfig(steps=args["attack_steps"])
    forward = AdversarialForward(MEAN, STD, attack, seeded_generator(0, device))
    kd = adversarial_kd_loss(teacher, 0.9, 4.0)
    example = torch.randn(1, 3, 32, 32, device=device)
    keep_fraction = 1 / math.sqrt(args["compression"])
    weights_bytes = sum(p.numel() * p.element_size() for p in student.parameters())

    # From here on only the variant's own state and training allocate.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    else:
        reset = _reset_peak_rss()
        start = _status_kib("VmRSS") * 1024

    if variant == "prox":
        groups = channel_groups(student, example, exclude=[classifier_of(student)])
        loss, extra_state = kd, 0

        def after_step(state: FitState) -> None:
            prox_group_(groups, state.optimizer.param_groups[0]["lr"] * args["lam"])
    else:
        admm = Admm(prunable_layers(student), keep_fraction, args["rho"])
        extra_state = admm.state_bytes()

        def loss(batch, out):
            return kd(batch, out) + admm.penalty()

        def after_step(state: FitState) -> None:
            if state.step % args["admm_every"] == 0:
                admm.update()

    recipe = TrainRecipe(epochs=1, batch_size=args["batch"], lr=0.01, schedule="cosine",
                         amp=False, channels_last=False)
    fit(student, loss, loader, recipe, device=device, forward=forward, after_step=after_step,
        progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak, how = torch.cuda.max_memory_allocated(device), "cuda.max_memory_allocated"
    else:
        peak = _status_kib("VmHWM") * 1024
        how = "peak RSS (VmHWM, reset)" if reset else "peak RSS (VmHWM, process lifetime)"
    return {"variant": variant, "measure": how, "start_bytes": start, "peak_bytes": peak,
            "training_peak_bytes": peak - start,  # the variant's own state + training
            "extra_state_bytes": extra_state, "weights_bytes": weights_bytes}


def _child(variant: str, args: dict[str, Any], queue) -> None:
    queue.put(run_variant(variant, args))


def measure(args: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant in a fresh spawned process, one after the other."""
    ctx = multiprocessing.get_context("spawn")
    results = []
    for variant in ("prox", "admm"):
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(variant, args, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"the {variant} run failed (exit code {proc.exitcode})")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg13", help="zoo model (wide models show it best)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attack-steps", type=int, default=2)
    parser.add_argument("--compression", type=float, default=4.0)
    parser.add_argument("--lam", type=float, default=1e-3, help="prox λ")
    parser.add_argument("--rho", type=float, default=1e-3, help="ADMM ρ (Ye et al.: 0.001)")
    parser.add_argument("--admm-every", type=int, default=2, help="steps between Z/U updates")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = vars(parser.parse_args(argv))
    json_path = args.pop("json")
    results = measure(args)
    print(f"peak training memory, adversarial KD on {args['arch']}, batch {args['batch']}, "
          f"{args['steps']} steps, PGD-{args['attack_steps']}, device {args['device']}")
    for r in results:
        print(f"  {r['variant']:5s}: {r['training_peak_bytes'] / MIB:8.1f} MiB above start "
              f"(peak {r['peak_bytes'] / MIB:.1f} MiB; extra state "
              f"{r['extra_state_bytes'] / MIB:.1f} MiB of it; weights "
              f"{r['weights_bytes'] / MIB:.1f} MiB; {r['measure']})")
    prox, admm = results
    print(f"  ADMM − prox: {(admm['training_peak_bytes'] - prox['training_peak_bytes']) / MIB:.1f}"
          f" MiB (Z and U alone: {admm['extra_state_bytes'] / MIB:.1f} MiB)")
    if json_path:
        json_path.write_text(json.dumps({"args": args, "results": results}, indent=2))


if __name__ == "__main__":
    main()
