"""torch.distributed for the student trainer: rank and world size, sums across ranks, FSDP2 or DDP wrapping.

The same `distill train` command runs alone or under `torchrun --nproc-per-node N`: NCCL on GPUs, gloo on CPUs.
FSDP2 shards each decoder layer and then the whole loss module (so its forward gathers every parameter);
`--sharding ddp` replicates it instead. A failed FSDP2 set-up is an error, never a quiet fallback: a
half-sharded model is unusable.
"""

from __future__ import annotations

import os

import torch

from distill.errors import DistillError


def rank_and_world() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def all_sum(values: list[float], world: int) -> list[float]:
    """Each value summed over the ranks (as they are, alone)."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def parallelize(
    module: torch.nn.Module, layers: list[torch.nn.Module], world: int, sharding: str
) -> tuple[torch.nn.Module, str]:
    """`module` wrapped for `world` processes and how: ("none" alone), "ddp", or "fsdp2" with each of `layers`
    sharded first. Raises DistillError naming --sharding ddp when FSDP2 cannot shard the model."""
    if world == 1:
        return module, "none"
    if sharding == "ddp":
        return torch.nn.parallel.DistributedDataParallel(module), "ddp"
    from torch.distributed.fsdp import fully_shard

    try:
        for layer in layers:
            fully_shard(layer)
        fully_shard(module)
    except Exception as e:  # a half-sharded model is unusable: say so, never fall back quietly
        raise DistillError(
            f"FSDP2 could not shard the student ({type(e).__name__}: {e}); pass --sharding ddp to replicate it "
            "on every process instead."
        ) from e
    return module, "fsdp2"
