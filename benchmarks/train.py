"""The one training loop every method trains through.

SGD with a multistep or cosine schedule, bf16 autocast and channels_last on CUDA (channels_last
on CPU when the recipe asks),
an epoch-level checkpoint that makes a killed run resumable, a finite-loss check and
progress output. Methods supply only the loss (and, when they need one, a custom forward
or per-step / per-epoch hooks); the loop owns everything else so that every method
trains the same way.

Launched by ``torchrun`` (see ``benchmarks.distributed``), the same loop trains with
DistributedDataParallel: each rank runs ``forward`` + ``loss_fn`` on its shard of every
global batch, gradients are averaged, the reported loss is the global mean, and only
rank 0 writes the checkpoint. Batch-norm statistics are per rank (as in torchvision's
reference scripts without --sync-bn); SyncBatchNorm has no CPU kernel.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from kdbench.benchmarks import curves, distributed
from kdbench.benchmarks.atomic import UnwritableError, write_via
from kdbench.benchmarks.config import TrainRecipe
from kdbench.benchmarks.data import Batch, BatchLoader
from kdbench.benchmarks.errors import TrainingError

LossOutput = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]
LossFn = Callable[[Batch, Any], LossOutput]
ForwardFn = Callable[[nn.Module, Batch], Any]

log = logging.getLogger("kdbench.train")


@dataclass
class FitState:
    """What hooks see: the live model/optimiser and where the loop is."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    step: int
    epochs: int
    lr: float


@dataclass
class FitResult:
    epochs: int
    steps: int
    final_loss: float
    images_per_s: float
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def default_forward(model: nn.Module, batch: Batch) -> Any:
    return model(batch.x)


class _Step(nn.Module):
    """``forward(model, batch)`` as a module, so DDP sees a method's custom forward too."""

    def __init__(self, model: nn.Module, fn: ForwardFn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Batch) -> Any:
        return self.fn(self.model, batch)


def build_optimizer(params: Iterable[Any], recipe: TrainRecipe) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov and recipe.momentum > 0,
    )


