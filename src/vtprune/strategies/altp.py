"""ALTP (arXiv 2503.23959) — our reconstruction; see docs/altp.md for what is the paper's and
what is ours.

Stages, each registered on its own so hybrids can reuse them:

- scorer ``distinct``: 1 - cosine of each token to its sample's mean valid feature.
- allocator ``ddc`` (Detail Density Capture): SLIC superpixels of ``ctx.image`` mapped onto the
  token grid are the regions; every non-empty region gets ``min_quota`` tokens (densest regions
  first when the budget is too small for all); the rest of the budget goes to regions in
  proportion to their size.
- allocator ``ddf`` (Dynamic Density Formation): DDC's regions and minimum quotas, the rest in
  proportion to density x size ("information mass"), density = ``"dispersion"`` (default),
  ``"gradient"``, ``"score"`` or ``"size"``.
- selector ``spread``: inside each region, farthest-point sampling on cosine distance of the
  features, starting from the region's best-scoring token; honours quotas exactly.

Strategies: ``altp`` = distinct + ddf + spread; ``altp_ddc`` = distinct + ddc + spread. Both
prune before the LLM (the default schedule), survivors keep their original positions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..core import (
    Allocation,
    Allocator,
    AllocatorSpec,
    Capabilities,
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
from ..core.canvas import on_own_grids
from .farthest import (
    CPU_CHUNK_BYTES,
    farthest_points,
    farthest_points_batched,
    farthest_points_grouped,
    unit_rows,
    unit_rows_batched,
)
from .quotas import allocate_quotas_batched
from .superpixels import (
    BACKENDS,
    PATCH_PIXELS,
    normalise_image,
    resolve_backend,
    slic_factor,
    token_regions_counted,
)

DENSITIES = ("dispersion", "gradient", "score", "size")


# -- scorer -------------------------------------------------------------------------------------


def make_distinct() -> Scorer:
    """Scorer ``distinct``: 1 - cosine similarity of each token to the mean of its sample's
    valid token features, in [0, 2]. Signal-free; invalid tokens score 0."""

    def score(ctx: PruneContext) -> torch.Tensor:
        valid = ctx.valid_mask()  # [B, N]
        x = ctx.features.detach().float()  # [B, N, D]
        if x.shape[0] == 0:
            return torch.zeros(valid.shape, dtype=torch.float32, device=x.device)
        if x.device.type != "cpu":  # accelerators: the whole batch in one program
            return distinct_batched(x, valid.to(x.device))
        # CPU: one sample at a time, all three passes over its rows back to back (they stay
        # in cache: one pass from memory per sample instead of two), and matrix-vector
        # products with the same shapes alone or in a batch: a batched matmul may round
        # differently at different batch sizes, and a sample's scores must not depend on its
        # batch-mates
        return torch.stack([_distinct_one(x[b], valid[b]) for b in range(x.shape[0])])

    return score


def distinct_batched(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`_distinct_one` for every sample at once: ``x`` [B, N, D] float, ``valid`` [B, N]
    -> [B, N] on ``x``'s device, no host read. Only row-wise products and per-sample sums, so
    no sample's arithmetic spans its batch-mates (no batched matmul); equal to the CPU kernel
    up to float rounding (tests: 1e-5)."""
    norms = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)  # [B, N]
    total = ((valid.to(x.dtype) / norms)[..., None] * x).sum(dim=1)  # [B, D]: sum of valid unit rows
    dots = torch.linalg.vecdot(x, total[:, None, :])  # [B, N]
    cos = dots / torch.linalg.vector_norm(total, dim=-1, keepdim=True).clamp_min(1e-12) / norms
    return torch.where(valid, 1.0 - cos, 0.0)


