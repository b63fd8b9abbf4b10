"""DDC / DDF quotas for a whole batch at once: one tensor program over [B, R], no host loop.

The rule (its one-sample numpy statement is the test oracle, ``tests/altp_reference.py``),
restated with sorts and cumulative sums:

1. every non-empty region gets ``min(min_quota, size)`` (``base``); when that exceeds the
   budget, regions are served by decreasing density (then size, then lower id) until it runs
   out;
2. otherwise the rest is water-filled in proportion to ``weight`` (density x size for DDF,
   size for DDC) under the caps ``size - base``: the water level is found in closed form by
   sorting regions by ``cap / weight`` (the level at which each one fills); if every weighted
   region fills, the remainder goes in proportion to spare capacity;
3. largest-remainder rounding, ties to the larger weight, then the lower id.

The result equals the reference exactly except where two real-valued shares differ by a few
ulps (the reference sums with numpy, this with torch), see tests/test_quotas.py.
"""

from __future__ import annotations

import torch


def _desc_order(*keys: torch.Tensor) -> torch.Tensor:
    """Row-wise permutation sorting by ``keys[0]`` descending, ties by ``keys[1]`` descending,
    ..., remaining ties by position ascending (stable sorts, least significant key first)."""
    b, r = keys[0].shape
    order = torch.arange(r, device=keys[0].device).expand(b, r)
    for key in reversed(keys):
        idx = torch.sort(key.gather(1, order), dim=1, descending=True, stable=True).indices
        order = order.gather(1, idx)
    return order


def _water_fill(total: torch.Tensor, weight: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real-valued split of ``total`` [B] over regions in proportion to ``weight`` [B, R]
    (float64, >= 0) under ``cap`` [B, R] (float64). Returns (ideal [B, R], the weights that
    break rounding ties [B, R]: ``weight``, or spare capacity where the fallback applied)."""
    wt = torch.where(cap > 0, weight, 0.0)
    active = wt > 0
    # the water level at which each region fills is cap / weight; logs cannot overflow
    level_at = torch.where(active, cap.log() - torch.where(active, wt, 1.0).log(), torch.inf)
    order = torch.sort(level_at, dim=1, stable=True).indices
    cap_s, wt_s = cap.gather(1, order), wt.gather(1, order)
    act_s = active.gather(1, order)
    cap_before = torch.cumsum(torch.where(act_s, cap_s, 0.0), dim=1) - torch.where(act_s, cap_s, 0.0)
    wt_after = wt_s.flip(1).cumsum(1).flip(1)  # weight of this region and all later ones
    share = (total[:, None] - cap_before) * wt_s / torch.where(wt_after > 0, wt_after, 1.0)
    fills_s = act_s & (share >= cap_s)  # as the reference: share >= cap -> fixed at its cap
    fills_s = fills_s & (fills_s.long().cumprod(dim=1) > 0)  # the filled set is a prefix
    fills = torch.zeros_like(fills_s).scatter(1, order, fills_s)
    remaining = total - torch.where(fills, cap, 0.0).sum(dim=1)  # [B]
    open_w = torch.where(active & ~fills, wt, 0.0)
    open_sum = open_w.sum(dim=1)
    ideal = torch.where(fills, cap, remaining[:, None] * open_w / torch.where(open_sum > 0, open_sum, 1.0)[:, None])
    # every weighted region full and units left: the rest in proportion to spare capacity
    fallback = (open_sum <= 0) & (remaining > 0)
    spare = torch.where(~fills & (cap > 0), cap, 0.0)
    spare_sum = spare.sum(dim=1)
    spare_share = remaining[:, None] * spare / torch.where(spare_sum > 0, spare_sum, 1.0)[:, None]
    ideal = torch.where(fallback[:, None] & (spare > 0), spare_share, ideal)
    ideal = torch.where((total > 0)[:, None], ideal, 0.0)
    tie_weight = torch.where(fallback[:, None], spare, wt)
    return ideal, tie_weight


def _largest_remainder(total: torch.Tensor, ideal: torch.Tensor, cap: torch.Tensor, tie_weight: torch.Tensor) -> torch.Tensor:
    """Integer quotas [B, R] summing to ``total`` [B]: floors of ``ideal``, then one more for
    the largest fractions among regions below their cap (ties: larger weight, lower id)."""
    quotas = torch.minimum(torch.floor(ideal).long(), cap.long())
    left = total.long() - quotas.sum(dim=1)  # [B]
    frac = ideal - quotas
    eligible = (quotas < cap.long()).double()
    order = _desc_order(eligible, frac, tie_weight)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return quotas + (rank < left[:, None]).long()


def allocate_quotas_batched(
    sizes: torch.Tensor,
    density: torch.Tensor,
    budget: torch.Tensor,
    min_quota: int = 1,
    proportional_to: str = "mass",
) -> torch.Tensor:
    """Tokens per region for every sample: the DDC/DDF rule on a batch.

    Args:
        sizes: [B, R] long, tokens per region (0 for padding regions of shorter rows).
        density: [B, R] float, >= 0 (ranks regions when they outnumber the budget; DDF's
            weight is density x size).
        budget: [B] long, 0 <= budget <= sizes.sum(1) (checked by the caller).
        min_quota: tokens every non-empty region keeps while the budget allows.
        proportional_to: ``"mass"`` (DDF) or ``"size"`` (DDC).

    Returns [B, R] long on ``sizes``' device: quotas summing to ``budget``, none above its
    region's size. Rows never interact.
    """
    sizes = sizes.long()
    density = density.double()
    budget = budget.to(sizes.device).long()
    base = torch.clamp(sizes, max=int(min_quota))  # [B, R]
    base_total = base.sum(dim=1)
    # 1. too many regions for the budget: densest (then larger, then lower id) first
    order = _desc_order(density, sizes.double())
    base_o = base.gather(1, order)
    before = torch.cumsum(base_o, dim=1) - base_o
    served = torch.clamp(budget[:, None] - before, min=0)
    served = torch.minimum(served, base_o)
    short = torch.zeros_like(base).scatter(1, order, served)
    # 2. enough for every base: water-fill the rest by weight under the caps
    weight = density * sizes if proportional_to == "mass" else sizes.double()
    cap = (sizes - base).double()
    rest = (budget - base_total).clamp(min=0).double()
    ideal, tie_weight = _water_fill(rest, weight, cap)
    filled = base + _largest_remainder(rest, ideal, cap, tie_weight)
    return torch.where((base_total >= budget)[:, None], short, filled)


__all__ = ["allocate_quotas_batched"]
