"""Stage partners the kit composes a stage under test with (see :func:`.runner.stage_strategy`).

Imports neither the runner nor the checks, so that :mod:`.fresh` can rebuild a kit hybrid in a
new interpreter without an import circle.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import Allocation, PruneContext, Schedule

REGION_COUNT = 4
_REGION_WEIGHTS = (0, 1, 2, 4)
"""Share of the budget each region of :func:`uneven_regions_allocator` gets (region 0: none)."""


def uneven_regions_allocator(ctx: PruneContext, scores: torch.Tensor) -> Allocation:
    """The allocator :func:`check_stage` gives a selector under test: quotas that are uneven.

    Four interleaved regions, diagonal stripes of the grid (token at row i, column j is in
    region ``(i + j // 2) % 4``), so a region is neither contiguous nor a block of rows. The
    budget is dealt by weights 0 : 1 : 2 : 4 (floors), the rest topped up from region 3 down,
    each quota capped by its region's valid tokens. So region 0 gets 0 unless the budget
    forces it, regions are mostly larger than their quotas, and keep-all fills every region.
    Deterministic and batch-consistent; regions live on the features' device, quotas on CPU.
    """
    b, n = ctx.batch_size, ctx.num_tokens
    _, w = ctx.grid
    pos = torch.arange(n)
    stripes = ((pos // w + (pos % w) // 2) % REGION_COUNT).expand(b, n)
    valid = ctx.valid_mask().cpu()
    regions = torch.where(valid, stripes, torch.full_like(stripes, -1))
    sizes = torch.zeros(b, REGION_COUNT + 1, dtype=torch.long)
    sizes.scatter_add_(1, regions + 1, torch.ones_like(regions))
    sizes = sizes[:, 1:]
    quotas = torch.zeros(b, REGION_COUNT, dtype=torch.long)
    total = sum(_REGION_WEIGHTS)
    for i in range(b):
        k = int(ctx.budget[i])
        q = [min(int(sizes[i, r]), k * wt // total) for r, wt in enumerate(_REGION_WEIGHTS)]
        left = k - sum(q)
        for r in reversed(range(REGION_COUNT)):
            add = min(left, int(sizes[i, r]) - q[r])
            q[r] += add
            left -= add
        quotas[i] = torch.tensor(q)
    return Allocation(ctx.budget.clone(), regions.to(ctx.features.device), quotas)


def _kit_schedule(num_layers: int, keep: Any) -> Schedule:
    """Placement for stage tests that need in-LLM attention (irrelevant to the checks)."""
    return Schedule.at_layers([(min(1, num_layers - 1), keep)])


__all__ = ["REGION_COUNT", "uneven_regions_allocator"]