def _distinct_one(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """1 - cosine of each row of ``x`` [N, D] to the sum of its ``valid`` [N] unit rows; 0 on
    invalid rows -> [N]."""
    norms = x.norm(dim=-1).clamp_min(1e-12)  # [N]
    mean = (valid.float() / norms) @ x  # [D]: the sum of the valid unit vectors
    cos = x @ mean / mean.norm().clamp_min(1e-12) / norms
    return torch.where(valid, 1.0 - cos, 0.0)


# -- quota arithmetic (pure numpy, one sample) ---------------------------------------------------


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


# -- densities (one sample) -----------------------------------------------------------------------


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


def _region_sums(values: torch.Tensor, regions: torch.Tensor, r: int) -> torch.Tensor:
    """Per-region sums of ``values`` [B, N] (-1 regions dropped) -> [B, r]; feature rows:
    :func:`_unit_region_sums`."""
    bucket = torch.where(regions >= 0, regions, r)  # [B, N]; bucket r collects invalid tokens
    shape = (values.shape[0], r + 1)
    return torch.zeros(shape, dtype=values.dtype, device=values.device).scatter_add_(1, bucket, values)[:, :r]


def _unit_region_sums(x: torch.Tensor, regions: torch.Tensor, r: int) -> torch.Tensor:
    """Per-region sums of the unit rows of ``x`` [B, N, D] float32 (``regions`` [B, N], -1
    dropped) -> [B, r, D], as :func:`dispersion` sums one sample's: rows added in token order
    (``index_add_``), so a sample's sums never depend on its batch-mates. On the CPU the
    normalised rows are made a few samples at a time (about ``CPU_CHUNK_BYTES``): a fresh
    batch-sized copy (37 MB at 16 x 576 x 1024) cost more in page faults than the arithmetic;
    on accelerators the whole batch is one chunk."""
    b, n, dim = x.shape
    step = b if x.device.type != "cpu" else max(1, CPU_CHUNK_BYTES // max(1, n * dim * 4))
    bucket = torch.where(regions >= 0, regions, r).to(x.device)  # [B, N]; bucket r: invalid tokens
    out = torch.zeros(b * (r + 1), dim, dtype=torch.float32, device=x.device)
    for lo in range(0, b, max(1, step)):
        hi = min(b, lo + step)
        ids = (bucket[lo:hi] + (torch.arange(lo, hi, device=x.device) * (r + 1))[:, None]).reshape(-1)
        out.index_add_(0, ids, F.normalize(x[lo:hi], dim=-1).reshape(-1, dim))
    return out.view(b, r + 1, dim)[:, :r]


def token_gradient_energy_batched(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Mean squared gradient of each (min-max normalised, quantised, grey) image inside each
    token patch: [B, C, H, W] -> [B, h * w] float64, on the images' device."""
    x = torch.nan_to_num(images.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    x = x[:, [c % x.shape[1] for c in range(3)]]  # one channel -> three
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    span = torch.where(hi > lo, hi - lo, 1.0)
    q = torch.clamp((x - lo) * (255.0 / span) + 0.5, 0.0, 255.0).floor()  # the uint8 levels
    q = torch.where(hi > lo, q, 0.0)
    grey = q.mean(dim=1) / 255.0  # [B, H, W]
    gy = torch.zeros_like(grey)
    gx = torch.zeros_like(grey)
    gy[:, :-1] = grey[:, 1:] - grey[:, :-1]
    gx[:, :, :-1] = grey[:, :, 1:] - grey[:, :, :-1]
    energy = (gy * gy + gx * gx)[:, None]
    return F.adaptive_avg_pool2d(energy, grid).flatten(1).double()


def token_energy(ctx: PruneContext) -> torch.Tensor:
    """:func:`token_gradient_energy_batched` of ``ctx.image`` on each row's own grid (a
    canvas row: from its own pixels, 0 off its block): [B, N] float64."""
    assert ctx.image is not None
    if ctx.grids is None:
        return token_gradient_energy_batched(ctx.image, ctx.grid)
    return on_own_grids(
        ctx.image, ctx.grids, ctx.grid, lambda pixels, grid, _: token_gradient_energy_batched(pixels, grid),
        0.0, torch.float64,
    )


def region_density_batched(
    kind: str, ctx: PruneContext, regions: torch.Tensor, r: int, scores: torch.Tensor
) -> torch.Tensor:
    """Density [B, r] >= 0 of every region of every sample; ``regions`` [B, N] (-1 = invalid
    token, or padding region id of a shorter row). NaN densities count as 0."""
    valid = regions >= 0
    count = _region_sums(valid.double(), regions, r).clamp_min(1)  # [B, r]
    if kind == "size":
        return torch.ones_like(count)
    if kind == "dispersion":
        sums = _unit_region_sums(ctx.features.detach().float(), regions, r)  # [B, r, D]
        d = (1.0 - sums.norm(dim=-1).double() / count).clamp_min(0.0)
    elif kind == "gradient":
        assert ctx.image is not None
        energy = token_energy(ctx).to(regions.device)
        d = _region_sums(torch.where(valid, energy, 0.0), regions, r) / count
    elif kind == "score":
        s = scores.detach().double().to(regions.device)
        low = torch.where(valid, s, torch.inf).amin(dim=1, keepdim=True)
        d = _region_sums(torch.where(valid, s - low, 0.0), regions, r) / count
    else:
        raise ContractError(f"density must be one of {list(DENSITIES)}, got {kind!r}")
    return torch.nan_to_num(d, nan=0.0)


# -- allocators ----------------------------------------------------------------------------------


def _check_params(
    n_segments: int | None, segment_ratio: float, compactness: float, min_quota: int, density: str, backend: str
) -> None:
    if n_segments is not None and (
        not isinstance(n_segments, int) or isinstance(n_segments, bool) or n_segments < 1
    ):
        raise ContractError(f"n_segments must be a positive int or None (auto), got {n_segments!r}")
    if not (isinstance(segment_ratio, (int, float)) and 0 < segment_ratio <= 16):
        raise ContractError(f"segment_ratio must be a number in (0, 16], got {segment_ratio!r}")
    if not (isinstance(compactness, (int, float)) and compactness > 0):
        raise ContractError(f"compactness must be > 0, got {compactness!r}")
    if not isinstance(min_quota, int) or isinstance(min_quota, bool) or min_quota < 0:
        raise ContractError(f"min_quota must be an int >= 0, got {min_quota!r}")
    if density not in DENSITIES:
        raise ContractError(f"density must be one of {list(DENSITIES)}, got {density!r}")
    if backend not in BACKENDS:
        raise ContractError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def segments_for(budget: int, valid_count: int, n_segments: int | None, segment_ratio: float) -> int:
    """SLIC segments asked for: ``n_segments``, or ``round(segment_ratio * budget)`` when None;
    at least 1 and at most the number of valid tokens."""
    n = n_segments if n_segments is not None else int(round(segment_ratio * budget))
    return max(1, min(n, max(valid_count, 1)))


def make_region_allocator(
    proportional_to: str,
    n_segments: int | None,
    segment_ratio: float,
    compactness: float,
    min_quota: int,
    density: str,
    backend: str,
    patch_pixels: int | None,
) -> Allocator:
    """Shared body of ``ddc`` (``proportional_to="size"``) and ``ddf`` (``"mass"``)."""
    _check_params(n_segments, segment_ratio, compactness, min_quota, density, backend)
    resolve_backend(backend)  # fail at build time if a named backend is missing
    slic_factor((1, 1), (1, 1), patch_pixels)  # validates patch_pixels

    def allocate(ctx: PruneContext, scores: torch.Tensor) -> Allocation:
        if ctx.image is None:
            raise ContractError(
                "the DDC/DDF allocators need ctx.image (the image the vision encoder saw)"
            )
        dev = ctx.features.device
        valid = ctx.valid_mask().to(dev)  # [B, N]
        budget = ctx.budget  # [B] long on the host (contract)
        counts = ctx.valid_counts.cpu()
        # rows with nothing to choose (keep 0 or keep all) get one region of every valid token
        trivial = (budget == 0) | (budget == counts)
        segs = [segments_for(int(k), int(c), n_segments, segment_ratio) for k, c in zip(budget.tolist(), counts.tolist())]
        found, width = token_regions_counted(
            ctx.image, ctx.grid, segs, valid, compactness, backend, patch_pixels, ctx.grids
        )
        regions = torch.where(trivial.to(dev)[:, None], torch.where(valid, 0, -1), found.to(dev))  # [B, N]
        r = max(1, width)  # quota width, known on the host: unused ids get size and quota 0
        sizes = _region_sums(valid.long(), regions, r)  # [B, R]
        dens = region_density_batched(density, ctx, regions, r, scores)
        quotas = allocate_quotas_batched(sizes, dens, budget.to(dev), min_quota, proportional_to)
        return Allocation(budget=budget.clone(), regions=regions, quotas=quotas)

    return allocate


def make_ddc(
    n_segments: int | None = None,
    segment_ratio: float = 0.5,
    compactness: float = 10.0,
    min_quota: int = 1,
    density: str = "dispersion",
    backend: str = "auto",
    patch_pixels: int | None = PATCH_PIXELS,
) -> Allocator:
    """Allocator ``ddc``: superpixel regions, ``min_quota`` per region, rest by region size.

    Args:
        n_segments: SLIC segments; None = ``round(segment_ratio * budget)`` per sample.
        segment_ratio: segments per kept token when ``n_segments`` is None (default 0.5).
        compactness: SLIC compactness (default 10; colour vs space trade-off).
        min_quota: tokens every region keeps while the budget allows (default 1).
        density: ranks regions when they outnumber the budget (default ``"dispersion"``).
        backend: ``"auto"`` (fast-slic if installed, else scikit-image), ``"fast_slic"``,
            ``"skimage"``.
        patch_pixels: SLIC runs on the image block-mean downscaled so that a token patch is
            about this many pixels wide (default 3: 336 px / 24 tokens -> a quarter of the
            resolution, 84 x 84; it was 7 = half resolution); None = full resolution.
    """
    return make_region_allocator(
        "size", n_segments, segment_ratio, compactness, min_quota, density, backend, patch_pixels
    )


def make_ddf(
    n_segments: int | None = None,
    segment_ratio: float = 0.5,
    compactness: float = 10.0,
    min_quota: int = 1,
    density: str = "dispersion",
    backend: str = "auto",
    patch_pixels: int | None = PATCH_PIXELS,
) -> Allocator:
    """Allocator ``ddf``: DDC's regions and minimum quotas, the rest of the budget in proportion
    to density x region size, largest-remainder rounding, no quota above its region's size.

    ``density``: ``"dispersion"`` (default; mean 1 - cosine of the region's token features to
    their mean direction), ``"gradient"`` (mean squared pixel gradient inside the region),
    ``"score"`` (mean scorer output, shifted to >= 0), ``"size"`` (= DDC). Other parameters
    as :func:`make_ddc`.
    """
    return make_region_allocator(
        "mass", n_segments, segment_ratio, compactness, min_quota, density, backend, patch_pixels
    )


# -- selector ----------------------------------------------------------------------------------


def farthest_point_groups(
    features: torch.Tensor, regions: torch.Tensor, quotas: torch.Tensor, priority: torch.Tensor
) -> torch.Tensor:
    """Farthest-point sampling inside every region of every sample: ``spread``'s CPU kernel,
    :func:`~vtprune.strategies.farthest.farthest_points_grouped` (all regions of all samples
    advance together). Same arguments and result as :func:`farthest_point_groups_reference`,
    the per-region oracle it is tested against (same picks on tie-free inputs)."""
    return farthest_points_grouped(features, regions, quotas, priority)


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


def make_spread() -> Selector:
    """Selector ``spread``: per region, farthest-point sampling on cosine feature distance,
    starting from the region's highest-scoring token (scores also break distance ties);
    exactly ``quotas[b, r]`` tokens in region r. Without regions the whole sample is one
    region with quota = budget."""

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        dev = ctx.features.device
        valid = ctx.valid_mask().to(dev)
        if alloc.regions is None or alloc.quotas is None:
            regions = torch.where(valid, 0, -1).long()
            quotas = alloc.budget.to(dev).long()[:, None]
        else:
            regions = alloc.regions.to(dev).long()
            quotas = alloc.quotas.to(dev).long()
        prio = torch.nan_to_num(scores.detach().float().to(dev), nan=0.0, posinf=3.0e38, neginf=-3.0e38)
        if dev.type == "cpu":  # all regions together, one row-wise product per sample and step
            taken = farthest_point_groups(ctx.features, regions, quotas, torch.where(valid, prio, -3.0e38))
        else:  # accelerators: every sample and region in one program, no host loop
            taken = farthest_points_batched(unit_rows_batched(ctx.features), regions, quotas, prio)
        return Selection.from_mask(taken)

    return select


# -- registration -------------------------------------------------------------------------------

_REGIONS = Capabilities(needs=frozenset({"image"}), row_grids=True, regions=True)
"""DDC / DDF segment each row's own pixels on its own grid (``ctx.grids``); densities and
quotas read tokens through their regions only."""


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [ScorerSpec("distinct", make_distinct, Capabilities(row_grids=True), description="1 - cosine to the sample's mean feature")]


@hookimpl
def vtprune_allocators() -> Iterable[AllocatorSpec]:
    return [
        AllocatorSpec(
            "ddc", make_ddc, _REGIONS,
            description="SLIC regions, >= min_quota each, rest by region size (ALTP DDC)",
        ),
        AllocatorSpec(
            "ddf", make_ddf, _REGIONS,
            description="DDC regions, rest by density x size (ALTP DDF)",
        ),
    ]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec("spread", make_spread, Capabilities(row_grids=True), description="farthest-point sampling inside each region"),
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "altp", "distinct", "ddf", "spread",
            # Chosen on the grounding stand-in's val split (docs/grounding.md, "Choosing
            # ALTP's parameters"): the highest mean GCG mIoU over keep 0.25 and 0.1.
            params={"density": "score"},
            description="ALTP: superpixel regions (DDC) + density-driven quotas (DDF), spread picks",
            reference="arXiv 2503.23959 (reconstruction, docs/altp.md)",
        ),
        StrategySpec(
            "altp_ddc", "distinct", "ddc", "spread",
            description="ALTP with DDC only: superpixel regions, quotas by region size",
            reference="arXiv 2503.23959 (reconstruction, docs/altp.md)",
        ),
    ]
