"""SparseVLM (Zhang et al., arXiv 2410.04417, ICML 2025; reference code Gumpest/SparseVLMs).

In-LLM, training-free, text-guided, at several layers (the authors' LLaVA-1.5 setting: the
outputs of layers 2, 6 and 15 of 32, scaled to the model's depth, each pruned with the
attention that layer computed):

1. raters (scorer ``text_raters``): the instruction's text tokens relevant to the image rate
   the visual tokens. From ``ctx.text_attention`` [B, heads, T, N] (the instruction rows'
   attention to the visual tokens in the pruned layer, mean over heads = ``A`` [B, T, N]),
   each real row j gets the relevance ``r_j = mean_v A[j, v] / sum_j' A[j', v]`` (every visual
   token spreads a unit of "which instruction token looks at me" over the rows); the raters
   are the rows with ``r_j`` strictly above the mean relevance (every real row when none is).
   A visual token's score is the mean over raters of ``A[j, v]``;
2. selection (selector ``sparsevlm``): the budget K of the point is split into ``k`` top-score
   tokens and ``C`` recycled ones with the authors' recycling rule: of the ``d = n - k``
   deleted tokens (n = tokens alive), the ``m = floor(0.3 d) + 1`` of highest score are
   clustered into ``c(d) = floor(m / 10) + 1`` clusters (:func:`recycled_count`); ``k`` is the
   largest count with ``k + c(n - k) <= K`` and ``C = K - k`` (so ``C = c(n - k)`` except when
   the budget is smaller than ``c(n)``: then every kept slot is recycled);
3. recycling: DPC-kNN clustering of those ``m`` tokens (the authors' ``cluster_and_merge``:
   density from the ``C`` nearest neighbours, distance to the nearest denser token, centres =
   the ``C`` largest density x distance, every token to its nearest centre); each cluster is
   merged (mean) into its centre's slot (``Selection.features``), so the recycled tokens sit at
   their centres' original positions.

Budgets are exact (:func:`sparsevlm_schedule`): the paper's rank-based adaptive count cannot
change a point's budget; ``keep`` fixes the counts of every point and the profile of the
authors' retain-192 table (300 : 200 : 110) shapes them. What is the paper's and what is
ours: docs/strategies.md. Every step is one batched program; a sample never sees its
batch-mates (distances and densities are computed in float64 and rounded to float32, so a
sample's clustering is the same alone and in a batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch

from ..core import (
    PAD_INDEX,
    Allocation,
    Capabilities,
    ContractError,
    Keep,
    PruneContext,
    PrunePoint,
    Schedule,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)
from ..core.schedule import AttentionSource

REFERENCE_DEPTH = 32
AUTHORS_LAYERS = (2, 6, 15)
"""The authors' ``pruning_loc`` for LLaVA-1.5 (32 layers)."""
AUTHORS_COUNTS = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
"""The authors' top-k counts per layer for each "retain" setting (``score.py``, 576 tokens),
before their recycled tokens are added."""
PROFILE = (300, 200, 110)
"""Relative stage sizes for ``budget="average"``: the retain-192 row of :data:`AUTHORS_COUNTS`."""
RATERS = ("mean", "all")
BUDGETS = ("average", "authors")
PLACEMENTS = ("output", "input")


# -- the recycling rule ---------------------------------------------------------------------------