def lr_at(epoch: int, recipe: TrainRecipe) -> float:
    """Learning rate for ``epoch`` (0-based): linear warm-up, then multistep or cosine."""
    if epoch < recipe.warmup_epochs:
        return recipe.lr * (epoch + 1) / recipe.warmup_epochs
    if recipe.schedule == "cosine":
        span = max(1, recipe.epochs - recipe.warmup_epochs)
        progress = (epoch - recipe.warmup_epochs) / span
        return 0.5 * recipe.lr * (1 + math.cos(math.pi * progress))
    return recipe.lr * recipe.gamma ** sum(epoch >= m for m in recipe.milestones)


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    loader: BatchLoader,
    recipe: TrainRecipe,
    *,
    device: torch.device,
    params: Iterable[Any] | None = None,
    forward: ForwardFn = default_forward,
    after_step: Callable[[FitState], None] | None = None,
    after_epoch: Callable[[FitState], None] | None = None,
    before_epoch: Callable[[FitState], None] | None = None,
    checkpoint: Path | None = None,
    desc: str = "fit",
    progress: bool | None = None,
) -> FitResult:
    """Train ``model`` in place with ``loss_fn(batch, forward(model, batch))``.

    ``params`` defaults to the model's trainable parameters (a list of param-group dicts
    is accepted too). With ``checkpoint`` the loop saves after every epoch and resumes
    from it when it exists, so a killed run continues where it stopped. ``before_epoch``
    runs at the start of every epoch, also the first one after a resume, so per-epoch
    schedules kept by a method (e.g. a KD temperature) resume exactly too.
    """
    on_cuda = device.type == "cuda"
    model.to(device)
    if recipe.channels_last_on(device):
        model.to(memory_format=torch.channels_last)
    trainable = list(params) if params is not None else [
        p for p in model.parameters() if p.requires_grad
    ]
    if not trainable:
        raise TrainingError(f"{desc}: nothing to train (no parameter requires grad)")
    optimizer = build_optimizer(trainable, recipe)
    # Trained parameters outside the model (e.g. a loss's projection head): the checkpoint
    # keeps them too, and under DDP the loop averages their gradients itself.
    owned = {id(p) for p in model.parameters()}
    outside = [p for group in optimizer.param_groups for p in group["params"]
               if id(p) not in owned]
    start_epoch, step = _resume(checkpoint, model, optimizer, desc, outside)
    world = distributed.current()
    step_fn: Callable[[Batch], Any] = functools.partial(forward, model)
    if world.distributed:
        if getattr(loader, "world_size", 1) != world.world_size:
            raise TrainingError(
                f"{desc}: training with {world.world_size} processes needs a loader sharded "
                f"by rank (make_loader / RunContext.loader do it); this one has world_size "
                f"{getattr(loader, 'world_size', 1)}")
        # Rank 0's weights are broadcast here, so all replicas start identical.
        step_fn = DistributedDataParallel(
            _Step(model, forward), device_ids=[device.index] if on_cuda else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if on_cuda and recipe.amp
                else contextlib.nullcontext())

    history: list[dict[str, float]] = []
    seen, train_time, last_loss = 0, 0.0, float("nan")
    bar = tqdm(
        total=recipe.epochs * len(loader), initial=start_epoch * len(loader), desc=desc,
        unit="batch", disable=not _show_progress(progress), leave=False,
    )
    for epoch in range(start_epoch, recipe.epochs):
        lr = lr_at(epoch, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loader.set_epoch(epoch)
        if before_epoch is not None:
            before_epoch(FitState(model, optimizer, epoch, step, recipe.epochs, lr))
        model.train()
        running = torch.zeros((), device=device)
        terms: dict[str, torch.Tensor] = {}  # a method's loss terms, summed for its curves
        n_batches, epoch_images = 0, 0
        t0 = time.perf_counter()
        for batch in loader:
            with autocast:
                out = loss_fn(batch, step_fn(batch))
            loss = out[0] if isinstance(out, tuple) else out
            if isinstance(out, tuple):
                for name, value in out[1].items():
                    value = torch.as_tensor(value).detach()
                    if value.numel() == 1:
                        terms[name] = terms.get(name, 0.0) + value.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if outside and world.distributed:
                _average_gradients(outside, world.world_size)
            optimizer.step()
            step += 1
            n_batches += 1
            epoch_images += batch.y.shape[0]
            running += loss.detach()
            if after_step is not None:
                after_step(FitState(model, optimizer, epoch, step, recipe.epochs, lr))
            if n_batches % recipe.log_every == 0:
                _check_finite(_global_mean(running, world), desc, epoch, step, checkpoint)
                bar.update(recipe.log_every)
        if on_cuda:
            torch.cuda.synchronize()
        epoch_time = time.perf_counter() - t0
        running = _global_mean(running, world)  # every rank reports the global-batch loss
        _check_finite(running, desc, epoch, step, checkpoint)
        bar.update(n_batches % recipe.log_every)
        last_loss = float(running) / max(1, n_batches)
        train_time += epoch_time
        epoch_images *= world.world_size  # equal shards: the images of all ranks
        seen += epoch_images
        history.append({"epoch": epoch, "loss": last_loss, "lr": lr, "seconds": epoch_time})
        if world.primary:
            curves.log_epoch(desc, epoch + 1, {
                "loss": last_loss, "lr": lr, "epoch_seconds": epoch_time,
                **{f"loss_{k}": float(v) / max(1, n_batches) for k, v in terms.items()}})
        log.info(
            "%s epoch %d/%d loss %.4f lr %.4g %.0f img/s",
            desc, epoch + 1, recipe.epochs, last_loss, lr, epoch_images / max(epoch_time, 1e-9),
        )
        if after_epoch is not None:
            after_epoch(FitState(model, optimizer, epoch, step, recipe.epochs, lr))
        if checkpoint is not None:
            if world.primary:
                _save(checkpoint, model, optimizer, epoch + 1, step, outside)
            distributed.barrier()  # no rank runs ahead of a checkpoint it might resume from
    bar.close()
    return FitResult(
        epochs=recipe.epochs,
        steps=step,
        final_loss=last_loss,
        images_per_s=seen / train_time if train_time else float("nan"),
        wall_s=train_time,
        history=history,
    )


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: BatchLoader, device: torch.device, topk: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy in percent of ``model`` (eval mode) over the loader; restores the mode."""
    was_training = model.training
    model.eval().to(device)
    correct = torch.zeros(len(topk) + 1, device=device, dtype=torch.long)  # [..., total]
    for batch in loader:
        logits = model(batch.x)
        k = min(max(topk), logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        hits = pred.eq(batch.y[:, None])
        for i, kk in enumerate(topk):
            correct[i] += hits[:, : min(kk, k)].any(dim=1).sum()
        correct[-1] += batch.y.shape[0]
    if getattr(loader, "world_size", 1) > 1:  # each rank saw a shard: gather the counts
        distributed.all_reduce_sum(correct)
    total = int(correct[-1])
    correct = correct[:-1]
    model.train(was_training)
    return {f"top{k}": 100.0 * float(c) / max(1, total) for k, c in zip(topk, correct, strict=True)}


def _global_mean(running: torch.Tensor, world: distributed.World) -> torch.Tensor:
    """The mean over ranks of a per-rank loss sum (itself in a single process)."""
    if not world.distributed:
        return running
    return distributed.all_reduce_sum(running.detach().clone()) / world.world_size


def _average_gradients(params: list[torch.Tensor], world_size: int) -> None:
    """What DDP does for its own parameters, for trained ones outside the model: one
    all-reduce of the flattened gradients, divided by the number of ranks."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        distributed.all_reduce_sum(flat).div_(world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def _check_finite(running: torch.Tensor, desc: str, epoch: int, step: int,
                  checkpoint: Path | None = None) -> None:
    if not torch.isfinite(running):
        kept = (f"; the last good checkpoint {checkpoint} is kept" if checkpoint is not None
                and checkpoint.is_file() else "")
        raise TrainingError(
            f"{desc}: loss became {float(running)} at epoch {epoch + 1}, step {step}; "
            f"the run was stopped{kept} (try a lower learning rate or check the method's loss)"
        )


