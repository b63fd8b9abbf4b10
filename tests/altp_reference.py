"""Test oracles of ALTP's batched kernels: the one-sample rules they must reproduce.

Moved out of ``vtprune.strategies.altp`` (nothing in the package calls them): the quota rule
(``allocate_quotas``, oracle of ``strategies.quotas.allocate_quotas_batched``), the per-region
densities (oracle of ``altp.region_density_batched``), and the per-region farthest-point
kernel (oracle of ``altp.farthest_point_groups``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vtprune.core import ContractError, PruneContext
from vtprune.strategies.altp import DENSITIES
from vtprune.strategies.farthest import farthest_points, unit_rows
from vtprune.strategies.superpixels import normalise_image


def _proportional(total: int, weight: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Split ``total`` units over regions in proportion to ``weight`` with per-region caps.

    Water-filling: a region whose share reaches its cap is fixed at the cap and the rest is
    re-split among the others; then largest-remainder rounding (ties: larger weight, then
    lower id). If every region with weight is full, the rest goes in proportion to the spare
    capacity. Requires 0 <= total <= cap.sum(). Returns int64 [R], summing to ``total``.
    """
    r = cap.shape[0]
    ideal = np.zeros(r, dtype=np.float64)
    fixed = np.zeros(r, dtype=bool)
    wt = np.where(cap > 0, weight, 0.0).astype(np.float64)
    remaining = float(total)
    while remaining > 0:
        act = ~fixed & (cap > 0) & (wt > 0)
        if not act.any():  # all weighted regions are full: fall back to spare capacity
            wt = np.where(~fixed & (cap > 0), cap, 0).astype(np.float64)
            act = wt > 0
            if not act.any():
                break
        share = np.zeros(r, dtype=np.float64)
        share[act] = remaining * wt[act] / wt[act].sum()
        over = act & (share >= cap)
        if not over.any():
            ideal[act] = share[act]
            break
        ideal[over] = cap[over]
        fixed |= over
        remaining = float(total) - float(cap[fixed].sum())
    quotas = np.minimum(np.floor(ideal).astype(np.int64), cap)
    left = int(total - quotas.sum())
    if left > 0:
        frac = ideal - quotas
        eligible = quotas < cap
        # sort by (eligible, fraction, weight) descending, then id ascending
        order = np.lexsort((np.arange(r), -wt, -frac, ~eligible))
        quotas[order[:left]] += 1
    if quotas.sum() != total or (quotas > cap).any():  # pragma: no cover - arithmetic guard
        raise ContractError(f"internal error: quotas {quotas} do not split {total} under caps {cap}")
    return quotas


