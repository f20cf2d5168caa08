"""A tiny deterministic training run of the shared loop, as its own process.

Used by tests/test_scale_faults.py: alone (the single-process reference and the
kill-and-resume runs) and under ``torchrun --nproc-per-node 2`` (DDP with gloo). Rank 0
saves the loss history, the final weights and evaluation into OUT (``torch.save``).

    python tests/fit_worker.py OUT [--ckpt PATH] [--hang-at EPOCH STEP] [--ready FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdbench.benchmarks import distributed, train
from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.data import ImageDataset, ImageSplit
from kdbench.benchmarks.method import make_loader

RECIPE = TrainRecipe(epochs=3, batch_size=32, lr=0.05, schedule="cosine", log_every=2,
                     eval_batch_size=50)


def toy_data() -> ImageDataset:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSplit:
        labels = torch.arange(n) % 4
        images = labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (n, 3, 32, 32), generator=g)
        return ImageSplit(images.to(torch.uint8), labels)

    return ImageDataset(name="toy", train=split(128), test=split(90), num_classes=4,
                        class_names=list("abcd"), mean=(0.5,) * 3, std=(0.25,) * 3,
                        data_source="synthetic", root=None, fingerprint="toy")


def toy_model() -> nn.Module:
    torch.manual_seed(0)  # no batch norm: per-rank statistics would differ from one process
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--hang-at", type=int, nargs=2, metavar=("EPOCH", "STEP"))
    parser.add_argument("--ready", type=Path, help="touched when the run hangs")
    args = parser.parse_args()
    torch.set_num_threads(1)  # same kernels, same summation order in every process
    cpu = distributed.setup(torch.device("cpu"))
    world = distributed.current()
    saves = args.out.with_suffix(".saves")
    real_save = train._save

    def logged_save(*a, **kw):  # which ranks write checkpoints
        with open(saves, "a") as f:
            f.write(f"{world.rank}\n")
        real_save(*a, **kw)

    train._save = logged_save
    data, model = toy_data(), toy_model()
    # A trained parameter outside the model (like a method's projection head): its
    # gradient is averaged by the loop, not by DDP.
    scale = nn.Parameter(torch.ones(()))

    def loss(batch, logits):
        return F.cross_entropy(logits * scale, batch.y)

    def hang(state: train.FitState) -> None:
        if args.hang_at and (state.epoch, state.step) == tuple(args.hang_at):
            args.ready.write_text(str(os.getpid()))
            time.sleep(120)  # killed here, mid-epoch

    loader = make_loader(data, data.train, train=True, batch_size=RECIPE.batch_size,
                         device=cpu, seed=0, channels_last=False)
    result = train.fit(model, loss, loader, RECIPE, device=cpu,
                       params=[*model.parameters(), scale], checkpoint=args.ckpt,
                       after_step=hang, progress=False)
    test = make_loader(data, data.test, train=False, batch_size=RECIPE.eval_batch_size,
                       device=cpu, seed=0, channels_last=False)
    acc = train.evaluate(model, test, cpu)
    if world.primary:
        torch.save({"losses": [h["loss"] for h in result.history], "steps": result.steps,
                    "state": model.state_dict(), "scale": scale.detach(), "acc": acc,
                    "world_size": world.world_size}, args.out)


if __name__ == "__main__":
    main()