def _show_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("KDBENCH_PROGRESS", "auto") != "0" and sys.stderr.isatty()


def _save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
          step: int, outside: Sequence[torch.Tensor] = ()) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "epoch": epoch, "step": step, "outside": [p.detach() for p in outside]}
    try:
        # A reader sees the previous checkpoint or this one, never half.
        write_via(path, lambda tmp: torch.save(state, tmp))
    except (UnwritableError, RuntimeError) as exc:
        # Read-only or full disk (torch.save reports a full disk as a RuntimeError from its
        # zip writer): the previous checkpoint stays as it was.
        why = exc.reason if isinstance(exc, UnwritableError) else str(exc)
        raise TrainingError(f"could not write checkpoint {path} ({why}); free space or make "
                            "the cache directory writable, then re-run to resume from the "
                            "previous checkpoint") from exc


def _resume(
    path: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, desc: str = "fit",
    outside: Sequence[torch.Tensor] = (),
) -> tuple[int, int]:
    if path is None or not path.is_file():
        return 0, 0
    restart = (f"delete {path} (or re-run with --no-resume) to start this training phase "
               "over")
    try:
        # weights_only: a checkpoint is data; a pickle that would run code is refused.
        state = torch.load(path, map_location="cpu", weights_only=True)
        model_state, optim_state = state["model"], state["optimizer"]
        epoch, step = int(state["epoch"]), int(state["step"])
        saved_outside = state.get("outside", [])
    except Exception as exc:  # truncated, corrupt, not a checkpoint, or pickled code
        raise TrainingError(f"{desc}: checkpoint {path} cannot be resumed from: it is not a "
                            f"readable training checkpoint (loaded with weights_only=True): "
                            f"{exc}; {restart}") from exc
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        if [p.shape for p in saved_outside] != [p.shape for p in outside]:
            raise ValueError(f"it holds {len(saved_outside)} trained parameters outside the "
                             f"model, this run trains {len(outside)}")
        with torch.no_grad():
            for param, saved in zip(outside, saved_outside, strict=True):
                param.copy_(saved)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainingError(f"{desc}: checkpoint {path} is for another model than "
                            f"{type(model).__name__} ({str(exc).splitlines()[0]}); "
                            f"{restart}") from exc
    log.info("resumed %s at epoch %d", path, epoch)
    return epoch, step
