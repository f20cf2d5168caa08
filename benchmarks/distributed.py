"""torch.distributed plumbing for the shared loop: launched by ``torchrun`` (or a submitit
task), every process runs the same method code on its own shard of every global batch.

The process group is initialised from the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPU, nccl on CUDA.
Without those variables (or with ``WORLD_SIZE=1``) nothing here does anything, so a
single-process run is exactly what it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kdbench.benchmarks.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        """The one process that writes checkpoints, caches and records."""
        return self.rank == 0


def env_world() -> World:
    """The world torchrun describes in the environment (a single process when it does not)."""
    try:
        world = World(rank=int(os.environ.get("RANK", 0)),
                      world_size=int(os.environ.get("WORLD_SIZE", 1)),
                      local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers "
                          f"(as torchrun sets them): {exc}") from exc
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ConfigError(f"need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; got "
                          f"RANK={world.rank}, WORLD_SIZE={world.world_size}")
    return world


def current() -> World:
    """This process's place in the initialised process group (single process if none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)
    return World()


def setup(device: torch.device) -> torch.device:
    """Initialise the process group when launched by torchrun; returns this rank's device.

    On CUDA every rank gets ``cuda:LOCAL_RANK`` and nccl; on CPU gloo. Idempotent.
    """
    world = env_world()
    if not world.distributed:
        return device
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {world.local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}; start at most that many processes "
                              "per node (torchrun --nproc-per-node)")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process)."""
    if current().distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank, so all ranks take the same branch."""
    if not current().distributed:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
