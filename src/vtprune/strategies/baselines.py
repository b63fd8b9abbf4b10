"""Baselines: ``random`` (seeded) and ``uniform`` (an even lattice over the token grid).

Two recent benchmarks found both hard to beat; every table vtprune publishes includes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import torch

from ..core import (
    Allocation,
    ContractError,
    PruneContext,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)


def make_random(seed: int = 0) -> Scorer:
    """Scorer ``random``: i.i.d. uniform scores.

    Drawn from ``ctx.generator`` when the context has one; otherwise each sample draws from a
    fresh generator seeded with ``seed``, so a sample's choice depends only on (seed, N) —
    reproducible and independent of the rest of the batch.
    """

    def score(ctx: PruneContext) -> torch.Tensor:
        b, n = ctx.features.shape[:2]
        if ctx.generator is not None:
            out = torch.rand(b, n, generator=ctx.generator, device=ctx.generator.device)
        else:
            row = torch.rand(n, generator=torch.Generator().manual_seed(int(seed)))
            out = row.expand(b, n).clone()
        return out.to(ctx.features.device)

    return score


@lru_cache(maxsize=256)
def lattice(h: int, w: int, k: int) -> torch.Tensor:
    """``k`` token indices spread evenly over an h x w grid, ascending (raster order).

    Takes the centres of a kh x kw lattice (kh / kw close to h / w, kh * kw >= k) and, when the
    lattice has more than k points, drops the surplus at evenly spaced lattice positions.
    """
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    kh = max(1, min(h, round(math.sqrt(k * h / w))))
    kw = max(1, min(w, math.ceil(k / kh)))
    while kh * kw < k:  # grid too thin in one direction
        kh = min(h, kh + 1)
        kw = max(1, min(w, math.ceil(k / kh)))
    rows = ((torch.arange(kh) + 0.5) * h / kh).floor().long()
    cols = ((torch.arange(kw) + 0.5) * w / kw).floor().long()
    points = (rows[:, None] * w + cols[None, :]).flatten()
    if len(points) > k:
        keep = torch.linspace(0, len(points) - 1, k).round().long()
        points = points[keep]
    return points.sort().values


def make_uniform_grid() -> Selector:
    """Selector ``uniform_grid``: an even lattice of ``budget`` tokens over the grid.

    Samples whose tokens are all valid get :func:`lattice`; a ragged sample takes evenly
    spaced tokens among its valid ones in raster order. Ignores scores; does not support
    region quotas (use ``topk`` with a region allocator instead).
    """

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        if alloc.regions is not None:
            raise ContractError(
                "selector 'uniform_grid' does not support region quotas; compose it with the "
                "'global' allocator, or use 'topk' with a region allocator"
            )
        h, w = ctx.grid
        valid = ctx.valid_mask()
        kept = []
        for b, k in enumerate(alloc.budget.tolist()):
            if bool(valid[b].all()):
                kept.append(lattice(h, w, int(k)).to(valid.device))
            else:
                idx = valid[b].nonzero().squeeze(1)
                pos = torch.linspace(0, len(idx) - 1, int(k)).round().long() if k else idx[:0]
                kept.append(idx[pos.to(idx.device)])
        return Selection.from_lists(kept, device=valid.device) if kept else Selection.from_mask(valid)

    return select


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [ScorerSpec("random", make_random, description="seeded i.i.d. uniform scores")]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [SelectorSpec("uniform_grid", make_uniform_grid, description="even lattice over the grid")]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "random", "random", "global", "topk",
            description="keep a seeded random subset (baseline)",
        ),
        StrategySpec(
            "uniform", "constant", "global", "uniform_grid",
            description="keep an even lattice over the token grid (baseline)",
        ),
    ]