def allocate_quotas(
    sizes: np.ndarray,
    density: np.ndarray,
    budget: int,
    min_quota: int = 1,
    proportional_to: str = "mass",
) -> np.ndarray:
    """Tokens per region for one sample (int64 [R]); the DDC/DDF rule.

    1. Every non-empty region gets ``min(min_quota, size)``. If that exceeds ``budget``, regions
       are served in order of decreasing density (ties: larger, then lower id) until the
       budget is spent, and the rest get 0.
    2. The remaining budget is split by :func:`_proportional` with caps ``size - base`` and
       weights ``density * size`` (``proportional_to="mass"``, DDF) or ``size`` (``"size"``,
       DDC).

    Quotas sum exactly to ``budget`` and never exceed a region's size.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    density = np.asarray(density, dtype=np.float64)
    if budget < 0 or budget > int(sizes.sum()):
        raise ContractError(f"budget {budget} must lie in [0, {int(sizes.sum())}] (total region size)")
    if min_quota < 0:
        raise ContractError(f"min_quota must be >= 0, got {min_quota}")
    r = sizes.shape[0]
    base = np.minimum(int(min_quota), sizes)
    if int(base.sum()) >= budget:
        order = np.lexsort((np.arange(r), -sizes, -density))
        before = np.cumsum(base[order]) - base[order]
        quotas = np.zeros(r, dtype=np.int64)
        quotas[order] = np.clip(budget - before, 0, base[order])
        return quotas
    weight = density * sizes if proportional_to == "mass" else sizes.astype(np.float64)
    return base + _proportional(budget - int(base.sum()), weight, sizes - base)


def _region_mean(values: torch.Tensor, regions: torch.Tensor, r: int) -> torch.Tensor:
    """Mean of ``values`` [M] per region id in 0..r-1 (``regions`` [M])."""
    total = torch.zeros(r, dtype=torch.float64).index_add_(0, regions, values.double())
    count = torch.bincount(regions, minlength=r).clamp_min(1)
    return total / count


def dispersion(features: torch.Tensor, regions: torch.Tensor, r: int) -> torch.Tensor:
    """Mean (1 - cosine to the region's mean direction) of each region's tokens [r].

    ``features`` [N, D] of one sample, ``regions`` [N] (-1 = ignore). Uses the identity
    sum_i cos(f_i, u_r) = |sum_i f_i / |f_i|| for u_r the mean direction, so the
    dispersion of region r is 1 - |sum of its unit vectors| / size: one index_add, no
    per-token pass.
    """
    f = F.normalize(features.float(), dim=-1)
    bucket = torch.where(regions >= 0, regions, r)  # -1 -> dropped bucket r
    sums = torch.zeros(r + 1, f.shape[1], dtype=f.dtype).index_add_(0, bucket, f)[:r]
    count = torch.bincount(bucket, minlength=r + 1)[:r].clamp_min(1)
    return (1.0 - sums.norm(dim=-1).double() / count).clamp_min(0.0)


def token_gradient_energy(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean squared gradient of the (normalised, grey) image inside each token patch [h * w]."""
    grey = normalise_image(image).astype(np.float32).mean(axis=2) / 255.0  # [H, W]
    gy = np.zeros_like(grey)
    gx = np.zeros_like(grey)
    gy[:-1] = np.diff(grey, axis=0)
    gx[:, :-1] = np.diff(grey, axis=1)
    energy = torch.from_numpy(gy * gy + gx * gx)[None, None]
    return F.adaptive_avg_pool2d(energy, grid).flatten()


def region_density(
    kind: str,
    ctx: PruneContext,
    b: int,
    regions: torch.Tensor,
    valid: torch.Tensor,
    r: int,
    scores: torch.Tensor,
) -> np.ndarray:
    """Density [r] >= 0 of each region of sample ``b`` (one-sample reference of
    :func:`region_density_batched`). ``regions`` [N] (-1 invalid)."""
    reg = regions[valid]
    if kind == "size":
        return np.ones(r)
    if kind == "dispersion":
        d = dispersion(ctx.features[b].detach().cpu(), regions, r)
    elif kind == "gradient":
        assert ctx.image is not None
        d = _region_mean(token_gradient_energy(ctx.image[b], ctx.grid)[valid], reg, r)
    elif kind == "score":
        s = scores[b].detach().cpu().double()[valid]
        d = _region_mean(s - s.min(), reg, r)
    else:
        raise ContractError(f"density must be one of {list(DENSITIES)}, got {kind!r}")
    return np.nan_to_num(d.numpy(), nan=0.0)


def farthest_point_groups_reference(
    features: torch.Tensor, regions: torch.Tensor, quotas: torch.Tensor, priority: torch.Tensor
) -> torch.Tensor:
    """Farthest-point sampling inside every region of every sample, one region at a time
    (the previous CPU kernel of ``spread``, kept as the test oracle).

    Args:
        features: [B, N, D] token features (cosine distance is used).
        regions: [B, N] long region id in 0..R-1, -1 = never pick.
        quotas: [B, R] long tokens to pick per region (<= region size).
        priority: [B, N] float; a region's first pick is its highest-priority token, and
            priority breaks distance ties later (then the lower index wins). NaN counts as 0.

    Returns [B, N] bool (CPU), exactly ``quotas[b, r]`` True entries in region r of sample b.

    Per sample, tokens are sorted once by (region, priority descending, index), so every
    region is a contiguous run whose first row is its first pick and whose order is the tie
    rule; regions kept whole are taken as they are; only the other regions with quota >= 2
    have their rows normalised and run
    :func:`~vtprune.strategies.farthest.farthest_points`. Work is per sample and per region,
    with shapes that do not depend on the batch.
    """
    b, n = regions.shape
    taken = torch.zeros(b, n, dtype=torch.bool)
    if b == 0 or n == 0 or quotas.numel() == 0:
        return taken
    regs = regions.detach().cpu().long().numpy()
    quota_all = quotas.detach().cpu().long().numpy()
    prio_all = torch.nan_to_num(
        priority.detach().cpu().float(), nan=0.0, posinf=3.0e38, neginf=-3.0e38
    ).numpy()
    feats = features.detach().cpu()
    for i in range(b):
        q = quota_all[i]
        if not bool((q > 0).any()):
            continue
        members = np.flatnonzero(regs[i] >= 0)
        reg = regs[i, members]
        if reg.size and int(reg.max()) >= q.shape[0]:
            raise ContractError(f"region id {int(reg.max())} has no quota (quotas has {q.shape[0]} regions)")
        order = members[np.lexsort((members, -prio_all[i, members], reg))]  # by region, prio desc, index
        counts = np.bincount(reg, minlength=q.shape[0])
        if bool((q > counts).any()):
            bad = int(np.flatnonzero(q > counts)[0])
            raise ContractError(
                f"region {bad} of sample {i} has {int(counts[bad])} tokens but quota {int(q[bad])}; "
                "quotas must not exceed region sizes"
            )
        starts = np.cumsum(counts) - counts
        full = q == counts  # regions kept whole: nothing to choose
        picks = [order[np.repeat(full, counts)], order[starts[(q > 0) & ~full]]]  # + first picks
        choose = (q >= 2) & ~full
        multi = np.flatnonzero(choose)
        if multi.size:
            rows = order[np.repeat(choose, counts)]  # sorted rows of regions still picking
            unit = unit_rows(feats[i], torch.from_numpy(rows))
            run_counts = counts[multi]
            run_starts = np.cumsum(run_counts) - run_counts
            for r, s0, size in zip(multi.tolist(), run_starts.tolist(), run_counts.tolist()):
                got = farthest_points(unit[s0 : s0 + size], int(q[r]), 0)
                picks.append(rows[s0 + got[1:]])
        taken[i, torch.from_numpy(np.concatenate(picks))] = True
    return taken

