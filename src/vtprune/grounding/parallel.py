"""Data-parallel grounding evaluation over ``torch.distributed`` (issue #13).

Launched with ``torchrun --nproc_per_node N`` (or ``accelerate launch``), every process runs
the same command; scenes are split into the batches a single process would make and batch i
goes to rank ``i % N``. Each batch is therefore computed exactly as in one process, so the
gathered per-scene results — and every table, bootstrap errors included — are the same as a
one-process run's. Results are gathered to every rank (``all_gather_object``) so all ranks
take the same path afterwards; only rank 0 prints and writes.

Without a launcher (no ``WORLD_SIZE`` in the environment) everything is one process and no
process group is created.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size); joins the launcher's process group on first use (gloo on CPU,
    nccl when CUDA is available)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints and writes."""
    return world()[0] == 0


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Start index of every batch of ``n`` scenes that belongs to this rank."""
    rank, size = world()
    return list(range(0, n, batch_size))[rank::size]


def map_batches(
    items: Sequence[Any], batch_size: int, run: Callable[[int, Sequence[Any]], list[T]]
) -> list[T]:
    """``run(start, items[start:start + batch_size])`` over this rank's batches, then every
    rank's outputs gathered in scene order (one flat list, as one process would build it)."""
    local = {s: run(s, items[s : s + batch_size]) for s in batch_starts(len(items), batch_size)}
    rank, size = world()
    if size == 1:
        parts = local
    else:
        import torch.distributed as dist

        gathered: list[dict[int, list[T]] | None] = [None] * size
        dist.all_gather_object(gathered, local)
        parts = {k: v for part in gathered if part for k, v in part.items()}
    return [out for start in sorted(parts) for out in parts[start]]


__all__ = ["batch_starts", "is_main", "map_batches", "world"]
