"""Generic stages every strategy can reuse: a single-budget allocator and priority selectors.

Plugin module (entry point ``stages``). Selectors honour region quotas when the allocation
has regions: inside region r they keep the ``quotas[b, r]`` tokens of highest priority.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..core import (
    Allocation,
    Allocator,
    AllocatorSpec,
    Capabilities,
    PruneContext,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    hookimpl,
)


def keep_top(priority: torch.Tensor, ctx: PruneContext, alloc: Allocation) -> Selection:
    """Keep, per sample (and per region if any), the tokens of highest ``priority`` [B, N].

    Ties go to the lower token index. Invalid tokens are never kept.
    """
    b, n = priority.shape
    valid = ctx.valid_mask().to(priority.device)
    prio = torch.where(valid, priority.float(), torch.full_like(priority, float("-inf"), dtype=torch.float))
    order = torch.sort(prio, dim=1, descending=True, stable=True).indices  # [B, N]
    if alloc.regions is None or alloc.quotas is None:
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
        keep = rank < alloc.budget.to(priority.device)[:, None]
        return Selection.from_mask(keep & valid)
    regions = alloc.regions.to(priority.device)
    # Stable sort by region of the score-ordered tokens: region-major, score-descending inside.
    reg_sorted = regions.gather(1, order)
    by_region = torch.sort(reg_sorted, dim=1, stable=True).indices
    order = order.gather(1, by_region)
    reg_sorted = reg_sorted.gather(1, by_region)
    first = torch.searchsorted(reg_sorted.contiguous(), reg_sorted.contiguous(), right=False)
    rank_in_region = torch.arange(n, device=order.device).expand(b, n) - first
    quotas = torch.cat([torch.zeros(b, 1, dtype=torch.long), alloc.quotas.cpu()], dim=1).to(order.device)
    quota = quotas.gather(1, reg_sorted + 1)  # region -1 (invalid) gets quota 0
    keep_sorted = rank_in_region < quota
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(1, order, keep_sorted)
    return Selection.from_mask(keep & valid)


def make_global() -> Allocator:
    """Allocator ``global``: one budget per sample, no regions."""

    def allocate(ctx: PruneContext, scores: torch.Tensor) -> Allocation:
        return Allocation(budget=ctx.budget.clone())

    return allocate


def make_topk() -> Selector:
    """Selector ``topk``: the highest-scoring tokens (within each region's quota)."""

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        return keep_top(scores, ctx, alloc)

    return select


def make_constant() -> Scorer:
    """Scorer ``constant``: every token scores 0 (for selectors that ignore scores)."""

    def score(ctx: PruneContext) -> torch.Tensor:
        return torch.zeros(ctx.features.shape[:2], dtype=torch.float32, device=ctx.features.device)

    return score


def make_feature_norm() -> Scorer:
    """Scorer ``feature_norm``: L2 norm of each token's feature vector."""

    def score(ctx: PruneContext) -> torch.Tensor:
        return ctx.features.float().norm(dim=-1)

    return score


_ROW_GRIDS = Capabilities(row_grids=True)
"""These stages read each token on its own (or the valid ones together), never the grid: a
row on a canvas (``ctx.grids``) gets what it gets alone on its own grid."""


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [
        ScorerSpec("constant", make_constant, _ROW_GRIDS, description="every token scores 0"),
        ScorerSpec("feature_norm", make_feature_norm, _ROW_GRIDS, description="L2 norm of token features"),
    ]


@hookimpl
def vtprune_allocators() -> Iterable[AllocatorSpec]:
    return [AllocatorSpec("global", make_global, _ROW_GRIDS, description="one budget per sample, no regions")]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [SelectorSpec("topk", make_topk, _ROW_GRIDS, description="highest scores, per region quota if any")]