def recycle_candidates(deleted: torch.Tensor) -> torch.Tensor:
    """Deleted tokens that are clustered: ``floor(0.3 d) + 1`` (at most d; 0 for d = 0), the
    authors' "top 30%" (exact integer arithmetic). ``deleted`` [B] long."""
    return torch.where(deleted > 0, torch.minimum(deleted, (3 * deleted) // 10 + 1), 0)


def recycled_count(deleted: torch.Tensor) -> torch.Tensor:
    """Recycled tokens for ``d`` deleted ones: ``floor(m / 10) + 1`` clusters of the
    :func:`recycle_candidates` m (0 when nothing is deleted). [B] long -> [B] long."""
    return torch.where(deleted > 0, recycle_candidates(deleted) // 10 + 1, 0)


def split_budget(
    alive: torch.Tensor, budget: torch.Tensor, recycle: bool = True, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top, recycled)`` counts [B] long (CPU) with ``top + recycled == budget``.

    ``top`` is the largest k <= budget with ``k + recycled_count(alive - k) <= budget``;
    ``recycled = budget - top``. ``alive`` [B]: tokens alive (valid); ``budget`` [B] <= alive;
    ``width``: an upper bound of ``alive`` (N; None reads ``alive.max()``).
    Without ``recycle``: ``(budget, 0)``.
    """
    alive, budget = alive.cpu().long(), budget.cpu().long()
    if not recycle or alive.numel() == 0:
        return budget.clone(), torch.zeros_like(budget)
    n_max = int(alive.max()) if width is None else width
    ks = torch.arange(n_max + 1)[None, :]  # [1, n_max + 1]
    deleted = (alive[:, None] - ks).clamp(min=0)
    total = ks + recycled_count(deleted)
    fits = (ks <= budget[:, None]) & (total <= budget[:, None])
    top = torch.where(fits, ks, 0).amax(dim=1)
    return top, budget - top


# -- scorer ---------------------------------------------------------------------------------------


def rater_scores(
    text_attention: torch.Tensor, text_valid: torch.Tensor | None, valid: torch.Tensor, raters: str = "mean"
) -> torch.Tensor:
    """Scores [B, N] (fp32) of the visual tokens rated by the instruction's raters.

    Args:
        text_attention: [B, heads, T, N] instruction rows -> visual tokens (padding rows may
            be NaN); text_valid: [B, T] bool or None (every row real); valid: [B, N] bool.
        raters: ``"mean"`` (rows of relevance strictly above the mean; all real rows when
            none is) or ``"all"`` (every real row).

    Invalid tokens score 0; a sample without a real instruction row scores 0 everywhere.
    """
    b, _, t, n = text_attention.shape
    dev = text_attention.device
    real = torch.ones(b, t, dtype=torch.bool, device=dev) if text_valid is None else text_valid.to(dev)
    valid = valid.to(dev)
    keep = real[:, None, :, None] & valid[:, None, None, :]
    att = torch.where(keep, text_attention.float(), 0.0).mean(dim=1)  # [B, T, N]
    rows = real
    if raters == "mean":
        column = att.sum(dim=1, keepdim=True)  # [B, 1, N]: all the rows' attention to token v
        share = torch.where(column > 0, att / column.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
        n_valid = valid.sum(dim=1, keepdim=True).clamp(min=1).float()  # [B, 1]
        relevance = share.sum(dim=2) / n_valid  # [B, T]
        n_real = real.sum(dim=1, keepdim=True)
        mean = torch.where(real, relevance, 0.0).sum(dim=1, keepdim=True) / n_real.clamp(min=1).float()
        above = real & (relevance > mean)
        rows = torch.where(above.any(dim=1, keepdim=True), above, real)
    count = rows.sum(dim=1, keepdim=True).clamp(min=1).float()  # [B, 1]
    return torch.where(rows[..., None], att, 0.0).sum(dim=1) / count


def make_text_raters(raters: str = "mean") -> Scorer:
    """Scorer ``text_raters``: the mean attention of the instruction's raters to each visual
    token (``ctx.text_attention``); ``raters`` as in :func:`rater_scores`."""
    if raters not in RATERS:
        raise ContractError(f"sparsevlm: raters must be one of {list(RATERS)}, got {raters!r}")

    def score(ctx: PruneContext) -> torch.Tensor:
        assert ctx.text_attention is not None
        out = rater_scores(ctx.text_attention, ctx.text_valid, ctx.valid_mask(), raters)
        return out.to(ctx.features.device)

    return score


# -- selector -------------------------------------------------------------------------------------


def _round32(x: torch.Tensor) -> torch.Tensor:
    """float64 -> float32: last-bit differences of reductions of other lengths vanish."""
    return x.float()


def cluster_merge(
    x: torch.Tensor, member: torch.Tensor, clusters: torch.Tensor, c_max: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPC-kNN clustering and mean merge of each sample's candidate tokens.

    Args:
        x: [B, M, D] candidates (a sample's real ones first, in priority order);
        member: [B, M] bool, real candidates; clusters: [B] long C_b <= real candidates;
        c_max: ``clusters.max()`` when the caller knows it (None reads it).

    Returns ``(centres [B, Cmax] long positions in 0..M-1 (-1 past C_b), merged [B, Cmax, D]
    float32 means of each cluster, sizes [B, Cmax] long)``. Density of a token = exp(-mean
    squared distance to its C_b nearest candidates, itself included); distance = Euclidean /
    sqrt(D). Ties: a token's "denser" tokens include equal density at a lower position;
    centres by density x distance-to-denser, ties to the lower position; a token joins its
    nearest centre (first = higher-priority centre), a centre itself.
    """
    b, m, d = x.shape
    dev = x.device
    if c_max is None:
        c_max = int(clusters.max()) if b else 0
    xw = x.detach().double()
    sq = (xw * xw).sum(dim=-1)
    dist2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * torch.bmm(xw, xw.transpose(1, 2))).clamp(min=0.0)
    eye = torch.eye(m, dtype=torch.bool, device=dev)[None]
    dist = _round32(torch.where(eye, 0.0, dist2.sqrt() / math.sqrt(d)))  # [B, M, M]
    pair = member[:, :, None] & member[:, None, :]
    c = clusters.to(dev)
    near = torch.where(pair, dist, torch.inf).sort(dim=-1).values[:, :, :c_max].double()  # [B, M, Cmax]
    in_k = torch.arange(c_max, device=dev)[None, None, :] < c[:, None, None]
    mean_sq = torch.where(in_k, near * near, 0.0).sum(dim=-1) / c.clamp(min=1).double()[:, None]
    density = _round32(torch.exp(-mean_sq))  # [B, M]
    pos = torch.arange(m, device=dev)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (pos[None, None, :] < pos[None, :, None])
    )
    denser &= pair
    farthest = torch.where(pair, dist, -torch.inf).flatten(1).amax(dim=1)  # [B]
    delta = torch.where(denser, dist, torch.inf).amin(dim=-1)  # [B, M]
    delta = torch.where(torch.isinf(delta), farthest[:, None], delta)
    prio = torch.where(member, delta * density, -torch.inf)
    order = torch.sort(prio, dim=1, descending=True, stable=True).indices[:, :c_max]  # [B, Cmax]
    has = torch.arange(c_max, device=dev)[None, :] < c[:, None]
    centres = torch.where(has, order, PAD_INDEX)
    to_centre = dist.gather(2, order[:, None, :].expand(b, m, c_max))  # [B, M, Cmax]
    nearest = torch.where(has[:, None, :], to_centre, torch.inf).argmin(dim=-1)  # [B, M]
    own = torch.full((b, m), c_max, dtype=torch.long, device=dev)
    own.scatter_(1, order, torch.arange(c_max, device=dev).expand(b, c_max))
    is_centre = torch.zeros(b, m, dtype=torch.bool, device=dev).scatter_(1, order, has)
    slot = torch.where(is_centre, own, nearest)
    slot = torch.where(member & (c[:, None] > 0), slot, c_max)  # the rest: a discard slot
    sums = torch.zeros(b, c_max + 1, d, dtype=torch.float32, device=dev)
    sums.scatter_add_(1, slot[..., None].expand(b, m, d), x.float())
    sizes = torch.zeros(b, c_max + 1, dtype=torch.long, device=dev)
    sizes.scatter_add_(1, slot, torch.ones(b, m, dtype=torch.long, device=dev))
    merged = sums[:, :c_max] / sizes[:, :c_max].clamp(min=1)[..., None].float()
    return centres, merged, sizes[:, :c_max]


def sparsevlm_select(
    features: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, budget: torch.Tensor, recycle: bool = True
) -> Selection:
    """SparseVLM's selection for a batch (see the module docstring).

    Args:
        features: [B, N, D] token states (clustered and merged); scores: [B, N], higher =
            kept first (ties to the lower index); valid: [B, N] bool; budget: [B] long (CPU).
        recycle: False keeps the top ``budget`` tokens only (no recycling).

    Returns the kept top tokens and recycled centres in ascending order, with replacement
    features: the top tokens' own states, each centre's cluster mean (input dtype).
    """
    b, n, d = features.shape
    dev = features.device
    valid = valid.to(dev)
    alive = valid.sum(dim=1).cpu()  # the one device read
    budget = budget.cpu().long()
    top_n, rec_n = split_budget(alive, budget, recycle, width=n)
    cand_n = torch.where(rec_n > 0, recycle_candidates(alive - top_n), 0)
    # every width this call needs, from host tensors in one read
    k_max, m_max, c_max = torch.stack([budget.max(), cand_n.max(), rec_n.max()]).tolist() if b else (0, 0, 0)
    pos = torch.arange(n, device=dev).expand(b, n)
    prio = torch.where(valid, scores.float(), -torch.inf)
    order = torch.sort(prio, dim=1, descending=True, stable=True).indices  # [B, N]
    rank = torch.empty_like(order).scatter_(1, order, pos)
    kept = valid & (rank < top_n.to(dev)[:, None])
    centre_of = torch.full((b, n + 1), -1, dtype=torch.long, device=dev)  # token -> its cluster
    merged = torch.zeros(b, 1, d, dtype=torch.float32, device=dev)
    sizes = torch.zeros(b, 1, dtype=torch.long, device=dev)
    if m_max > 0:
        # candidates: the deleted tokens of highest score = the next ranks after the top ones
        ranks = top_n[:, None] + torch.arange(m_max)[None, :]  # [B, M] (CPU)
        member = (torch.arange(m_max)[None, :] < cand_n[:, None]).to(dev)
        cand = order.gather(1, ranks.clamp(max=n - 1).to(dev))  # [B, M] token indices
        x = features.gather(1, cand[..., None].expand(b, m_max, d))
        centres, merged, sizes = cluster_merge(x, member, rec_n, c_max)
        has = centres >= 0
        tokens = torch.where(has, cand.gather(1, centres.clamp(min=0)), n)  # [B, Cmax]; n = none
        ids = torch.arange(centres.shape[1], device=dev).expand_as(centres)
        centre_of.scatter_(1, tokens, torch.where(has, ids, -1))
    centre_of = centre_of[:, :n]
    kept = kept | (centre_of >= 0)  # centres are deleted tokens: K_b slots in all
    order2 = torch.where(kept, pos, pos + n).argsort(dim=1)[:, :k_max]  # kept first, ascending
    real = torch.arange(k_max, device=dev)[None, :] < budget.to(dev)[:, None]
    indices = torch.where(real, order2, PAD_INDEX)
    idx = torch.where(real, order2, 0)
    out = features.gather(1, idx[..., None].expand(b, k_max, d))
    cluster = centre_of.gather(1, idx)  # [B, K]
    use = real & (cluster >= 0)
    if m_max > 0:
        pick = merged.gather(1, cluster.clamp(min=0)[..., None].expand(b, k_max, d)).to(features.dtype)
        grown = sizes.gather(1, cluster.clamp(min=0)) > 1
        out = torch.where((use & grown)[..., None], pick, out)
    out = torch.where(real[..., None], out, torch.zeros((), dtype=features.dtype, device=dev))
    return Selection(indices=indices, counts=budget.clone(), features=out)


def make_sparsevlm(recycle: bool = True) -> Selector:
    """Selector ``sparsevlm``: top tokens by score plus recycled (clustered, merged) deleted
    tokens, exactly the budget (:func:`sparsevlm_select`). ``recycle=False``: top-k only.
    Does not take region quotas."""
    if not isinstance(recycle, bool):
        raise ContractError(f"sparsevlm: recycle must be True or False, got {recycle!r}")

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        return sparsevlm_select(ctx.features, scores, ctx.valid_mask(), alloc.budget, recycle)

    return select


# -- schedule -------------------------------------------------------------------------------------


def sparsevlm_layers(num_layers: int) -> list[int]:
    """The authors' layers 2 / 6 / 15 of 32 scaled to ``num_layers`` (rounded half up):
    4 layers -> [0, 1, 2], 8 -> [1, 2, 4], 40 -> [3, 8, 19]."""
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ContractError(f"num_layers must be a positive int, got {num_layers!r}")
    layers = [int(math.floor(v * num_layers / REFERENCE_DEPTH + 0.5)) for v in AUTHORS_LAYERS]
    if len(set(layers)) != len(layers) or layers[-1] >= num_layers:
        raise ContractError(
            f"SparseVLM's layers 2/6/15 of 32 collide on a {num_layers}-layer model ({layers}); "
            "pass layers=[...] explicitly (strictly increasing, each in 0..num_layers-1)"
        )
    return layers


def _check_layers(num_layers: int, layers: Sequence[int] | None) -> list[int]:
    out = sparsevlm_layers(num_layers) if layers is None else [int(v) for v in layers]
    if not out or out != sorted(set(out)) or out[0] < 0 or out[-1] >= num_layers:
        raise ContractError(
            f"SparseVLM layers must be strictly increasing in 0..{num_layers - 1}, got {list(out)}"
        )
    return out


def _check_profile(profile: Sequence[float], stages: int) -> list[Fraction]:
    try:
        shares = [Fraction(repr(float(v))) for v in profile]
    except (TypeError, ValueError):
        shares = []
    if len(shares) != stages or shares[0] <= 0 or any(v < 0 for v in shares) or any(
        b > a for a, b in zip(shares, shares[1:])
    ):
        raise ContractError(
            f"sparsevlm profile must be {stages} non-increasing numbers, the first > 0 (one per "
            f"layer), got {profile!r}; the default is the authors' {PROFILE}"
        )
    return [v / shares[0] for v in shares]


def prune_points(
    num_layers: int, layers: Sequence[int] | None, placement: str = "output"
) -> tuple[list[int], AttentionSource]:
    """The prune-point layers for SparseVLM's ``layers`` and the attention that scores them.

    ``placement="output"`` (the authors' code): layer l's *output* is pruned with the attention
    layer l computed, i.e. a point before layer l + 1 with ``attention="previous"``
    (2 / 6 / 15 of 32 -> points before 3 / 7 / 16). ``"input"``: layer l's input is pruned
    with layer l's attention recomputed on it (a point before l, ``attention="current"``).
    """
    if placement not in PLACEMENTS:
        raise ContractError(f"sparsevlm placement must be one of {list(PLACEMENTS)}, got {placement!r}")
    out = _check_layers(num_layers, layers)
    if placement == "input":
        return out, "current"
    if out[-1] >= num_layers - 1:
        raise ContractError(
            f"sparsevlm placement='output' prunes the output of layer {out[-1]}, but layer "
            f"{num_layers - 1} is the model's last: choose layers below {num_layers - 1}, or "
            "placement='input'"
        )
    return [v + 1 for v in out], "previous"


def max_average_keep(
    num_layers: int, layers: Sequence[int] | None = None, profile: Sequence[float] = PROFILE, placement: str = "output"
) -> float:
    """Largest ``budget="average"`` keep: ``sum_i(len_i * p_i) / (L - k1)`` over the prune
    points k_i (0.547 on 32 layers: points 3 / 7 / 16)."""
    bounds, _ = prune_points(num_layers, layers, placement)
    p = _check_profile(profile, len(bounds))
    lengths = [b2 - b1 for b1, b2 in zip(bounds, [*bounds[1:], num_layers])]
    return float(sum(n * v for n, v in zip(lengths, p)) / sum(lengths))


def authors_counts(retain: int, original: int = 576) -> list[int]:
    """The authors' visual-token counts after each layer for a "retain" setting: their top-k
    count plus their recycled tokens, chained (192 -> [309, 204, 113] of 576)."""
    if retain not in AUTHORS_COUNTS:
        raise ContractError(
            f"sparsevlm budget='authors' takes keep in {sorted(AUTHORS_COUNTS)} (the authors' "
            f"settings for 576 tokens), got {retain!r}; use budget='average' for any other keep"
        )
    out, alive = [], original
    for k in AUTHORS_COUNTS[retain]:
        alive = k + int(recycled_count(torch.tensor([alive - k]))[0])
        out.append(alive)
    return out


def sparsevlm_schedule(
    num_layers: int,
    keep: Keep,
    layers: Sequence[int] | None = None,
    profile: Sequence[float] = PROFILE,
    budget: str = "average",
    placement: str = "output",
) -> Schedule:
    """Prune the output of each of ``layers`` (default :func:`sparsevlm_layers`) scored with
    the attention that layer computed, as the authors' code does (points before l + 1,
    ``attention="previous"``); ``placement="input"`` prunes their inputs with their own
    attention recomputed (:func:`prune_points`).

    ``budget="average"`` (default): ``keep`` is the mean share of the original visual tokens
    over the layers from the first point to the last layer (as FastV's and PyramidDrop's
    default), stage i keeping ``k * p_i`` with ``p`` = ``profile`` / ``profile[0]`` (default
    the authors' 300 : 200 : 110); an int ``keep`` is a mean count (each stage rounded half
    up). A ``keep`` above :func:`max_average_keep` raises. ``budget="authors"``: ``keep`` is
    one of the authors' settings 192 / 128 / 96 / 64 and the counts are theirs
    (:func:`authors_counts`, for 576 tokens). ``keep=1.0`` keeps every token in both.
    """
    if budget not in BUDGETS:
        raise ContractError(f"sparsevlm budget must be one of {list(BUDGETS)}, got {budget!r}")
    bounds, source = prune_points(num_layers, layers, placement)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ContractError(f"keep must be an int count or a float ratio, got {keep!r}")
    if isinstance(keep, float) and keep == 1.0:
        return Schedule.at_layers([(v, 1.0) for v in bounds], attention=source)
    if budget == "authors":
        if len(bounds) != 3 or not isinstance(keep, int):
            raise ContractError(
                f"sparsevlm budget='authors' takes an int keep in {sorted(AUTHORS_COUNTS)} and 3 "
                f"layers, got keep={keep!r}, layers={bounds}"
            )
        return Schedule.at_layers(list(zip(bounds, authors_counts(keep))), attention=source)
    p = _check_profile(profile, len(bounds))
    lengths = [b2 - b1 for b1, b2 in zip(bounds, [*bounds[1:], num_layers])]
    span, weight = Fraction(sum(lengths)), sum((n * v for n, v in zip(lengths, p)), Fraction(0))
    if isinstance(keep, int):
        if keep < 0:
            raise ContractError(f"keep={keep} tokens must be >= 0")
        counts = [math.floor(keep * span * v / weight + Fraction(1, 2)) for v in p]
        return Schedule(tuple(PrunePoint(v, c) for v, c in zip(bounds, counts)), attention=source)
    if not math.isfinite(keep) or not 0.0 <= keep <= 1.0:
        raise ContractError(f"keep ratio must be a finite float in [0, 1], got {keep!r}")
    first = Fraction(repr(float(keep))) * span / weight
    if first > 1 + Fraction(1, 10**12):
        limit = weight / span
        raise ContractError(
            f"sparsevlm budget='average': keep={keep} asks for a mean of {keep:.1%} of the visual "
            f"tokens from layer {bounds[0]} on, so the first layer would keep {float(first):.1%}; "
            f"with this profile the mean is at most {float(limit):.1%} (keep <= "
            f"{math.floor(limit * 10**4) / 10**4}); lower keep, flatten profile, or use keep=1.0"
        )
    first = min(first, Fraction(1))
    return Schedule(tuple(PrunePoint(v, float(first * s)) for v, s in zip(bounds, p)), attention=source)


# -- registration ---------------------------------------------------------------------------------


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [
        ScorerSpec(
            "text_raters",
            make_text_raters,
            Capabilities(needs=frozenset({"text_attention"}), row_grids=True),
            description="mean attention of the instruction's rater tokens (relevance above the mean)",
        )
    ]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec(
            "sparsevlm",
            make_sparsevlm,
            Capabilities(merges=True, row_grids=True, region_quotas=False),
            description="top tokens + deleted tokens recycled by DPC-kNN clustering (exact budget)",
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "sparsevlm", "text_raters", "global", "sparsevlm",
            schedule=sparsevlm_schedule,
            description=(
                "SparseVLM: instruction raters' attention prunes the outputs of layers 2/6/15 of 32, "
                "deleted tokens recycled into cluster means (keep = mean over the pruned layers)"
            ),
            reference="arXiv 2410.04417",
        )
    ]
