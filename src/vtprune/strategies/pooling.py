"""Baseline ``pool``: uniform average pooling of the token grid into exactly ``budget`` cells.

A merging method: each kept slot carries the mean feature of its cell
(``Selection.features``); its index is the cell's representative token, the member nearest
the cell's centre (ties: lower index), so positions stay meaningful.

Cells: the grid's rows are cut into ``kh`` even bands (kh ≈ sqrt(budget · h / w)); band i is
cut into ``c_i`` even column groups with ``sum(c_i) == budget`` (the first ``budget % kh``
bands get one more). Every cell is non-empty and the count is exact for any budget. A
sample with invalid tokens (ragged batch, or an in-LLM prune point) pools its valid tokens in
raster order into ``budget`` runs of near-equal length instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import torch

from ..core import (
    Allocation,
    Capabilities,
    ContractError,
    PruneContext,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)


@lru_cache(maxsize=256)
def grid_cells(h: int, w: int, k: int) -> torch.Tensor:
    """Cell id 0..k-1 of every token of an h x w grid ([h*w] long), ``k`` even cells."""
    n = h * w
    if not 1 <= k <= n:
        raise ContractError(f"pooling into {k} cells needs 1 <= k <= {n} tokens")
    kh = round(math.sqrt(k * h / w))
    kh = max(-(-k // w), min(kh, h, k), 1)
    base, extra = divmod(k, kh)
    cells = torch.empty(h, w, dtype=torch.long)
    first = 0
    for band in range(kh):
        r0, r1 = band * h // kh, (band + 1) * h // kh
        c = base + (1 if band < extra else 0)
        col_cell = torch.arange(w) * c // w  # even split of the w columns into c groups
        cells[r0:r1] = first + col_cell[None, :]
        first += c
    return cells.flatten()


def run_cells(valid: torch.Tensor, k: int) -> torch.Tensor:
    """Cells for a ragged sample: the valid tokens in raster order cut into ``k`` runs of
    near-equal length; invalid tokens get -1. ``valid`` [N] bool."""
    out = torch.full(valid.shape, -1, dtype=torch.long)
    m = int(valid.sum())
    if k:
        out[valid] = torch.arange(m) * k // m
    return out


def _representatives(cells: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Per cell, the member token nearest the cell's mean (row, col) -> [k] token indices."""
    h, w = grid
    members = (cells >= 0).nonzero().squeeze(1)
    cid = cells[members]
    rows, cols = (members // w).double(), (members % w).double()
    cnt = torch.bincount(cid, minlength=k).double()
    my = torch.zeros(k, dtype=torch.float64).index_add_(0, cid, rows) / cnt
    mx = torch.zeros(k, dtype=torch.float64).index_add_(0, cid, cols) / cnt
    dist = (rows - my[cid]) ** 2 + (cols - mx[cid]) ** 2
    best = torch.full((k,), float("inf"), dtype=torch.float64).scatter_reduce(0, cid, dist, reduce="amin")
    cand = dist == best[cid]
    big = h * w
    return torch.full((k,), big, dtype=torch.long).scatter_reduce(
        0, cid, torch.where(cand, members, torch.full_like(members, big)), reduce="amin"
    )


def make_pool() -> Selector:
    """Selector ``pool``: average-pool the grid into ``budget`` cells (merging).

    Returns replacement features [B, K, D] (cell means, computed in float32, cast back to the
    input dtype) for the representative indices. Does not take region quotas.
    """

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        if alloc.regions is not None:
            raise ContractError(
                "selector 'pool' does not support region quotas; compose it with the 'global' "
                "allocator"
            )
        valid = ctx.valid_mask().detach().cpu()
        feats = ctx.features
        kept: list[torch.Tensor] = []
        merged: list[torch.Tensor] = []
        for b, k in enumerate(alloc.budget.cpu().tolist()):
            k = int(k)
            if k == 0:
                kept.append(torch.zeros(0, dtype=torch.long))
                merged.append(feats.new_zeros(0, feats.shape[2]))
                continue
            if bool(valid[b].all()):
                cells = grid_cells(*ctx.grid, k)
            else:
                cells = run_cells(valid[b], k)
            members = cells >= 0
            cid = cells[members].to(feats.device)
            sums = torch.zeros(k, feats.shape[2], dtype=torch.float32, device=feats.device)
            sums.index_add_(0, cid, feats[b][members.to(feats.device)].float())
            counts = torch.bincount(cid, minlength=k).clamp_min(1).to(sums.dtype)
            merged.append((sums / counts[:, None]).to(feats.dtype))
            kept.append(_representatives(cells, ctx.grid, k).to(feats.device))
        return Selection.from_lists(kept, merged, device=feats.device)

    return select


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec(
            "pool", make_pool, Capabilities(merges=True),
            description="average-pool the grid into budget cells (merging)",
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "pool", "constant", "global", "pool",
            description="uniform average pooling of the grid into budget cells (baseline, merging)",
        )
    ]
