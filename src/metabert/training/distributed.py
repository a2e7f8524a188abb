"""Data-parallel training over torch.distributed (``torchrun --nproc_per_node N -m metabert train``).

Every process builds the same seeded batches and takes its slice of each one; after backward, one
all-reduce (gloo on CPU, NCCL on GPU) sums the gradients, each slice's loss having been weighted by
its share of the batch, so a step equals the single-process step on the whole batch. We reduce the
gradients ourselves rather than wrap the model in DistributedDataParallel because the training
methods need the bare module: they freeze and unfreeze parts of it and call it functionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init() -> World:
    """Join the process group that torchrun describes in the environment (a no-op without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def shard(batch: dict[str, torch.Tensor], world: World) -> tuple[dict[str, torch.Tensor], float]:
    """This process's rows of a batch and the weight of its loss: (rows here / rows in batch) x world.

    A process left without rows (a last batch smaller than the world) runs one row with weight 0,
    so that it still takes part in the all-reduce."""
    if world.size == 1:
        return batch, 1.0
    rows = batch["labels"].shape[0]
    parts = torch.arange(rows).tensor_split(world.size)
    mine = parts[world.rank]
    weight = len(mine) / rows * world.size
    if len(mine) == 0:
        mine, weight = torch.arange(1), 0.0
    return {k: v[mine] for k, v in batch.items()}, weight


def all_reduce_gradients(parameters, world: World) -> None:
    """Sum every trainable parameter's gradient over the processes, with one flat all-reduce."""
    if world.size == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world.size
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads)):
        p.grad = g


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def all_reduce_sum(tensors: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """The sum over processes of a dict of tensors (e.g. meta-gradients of each process's tasks)."""
    if world.size == 1:
        return tensors
    names = list(tensors)
    values = [tensors[n] for n in names]
    flat = _flatten_dense_tensors(values)
    dist.all_reduce(flat)
    return dict(zip(names, _unflatten_dense_tensors(flat, values)))
