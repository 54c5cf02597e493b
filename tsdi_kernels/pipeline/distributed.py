"""Data-parallel estimation: which batches a rank draws, and the exact merge of the ranks' running statistics.

Each rank takes batches start + rank, start + rank + world, ... of the (seed, batch index) prompt stream, so the
ranks' prompts are disjoint and together are exactly the prompts of a single-process run. (count, mean, M2)
merge exactly with Chan's formula; only floating-point reassociation separates the merged table from the
single-process one. Works with any torch.distributed backend whose all_gather supports the statistics' device
(gloo: CPU; nccl: CUDA).
"""
from __future__ import annotations

import torch


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def merged_statistics(acc):
    """A new BiasTable holding the merge of all ranks' statistics, merged in rank order so that every
    rank computes bitwise the same result; `acc` itself is untouched (a rank keeps accumulating its own prompts
    after a checkpoint). A collective: every rank must call it. Without a process group, a copy of `acc`."""
    import torch.distributed as dist

    from .bias import BiasTable

    rank, world = rank_and_world()
    if world == 1:
        return acc.copy()
    out = BiasTable.empty(acc.length, acc.vocab_size, normalize=acc.normalize, device=acc.mean.device,
                          metadata=acc.metadata)
    gathered = {}
    for name in ("mean", "m2", "count"):
        local = getattr(acc, name).contiguous()
        gathered[name] = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered[name], local)
    for r in range(world):
        out.merge(BiasTable(gathered["mean"][r], gathered["m2"][r], gathered["count"][r]))
    return out

