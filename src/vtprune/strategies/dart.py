"""DART (Wen et al., arXiv 2502.11494; reference code ZichenWen1/DART).

In-LLM, training-free, once before decoder layer K (default 2, the authors' LLaVA setting):

1. pivots: the ``min(pivots, K_b)`` valid visual tokens of largest L1 norm (scorer
   ``l1_norm``, ties to the lower index; default 4, the authors' ``pivot_image_token``), and
   the ``text_pivots`` instruction tokens of largest L1 norm (``ctx.text_features``, real rows
   only; default 4, the authors' ``pivot_text_token``). Instruction pivots take their share of
   visual tokens but are not visual tokens, so they are not kept;
2. the rest of the budget, ``K_b - (image pivots)``, is split evenly over all pivots (the first
   pivots in order — image pivots in raster order, then instruction pivots in sequence order —
   take one more when it does not divide); pivot by pivot, each takes its share of the visual
   tokens *least* similar to it (cosine, ties to the lower index) among those nobody has taken
   yet — tokens that duplicate a pivot are taken last;
3. kept: the image pivots and everything the pivots took, at original positions.

``dart_visual`` is the same with image pivots only (it needs no signal). The loop runs over
the (few, fixed) pivots, each step one batched program over the whole batch; per-sample
budgets and ragged masks work and a sample never sees its batch-mates.

Where our reading differs from the reference code (see docs/strategies.md):

- pivot norm: the reference ranks tokens by the L1 norm of layer K-1's *keys*; vtprune's
  context holds the states entering layer K (visual tokens and instruction), so the norm is
  of those;
- similarity: the reference takes cosines of the hidden states after the model's final RMSNorm;
  we use the raw hidden states (the per-token RMS scale cancels in a cosine, the learned
  per-channel weight does not);
- instruction = the adapter's ``text_features``: the real text after the last image token
  (what the reference's "query" tokens are: everything after the image), compared with the
  visual tokens directly, so both must have one width (always, with vtprune's adapters);
- counts: the reference takes ``max_num_trunction // (image + text pivots)`` tokens per pivot
  on top of the image pivots (4 + 8 * 16 = 132 for "128"); we keep exactly the budget, image
  pivots included;
- pivot order: the reference iterates a Python set of token indices (for small ints,
  ascending: image pivots, then instruction pivots); we use that order explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..core import (
    Allocation,
    Capabilities,
    ContractError,
    Keep,
    PruneContext,
    Schedule,
    Scorer,
    ScorerSpec,
    Selection,
    Selector,
    SelectorSpec,
    StrategySpec,
    hookimpl,
)

PIVOTS = 4
"""The authors' ``pivot_image_token`` for LLaVA-1.5."""


def make_l1_norm() -> Scorer:
    """Scorer ``l1_norm``: L1 norm of each token's feature vector (DART's pivot criterion)."""

    def score(ctx: PruneContext) -> torch.Tensor:
        return torch.linalg.vector_norm(ctx.features.detach(), ord=1, dim=-1, dtype=torch.float32)

    return score


