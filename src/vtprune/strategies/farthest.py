"""Farthest-point sampling on cosine distance: the one kernel behind ALTP's ``spread`` selector
and the ``divprune`` baseline.

One job: given unit feature rows in tie-break order and a first pick, greedily add the row
whose cosine distance (1 - dot product) to its nearest already-picked row is largest. Ties go
to the earlier row, so callers encode their tie rule in the row order (``spread``: score
descending, then lower token index; ``divprune``: token index).

Cost per step is one matrix-vector product through torch (which honours
``torch.set_num_threads``; numpy's BLAS would start its own threads) and three small numpy
ops; when many rows are picked, one Gram matrix up front is cheaper than the products, and
each step then reads one of its rows. Which path runs depends only on the region's own shape,
so a sample's picks never depend on the rest of its batch.
"""

from __future__ import annotations

import numpy as np
import torch

GRAM_RATIO = 6
"""Use one Gram matrix when ``quota * GRAM_RATIO >= rows`` (measured crossover, 1 thread)."""


def unit_rows(features: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Features [M, D] (or the ``rows`` [K] long of them) -> new contiguous float32 unit rows
    [M or K, D] on the CPU. Zero rows stay zero; non-finite entries count as 0 (a row whose
    norm overflows is rescaled first), so every distance is finite (in [0, 2] up to rounding).
    Never modifies ``features``."""
    src = features.detach()
    x = src.index_select(0, rows.to(src.device)) if rows is not None else src
    x = x.to("cpu", torch.float32)
    if x.data_ptr() == src.data_ptr():  # no copy was made: do not normalise the caller's tensor
        x = x.clone()
    norms = torch.linalg.vector_norm(x, dim=-1)  # [M]
    if not bool(torch.isfinite(norms).all()):  # rare: only then pay for a full pass
        x = torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
        norms = torch.linalg.vector_norm(x, dim=-1)
        big = ~torch.isfinite(norms)  # finite entries whose norm overflows: rescale those rows
        if bool(big.any()):
            x[big] = x[big] / x[big].abs().amax(dim=-1, keepdim=True)
            norms = torch.linalg.vector_norm(x, dim=-1)
    return x.div_(norms.clamp_min(1e-12)[:, None]).contiguous()


def farthest_points(unit: torch.Tensor, quota: int, first: int) -> np.ndarray:
    """Greedy max-min picks among the rows of ``unit``.

    Args:
        unit: [S, D] float32 unit rows (see :func:`unit_rows`), in tie-break order.
        quota: rows to pick, 0 <= quota <= S.
        first: row picked first (0 <= first < S when quota > 0).

    Returns int64 [quota]: row positions in pick order, all distinct. Step i picks the
    unpicked row with the largest distance to its nearest picked row (ties: earlier row).
    """
    s = int(unit.shape[0])
    picks = np.empty(quota, dtype=np.int64)
    if quota == 0:
        return picks
    picks[0] = first
    if quota == 1:
        return picks
    gram = (unit @ unit.T).numpy() if quota * GRAM_RATIO >= s else None
    mind = np.empty(s, dtype=np.float32)  # distance of each row to its nearest pick
    dist = np.empty(s, dtype=np.float32)
    p = first
    for i in range(1, quota):
        dot = gram[p] if gram is not None else torch.mv(unit, unit[p]).numpy()
        if i == 1:
            np.subtract(1.0, dot, out=mind)
        else:
            np.subtract(1.0, dot, out=dist)
            np.minimum(mind, dist, out=mind)
        mind[p] = -np.inf  # picked rows never win again (min keeps -inf)
        p = int(mind.argmax())  # first maximum: earlier row on ties
        picks[i] = p
    return picks



# -- batched ------------------------------------------------------------------------------------


def unit_rows_batched(features: torch.Tensor) -> torch.Tensor:
    """[B, N, D] -> new float32 unit rows on the same device; zero rows stay zero, non-finite
    entries count as 0 and rows whose norm overflows are rescaled first (as :func:`unit_rows`)."""
    x = features.detach().float().clone()
    x = torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
    big = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    scaled = x / big  # entries in [-1, 1]: the norm cannot overflow
    norms = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    direct = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    safe = torch.isfinite(direct)
    out = torch.where(safe, x / direct.clamp_min(1e-12), scaled / norms.clamp_min(1e-12))
    return out.contiguous()


def farthest_points_batched(
    unit: torch.Tensor,
    regions: torch.Tensor,
    quotas: torch.Tensor,
    priority: torch.Tensor,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy max-min picks inside every region of every sample, all at once.

    Args:
        unit: [B, N, D] float32 unit rows (:func:`unit_rows_batched`).
        regions: [B, N] long region id 0..R-1, -1 = never pick.
        quotas: [B, R] long picks per region (<= region size; checked by the caller).
        priority: [B, N] float, finite; tie-break order inside a region is priority
            descending, then lower token index.
        first: [B, R] long token index of each region's first pick, or None = the region's
            highest-priority token.

    Returns [B, N] bool: exactly ``quotas[b, r]`` tokens of region r of sample b. Step i picks,
    in every region still short, the token farthest (1 - dot) from its nearest pick (ties:
    earlier in the tie-break order). Iterations = the largest quota (one host read of it).
    """
    b, n, _ = unit.shape
    r = quotas.shape[1]
    dev = unit.device
    quotas = quotas.to(dev)
    member = regions >= 0
    reg = torch.where(member, regions, r)  # [B, N], r = no region
    # tie-break order: by region, priority descending, index ascending (stable sorts)
    by_prio = torch.sort(priority, dim=1, descending=True, stable=True).indices
    order = by_prio.gather(1, torch.sort(reg.gather(1, by_prio), dim=1, stable=True).indices)  # [B, N]
    reg_sorted = reg.gather(1, order)
    counts = torch.zeros(b, r + 1, dtype=torch.long, device=dev).scatter_add_(1, reg, torch.ones_like(reg))
    starts = torch.cumsum(counts, dim=1) - counts  # [B, R+1]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=dev).expand(b, n) - starts.gather(1, reg_sorted))
    q_tok = torch.cat([quotas, torch.zeros(b, 1, dtype=torch.long, device=dev)], 1).gather(1, reg)  # [B, N]
    full_tok = member & (q_tok == counts.gather(1, reg))
    taken = full_tok & (q_tok > 0)
    if first is None:
        first_tok = member & (rank == 0) & (q_tok > 0)
    else:
        first_tok = torch.zeros(b, n, dtype=torch.bool, device=dev)
        has = quotas > 0
        first_tok.scatter_(1, torch.where(has, first.to(dev), 0), has)
        first_tok &= member
    taken |= first_tok
    choosing = member & (q_tok >= 2) & ~full_tok  # [B, N] tokens of regions still picking
    max_q = int(torch.where(choosing, q_tok, 0).max()) if n else 0  # the one host read
    if max_q < 2:
        return taken
    ninf = torch.tensor(-torch.inf, device=dev)
    dims = unit.shape[-1]
    pick = torch.where(first_tok, torch.arange(n, device=dev).expand(b, n), n)  # [B, N]
    pick_of_region = torch.full((b, r + 1), n, dtype=torch.long, device=dev).scatter_reduce_(1, reg, pick, "amin")
    padded = torch.cat([unit, torch.zeros(b, 1, dims, dtype=unit.dtype, device=dev)], 1)  # row n = 0
    mind = torch.full((b, n), torch.inf, device=dev)
    big_rank = n + 1
    for step in range(1, max_q):
        # distance of each token to the newest pick of its region
        p_tok = pick_of_region.gather(1, reg)  # [B, N]
        rows = padded.gather(1, p_tok[..., None].expand(b, n, dims))
        mind = torch.minimum(mind, 1.0 - (unit * rows).sum(dim=-1))
        live = choosing & (q_tok > step) & ~taken
        score = torch.where(live, mind, ninf)
        best = torch.full((b, r + 1), -torch.inf, device=dev).scatter_reduce_(1, reg, score, "amax")
        winner = live & (score == best.gather(1, reg))
        first_rank = torch.full((b, r + 1), big_rank, dtype=torch.long, device=dev).scatter_reduce_(
            1, reg, torch.where(winner, rank, big_rank), "amin"
        )
        chosen = winner & (rank == first_rank.gather(1, reg))  # one per region still picking
        taken |= chosen
        pick_of_region = torch.full((b, r + 1), n, dtype=torch.long, device=dev).scatter_reduce_(
            1, reg, torch.where(chosen, torch.arange(n, device=dev).expand(b, n), n), "amin"
        )
    return taken


__all__ = ["GRAM_RATIO", "farthest_points", "farthest_points_batched", "unit_rows", "unit_rows_batched"]
