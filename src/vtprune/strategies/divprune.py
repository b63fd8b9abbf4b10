"""Baseline ``divprune``: greedy max-min diversity on token features (DivPrune, Alvar et al.,
CVPR 2025, arXiv 2503.02175), cosine distance, no model signal.

The selected set grows one token at a time; each step adds the valid token whose cosine
distance to its nearest already-selected token is largest (ties: lower index). The first token
is the one farthest (cosine) from the sample's mean valid feature. Budgets equal to the valid
count keep everything without running the loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..core import (
    Allocation,
    ContractError,
    PruneContext,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)


def max_min_diverse(features: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Greedy max-min selection for a batch.

    Args:
        features: [B, N, D]; valid: [B, N] bool; budget: [B] long (<= valid count).

    Returns [B, N] bool, ``budget[b]`` True entries per row, only on valid tokens.
    """
    b, n, _ = features.shape
    f = F.normalize(features.float(), dim=-1)
    taken = torch.zeros(b, n, dtype=torch.bool, device=f.device)
    k = budget.to(f.device)
    steps = int(k.max()) if b else 0
    if steps == 0:
        return taken
    rows = torch.arange(b, device=f.device)
    neg = torch.tensor(float("-inf"), device=f.device)
    mean = F.normalize((f * valid[..., None]).sum(dim=1), dim=-1)  # [B, D]
    mind = 1.0 - (f * mean[:, None, :]).sum(dim=-1)  # first pick: farthest from the mean
    for step in range(steps):
        active = step < k  # [B] samples still picking
        key = torch.where(valid & ~taken, mind, neg)
        pick = key.argmax(dim=1)  # first maximum = lowest index on ties
        taken[rows[active], pick[active]] = True
        d = 1.0 - torch.bmm(f, f[rows, pick][:, :, None]).squeeze(2)  # [B, N]
        mind = d if step == 0 else torch.minimum(mind, d)
    return taken


def make_divprune() -> Selector:
    """Selector ``divprune``: greedy max-min cosine diversity (ignores scores; no quotas)."""

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        if alloc.regions is not None:
            raise ContractError(
                "selector 'divprune' does not support region quotas; compose it with the "
                "'global' allocator"
            )
        valid = ctx.valid_mask()
        budget = alloc.budget.to(valid.device)
        keep_all = budget == valid.sum(dim=1)
        budget = torch.where(keep_all, 0, budget)
        feats = ctx.features.detach()
        # one sample at a time: batched products round differently, and with tied distances
        # that would make a sample's choice depend on the rest of its batch
        taken = torch.cat(
            [max_min_diverse(feats[b : b + 1], valid[b : b + 1], budget[b : b + 1]) for b in range(len(budget))]
        ) if len(budget) else valid.clone()
        taken = torch.where(keep_all[:, None], valid, taken)
        return Selection.from_mask(taken)

    return select


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [SelectorSpec("divprune", make_divprune, description="greedy max-min cosine diversity")]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "divprune", "constant", "global", "divprune",
            description="DivPrune: greedy max-min feature diversity (baseline, signal-free)",
            reference="arXiv 2503.02175",
        )
    ]