def dart_schedule(num_layers: int, keep: Keep, layer: int = 2) -> Schedule:
    """Prune once before decoder layer ``layer`` (DART's K; default 2, the authors' LLaVA
    setting), keeping ``keep`` of the original visual tokens."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < num_layers:
        raise ContractError(
            f"DART prunes before layer K with 1 <= K < {num_layers} (the model's depth); got "
            f"layer={layer!r}"
        )
    return Schedule.at_layers([(layer, keep)])


def _top_rows(prio: torch.Tensor, ok: torch.Tensor, count: torch.Tensor, width: int) -> torch.Tensor:
    """Per row, the ``count`` entries of highest ``prio`` among ``ok`` (ties to the lower index),
    as their indices in ascending order: [B, width] long, the row length where there is none."""
    b, n = prio.shape
    pos = torch.arange(n, device=prio.device).expand(b, n)
    order = torch.sort(torch.where(ok, prio.float(), -torch.inf), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, pos)
    chosen = ok & (rank < count)
    picked = torch.sort(torch.where(chosen, pos, n), dim=1).values[:, :width]
    if picked.shape[1] < width:  # fewer rows than pivots
        picked = torch.cat([picked, picked.new_full((b, width - picked.shape[1]), n)], dim=1)
    return picked


def dart_select(
    features: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor,
    budget: torch.Tensor,
    pivots: int = PIVOTS,
    text: torch.Tensor | None = None,
    text_valid: torch.Tensor | None = None,
    text_pivots: int = 0,
) -> torch.Tensor:
    """DART for a batch: [B, N] bool, ``budget[b]`` valid tokens kept per row.

    Args:
        features: [B, N, D] (cosine similarity); scores: [B, N] pivot priority (higher first);
        valid: [B, N] bool; budget: [B] long, ``<= valid count``; pivots: image pivots per
        sample (kept). text: [B, T, D] instruction states, text_valid: [B, T] bool (None = all
        real); text_pivots: instruction pivots per sample (largest L1 norm among the real
        rows): they take their share of visual tokens but are not visual tokens themselves.
        ``text`` must have the features' width D (callers check; see :func:`make_dart`).
    """
    b, n, d = features.shape
    dev = features.device
    valid = valid.to(dev)
    k = budget.to(dev).long()[:, None]  # [B, 1]
    pos = torch.arange(n, device=dev).expand(b, n)
    # cosines in float64, rounded to float32: bmm's last-bit differences between batch sizes
    # vanish in the rounding, so a sample's cosines (and ties) are the same alone and in a batch
    wide = features.detach().to(torch.float64 if dev.type != "mps" else torch.float32)  # MPS: no float64
    norms = torch.linalg.vector_norm(wide, dim=-1).clamp_min(1e-12)  # [B, N], as F.normalize

    # image pivots: the top min(pivots, K) valid tokens by score, in raster order
    p_img = torch.clamp(k, max=pivots)  # [B, 1]
    img_at = _top_rows(scores, valid, p_img, pivots)  # [B, pivots], n = none
    is_pivot = torch.zeros(b, n + 1, dtype=torch.bool, device=dev).scatter_(1, img_at, True)[:, :n]
    at = img_at.clamp(max=n - 1)
    rows = [wide.gather(1, at[..., None].expand(-1, -1, d)) / norms.gather(1, at)[..., None]]  # [B, pivots, D] unit
    exists = [torch.arange(pivots, device=dev)[None, :] < p_img]  # [B, pivots]
    use_text = text is not None and text_pivots > 0 and text.shape[1] > 0
    if use_text:
        assert text is not None
        t = text.detach().to(dev)
        t_ok = torch.ones(t.shape[:2], dtype=torch.bool, device=dev) if text_valid is None else text_valid.to(dev)
        t_norm = torch.linalg.vector_norm(t, ord=1, dim=-1, dtype=torch.float32)  # [B, T]
        p_txt = torch.clamp(t_ok.sum(dim=1, keepdim=True), max=text_pivots)
        p_txt = torch.where(k > 0, p_txt, 0)  # nothing to take: no pivots at all
        txt_at = _top_rows(t_norm, t_ok, p_txt, text_pivots)  # [B, text_pivots], T = none
        t_unit = F.normalize(t.to(wide.dtype), dim=-1)
        rows.append(t_unit.gather(1, txt_at.clamp(max=t.shape[1] - 1)[..., None].expand(-1, -1, d)))
        exists.append(torch.arange(text_pivots, device=dev)[None, :] < p_txt)
    piv_unit = torch.cat(rows, dim=1)  # [B, P, D]: image pivots, then instruction pivots
    # every token's cosine to every pivot: one product of the pivots with the transposed rows
    cos_all = (torch.bmm(piv_unit, wide.transpose(1, 2)) / norms[:, None, :]).float()  # [B, P, N]
    piv_exists = torch.cat(exists, dim=1)  # [B, P]
    # the K - (image pivots) other tokens, split evenly over the pivots; the first pivots in
    # order (image pivots in raster order, then instruction pivots) take one more
    n_piv = piv_exists.sum(dim=1, keepdim=True)  # [B, 1]
    extra = k - p_img
    base = extra // n_piv.clamp(min=1)
    rest = extra - base * n_piv.clamp(min=1)
    order_in = piv_exists.long().cumsum(dim=1) - 1  # [B, P] order among existing pivots
    quotas = torch.where(piv_exists, base + (order_in < rest).long(), 0)  # [B, P]

    kept = is_pivot.clone()
    pool = valid & ~is_pivot
    for j in range(piv_unit.shape[1]):
        prio = torch.where(pool, -cos_all[:, j], -torch.inf)
        take_order = torch.sort(prio, dim=1, descending=True, stable=True).indices
        take_rank = torch.empty_like(take_order).scatter_(1, take_order, pos)
        take = pool & (take_rank < quotas[:, j, None])
        kept |= take
        pool &= ~take
    return kept


def _check_count(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ContractError(f"dart: {name} must be an int >= {least}, got {value!r}; the authors use 4")


def make_dart(pivots: int = PIVOTS, text_pivots: int = PIVOTS) -> Selector:
    """Selector ``dart``: image and instruction pivots by L1 norm, then the visual tokens least
    similar to each pivot. Needs ``text_features`` (the instruction's states).

    Args:
        pivots: image pivot tokens per sample (>= 1; default 4, the authors'
            ``pivot_image_token``); kept. A sample whose budget is smaller keeps ``budget``
            pivots and nothing else.
        text_pivots: instruction pivots per sample (>= 0; default 4, the authors'
            ``pivot_text_token``): the real rows of ``ctx.text_features`` of largest L1 norm,
            compared with the visual tokens directly, so the text must have their width (as
            every vtprune adapter supplies it; another width raises ``ContractError``). With 0
            the image pivots take the whole budget.

    Scores are the image pivot priority (scorer ``l1_norm`` in the ``dart`` strategy). Does
    not take region quotas.
    """
    _check_count("pivots", pivots, 1)
    _check_count("text_pivots", text_pivots, 0)
    return _dart_selector("dart", pivots, text_pivots)


def make_dart_visual(pivots: int = PIVOTS) -> Selector:
    """Selector ``dart_visual``: :func:`make_dart` with image pivots only (no signal needed)."""
    _check_count("pivots", pivots, 1)
    return _dart_selector("dart_visual", pivots, 0)


def _dart_selector(name: str, pivots: int, text_pivots: int) -> Selector:
    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        text = ctx.text_features
        if text_pivots and text is not None and text.shape[-1] != ctx.features.shape[-1]:
            raise ContractError(
                f"selector {name!r} compares visual tokens (D={ctx.features.shape[-1]}) with the "
                f"instruction's pivots (D_text={text.shape[-1]}); it needs both in one space — "
                "the LLM's states, as vtprune's adapters supply them — or use 'dart_visual'"
            )
        kept = dart_select(
            ctx.features, scores, ctx.valid_mask(), alloc.budget, pivots,
            ctx.text_features, ctx.text_valid, text_pivots,
        )
        return Selection.from_mask(kept)

    return select


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [ScorerSpec("l1_norm", make_l1_norm, Capabilities(row_grids=True), description="L1 norm of token features")]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec(
            "dart", make_dart,
            Capabilities(needs=frozenset({"text_features"}), text_in_feature_space=True, row_grids=True,
                         region_quotas=False),
            description="image + instruction pivots, then the visual tokens least similar to each",
        ),
        SelectorSpec(
            "dart_visual", make_dart_visual, Capabilities(row_grids=True, region_quotas=False),
            description="image pivots by score, then the tokens least similar to each pivot",
        ),
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "dart", "l1_norm", "global", "dart",
            schedule=dart_schedule,
            description="DART: image + instruction pivots by L1 norm, keep the tokens least duplicating them, before layer K",
            reference="arXiv 2502.11494",
        ),
        StrategySpec(
            "dart_visual", "l1_norm", "global", "dart_visual",
            schedule=dart_schedule,
            description="DART with image pivots only (no instruction signal), before layer K",
            reference="arXiv 2502.11494 (image pivots only)",
        ),
    ]
