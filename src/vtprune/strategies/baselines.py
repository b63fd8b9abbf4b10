"""Baselines: ``random`` (seeded) and ``uniform`` (an even lattice over the token grid).

Two recent benchmarks found both hard to beat; every table vtprune publishes includes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import torch

from ..core import (
    PAD_INDEX,
    Allocation,
    Capabilities,
    PruneContext,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)
from ..core.canvas import block_indices, budget_groups, grid_groups, own_grid_full


def make_random(seed: int = 0) -> Scorer:
    """Scorer ``random``: i.i.d. uniform scores.

    Drawn from ``ctx.generator`` when the context has one (over the whole grid, canvas
    included); otherwise each sample draws from a fresh generator seeded with ``seed``, over
    its own grid, so a sample's choice depends only on (seed, its grid) — reproducible and
    independent of the rest of the batch.
    """

    def score(ctx: PruneContext) -> torch.Tensor:
        b, n = ctx.features.shape[:2]
        if ctx.generator is not None:
            out = torch.rand(b, n, generator=ctx.generator, device=ctx.generator.device)
        else:  # each row draws over its own grid; the canvas elsewhere scores 0
            out = torch.zeros(b, n)
            for (h, w), rows in grid_groups(ctx.row_grids):
                own = torch.rand(h * w, generator=torch.Generator().manual_seed(int(seed)))
                out[rows[:, None], block_indices((h, w), ctx.grid)[None, :]] = own
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


def evenly_spaced_valid(valid: torch.Tensor, budget: torch.Tensor, width: int) -> torch.Tensor:
    """Per sample, ``budget[b]`` of its valid tokens at evenly spaced ranks
    ``round(j * (m - 1) / (k - 1))`` (half to even, as ``torch.linspace(...).round()``), in
    raster order; [B, width] long, -1 past the budget. ``valid`` [B, N], ``budget`` [B]."""
    b, n = valid.shape
    dev = valid.device
    order = torch.sort((~valid).to(torch.uint8), dim=1, stable=True).indices  # valid tokens first
    m = valid.sum(dim=1, keepdim=True)  # [B, 1]
    k = budget.to(dev)[:, None]
    j = torch.arange(width, device=dev)[None, :]
    den = (k - 1).clamp_min(1)
    num = j * (m - 1)
    q = torch.div(num, den, rounding_mode="floor")
    twice_rem = 2 * (num - q * den)
    q = q + ((twice_rem > den) | ((twice_rem == den) & (q % 2 == 1))).long()
    q = torch.where(k > 1, q, 0).clamp(0, max(n - 1, 0))
    picked = order.gather(1, q) if n else q
    return torch.where(j < k, picked, PAD_INDEX)


def make_uniform_grid() -> Selector:
    """Selector ``uniform_grid``: an even lattice of ``budget`` tokens over the grid.

    Samples whose tokens are all valid get :func:`lattice` of their own grid (``ctx.grids``
    on a canvas); a ragged sample takes evenly spaced tokens among its valid ones in raster
    order. Ignores scores; does not support
    region quotas (use ``topk`` with a region allocator instead).
    """

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        valid = ctx.valid_mask()
        budget = alloc.budget.cpu()  # [B] host
        width = int(budget.max()) if budget.numel() else 0
        dev = valid.device
        slot = torch.arange(width)[None, :] < budget[:, None]  # [B, K] host
        # full samples: the lattice of their own grid and budget, placed on the canvas (host
        # tables, one per distinct pair; canvas order keeps the grid's raster order)
        grid_idx = torch.full((len(budget), width), PAD_INDEX, dtype=torch.long)
        for own, k, rows in budget_groups(ctx.row_grids, budget):
            grid_idx[rows, :k] = block_indices(own, ctx.grid)[lattice(*own, k)]
        # ragged samples: evenly spaced among the valid tokens (raster order)
        ragged_idx = evenly_spaced_valid(valid, budget.to(dev), width)
        full = own_grid_full(ctx)[:, None]
        indices = torch.where(full, grid_idx.to(dev), ragged_idx)
        indices = torch.where(slot.to(dev), indices, PAD_INDEX)
        return Selection(indices=indices, counts=budget.clone())

    return select


_ROW_GRIDS = Capabilities(row_grids=True)
"""Both read each row's own grid from ``ctx.grids`` (a canvas is pruned in one call)."""


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [ScorerSpec("random", make_random, _ROW_GRIDS, description="seeded i.i.d. uniform scores")]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [SelectorSpec("uniform_grid", make_uniform_grid, Capabilities(row_grids=True, region_quotas=False),
                         description="even lattice over the grid")]


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
