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
    farthest_points_batched,
    farthest_points_grouped,
    unit_rows_batched,
)
from .quotas import allocate_quotas_batched
from .superpixels import (
    BACKENDS,
    PATCH_PIXELS,
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


# -- densities -------------------------------------------------------------------------------------


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
            resolution, 84 x 84); None = full resolution.
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
    advance together). Tested against a per-region oracle (``tests/altp_reference.py``; same
    picks on tie-free inputs)."""
    return farthest_points_grouped(features, regions, quotas, priority)


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
