"""Baseline ``divprune``: greedy max-min diversity on token features (DivPrune, Alvar et al.,
CVPR 2025, arXiv 2503.02175), cosine distance, no model signal.

The selected set grows one token at a time; each step adds the valid token whose cosine
distance to its nearest already-selected token is largest (ties: lower index). The first token
is the one farthest (cosine) from the sample's mean valid feature. Budgets equal to the valid
count keep everything without running the loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

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
from .farthest import (
    NORM_LIMIT,
    farthest_points,
    farthest_points_batched,
    farthest_points_raw,
    unit_rows,
    unit_rows_batched,
)


def max_min_diverse(features: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Greedy max-min selection, one sample at a time (the CPU kernel).

    Args:
        features: [B, N, D]; valid: [B, N] bool; budget: [B] long (<= valid count).

    Returns [B, N] bool (on ``features``' device), ``budget[b]`` True entries per row, only
    on valid tokens: the picks of :func:`max_min_diverse_reference` (same on tie-free inputs)
    without its normalised copy of the rows: the products run on the sample's rows as they
    are (a view when every token is valid) and are divided by the norms, computed once
    (:func:`~vtprune.strategies.farthest.farthest_points_raw`). Samples with non-finite
    features or huge norms take the reference path. Shapes depend only on the sample.
    """
    b, n, _ = features.shape
    taken = torch.zeros(b, n, dtype=torch.bool)
    ks = budget.detach().cpu().tolist()
    ok = valid.detach().cpu()
    feats = features.detach().cpu()
    for i in range(b):
        k = int(ks[i])
        if k == 0:
            continue
        rows = ok[i].nonzero().squeeze(1)
        if k > rows.numel():
            raise ContractError(f"budget {k} exceeds the {rows.numel()} valid tokens of sample {i}")
        x = feats[i] if rows.numel() == n else feats[i].index_select(0, rows)
        x = x.float()
        norms = torch.linalg.vector_norm(x, dim=-1).numpy()
        if not np.isfinite(norms).all() or float(norms.max()) > NORM_LIMIT:
            got = max_min_diverse_reference(feats[i : i + 1], ok[i : i + 1], budget[i : i + 1].cpu())[0]
            taken[i] = got.cpu()
            continue
        norms = np.maximum(norms, np.float32(1e-12))
        inv = torch.from_numpy(1.0 / norms)
        total = inv @ x  # [D]: the sum of the unit rows
        cos = (x @ (total / total.norm().clamp_min(1e-12))).numpy() / norms
        first = int(np.argmax(1.0 - cos))  # first maximum: lower index
        taken[i, rows[torch.from_numpy(farthest_points_raw(x, norms, k, first))]] = True
    return taken.to(features.device)


def max_min_diverse_reference(features: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """Greedy max-min selection, one sample at a time, on normalised copies of the rows (the
    previous CPU kernel, kept as the test oracle of :func:`max_min_diverse`).

    Args:
        features: [B, N, D]; valid: [B, N] bool; budget: [B] long (<= valid count).

    Returns [B, N] bool (on ``features``' device), ``budget[b]`` True entries per row, only
    on valid tokens. The kernel is :func:`~vtprune.strategies.farthest.farthest_points` over
    the sample's valid rows in index order (so ties go to the lower index), first pick = the
    row farthest (cosine) from the normalised sum of the unit rows. Shapes depend only on the
    sample, so its picks are the same alone and in a batch.
    """
    b, n, _ = features.shape
    taken = torch.zeros(b, n, dtype=torch.bool)
    ks = budget.detach().cpu().tolist()
    ok = valid.detach().cpu()
    for i in range(b):
        k = int(ks[i])
        if k == 0:
            continue
        rows = ok[i].nonzero().squeeze(1)
        if k > rows.numel():
            raise ContractError(f"budget {k} exceeds the {rows.numel()} valid tokens of sample {i}")
        unit = unit_rows(features[i], rows)
        mean = F.normalize(unit.sum(dim=0), dim=0)
        first = int(np.argmax(1.0 - torch.mv(unit, mean).numpy()))  # first maximum: lower index
        taken[i, rows[torch.from_numpy(farthest_points(unit, k, first))]] = True
    return taken.to(features.device)


def max_min_diverse_batched(features: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """:func:`max_min_diverse_reference` (the one-sample reference) for a whole batch at once: one
    region per sample, ties to the lower index, first pick = the valid row farthest (cosine)
    from the normalised sum of the sample's valid unit rows. [B, N] bool on ``features``'
    device; iterations = the largest budget."""
    dev = features.device
    valid = valid.to(dev)
    unit = unit_rows_batched(features)  # [B, N, D]
    mean = F.normalize((unit * valid[..., None]).sum(dim=1), dim=-1)  # [B, D]
    far = torch.where(valid, 1.0 - (unit * mean[:, None, :]).sum(dim=-1), -torch.inf)  # [B, N]
    first = far.argmax(dim=1, keepdim=True)  # first maximum: the lower index
    regions = torch.where(valid, 0, -1)
    quotas = budget.to(dev).long()[:, None]
    return farthest_points_batched(unit, regions, quotas, torch.zeros_like(far), first=first)


def make_divprune() -> Selector:
    """Selector ``divprune``: greedy max-min cosine diversity (ignores scores; no quotas)."""

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        valid = ctx.valid_mask()
        budget = alloc.budget.to(valid.device)
        keep_all = budget == valid.sum(dim=1)
        budget = torch.where(keep_all, 0, budget)
        if valid.device.type == "cpu":  # per-sample BLAS products on cache-resident rows
            taken = max_min_diverse(ctx.features.detach(), valid, budget)
        else:  # accelerators: the whole batch in one program
            taken = max_min_diverse_batched(ctx.features.detach(), valid, budget)
        taken = torch.where(keep_all[:, None], valid, taken)
        return Selection.from_mask(taken)

    return select


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [SelectorSpec("divprune", make_divprune, Capabilities(row_grids=True, region_quotas=False), description="greedy max-min cosine diversity")]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "divprune", "constant", "global", "divprune",
            description="DivPrune: greedy max-min feature diversity (baseline, signal-free)",
            reference="arXiv 2503.02175",
        )
    ]
