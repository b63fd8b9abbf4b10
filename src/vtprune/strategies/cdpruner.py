"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity
for Token Pruning in MLLMs", arXiv 2506.10967; reference code Theia-4869/CDPruner).

Before the LLM, keep the visual tokens that maximise the determinant of a *conditional* DPP
kernel ``L = diag(q) S diag(q)``: ``S`` the cosine similarity of the visual tokens, ``q`` each
token's relevance to the instruction, min-max normalised per sample (``+1e-6``, as the
reference). The subset is found by the fast greedy MAP inference of Chen et al. (NeurIPS 2018):
each step adds the token with the largest remaining conditional variance ``d_i^2`` and updates
every token's Cholesky row with one product against the new token's features.

Two stages, each usable alone (docs/strategies.md):
- scorer ``instruction_relevance``: mean cosine of a visual token with the real instruction
  tokens (``ctx.text_features``, rows masked by ``ctx.text_valid``). The reference compares
  CLIP image and text embeddings and, for LLaVA, negates that similarity; our adapters give the
  instruction as the LLM's own states (the space of the projected visual tokens), where we
  keep the sign (``negate=True`` reproduces the reference's).
- selector ``dpp``: the conditional-DPP greedy MAP with ``q`` = the min-max-normalised scores
  of any scorer (e.g. ``attention``: the reference's attention variant), optionally sharpened
  by ``theta`` (``q <- exp(theta / (2 (1 - theta)) q)``, the reference's commented option).
  With regions, picks stop in a region once its quota is met. When no remaining token adds
  variance (``d^2 <= 1e-6``: more picks than the features' rank), the rest are filled by
  quality, highest first; the reference would take a square root of a non-positive number.

Batched: one step per kept token of the largest budget, every sample at once, no host reads.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..core import (
    PAD_INDEX,
    Allocation,
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

EPS = 1e-6
"""Conditional variance below which a token adds nothing to the determinant (float32
round-off of exhausted directions is ~1e-7; qualities are <= 1 without ``theta``)."""


def unit_rows_no_read(x: torch.Tensor) -> torch.Tensor:
    """[..., D] -> float32 unit rows without a host read: non-finite entries count as 0, rows
    are scaled by their largest entry first (no overflow), zero rows stay zero."""
    x = torch.nan_to_num(x.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    x = x / x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def make_instruction_relevance(negate: bool = False) -> Scorer:
    """Scorer ``instruction_relevance``: mean cosine of each visual token with the real rows of
    ``ctx.text_features`` (needs D_text == D: the instruction in the visual tokens' space)."""
    if not isinstance(negate, bool):
        raise ContractError(f"negate must be True or False, got {negate!r}")

    def score(ctx: PruneContext) -> torch.Tensor:
        assert ctx.text_features is not None
        text = ctx.text_features
        if text.shape[-1] != ctx.features.shape[-1]:
            raise ContractError(
                f"instruction_relevance compares visual tokens (D={ctx.features.shape[-1]}) with "
                f"the instruction (D_text={text.shape[-1]}); it needs both in one space — the "
                "adapters supply the LLM's states for both"
            )
        dev = ctx.features.device
        real = torch.ones(text.shape[:2], dtype=torch.bool, device=dev) if ctx.text_valid is None else ctx.text_valid.to(dev)
        # mean_t cos(v, t) = v_unit . mean_t t_unit: one [B, D] direction per sample, and
        # row-wise products (not bmm), so a token's score is the same alone and in a batch
        weight = real.float() / real.sum(dim=1, keepdim=True).clamp_min(1)  # [B, T]
        text_unit = torch.where(real[..., None], unit_rows_no_read(text.to(dev)), 0.0)
        direction = (text_unit * weight[..., None]).sum(dim=1)  # [B, D]
        relevance = (unit_rows_no_read(ctx.features) * direction[:, None, :]).sum(dim=-1)
        return -relevance if negate else relevance

    return score


def quality(scores: torch.Tensor, valid: torch.Tensor, theta: float | None) -> torch.Tensor:
    """Per-sample min-max normalisation of ``scores`` [B, N] over valid tokens, ``+1e-6`` (the
    reference's), then ``exp(alpha q)`` with ``alpha = theta / (2 (1 - theta))`` if ``theta``."""
    s = torch.nan_to_num(scores.detach().float(), nan=0.0, posinf=3.0e38, neginf=-3.0e38)
    lo = torch.where(valid, s, torch.inf).amin(dim=1, keepdim=True)
    hi = torch.where(valid, s, -torch.inf).amax(dim=1, keepdim=True)
    span = hi - lo
    q = torch.where(span > 0, (s - lo + 1e-6) / torch.where(span > 0, span, 1.0), 1.0)
    if theta is not None:
        q = torch.exp(theta / (2.0 * (1.0 - theta)) * q)
    return torch.where(valid, q, 0.0)


def greedy_dpp(
    unit: torch.Tensor,
    q: torch.Tensor,
    budget: torch.Tensor,
    steps: int,
    regions: torch.Tensor | None = None,
    quotas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fast greedy MAP of the DPP with kernel ``L = diag(q) (unit unit^T) diag(q)``.

    Args:
        unit: [B, N, D] unit rows. q: [B, N] quality, 0 on tokens never to pick.
        budget: [B] long on ``unit``'s device; ``steps`` = its maximum (a host int).
        regions / quotas: optional [B, N] / [B, R]: at most ``quotas[b, r]`` picks in region r.

    Returns [B, steps] long: row b holds its ``budget[b]`` picks in pick order, then -1.
    Every step is one batched program; a sample's picks never depend on its batch-mates.
    """
    b, n, _ = unit.shape
    dev = unit.device
    rows = torch.arange(b, device=dev)
    wide = unit.double() if dev.type != "mps" else unit  # MPS has no float64
    allowed = q > 0
    d2 = torch.where(allowed, q * q, -torch.inf)  # diag(L), as unit rows have norm 1 (or 0)
    chol = torch.zeros(steps, b, n, device=dev)
    picks = torch.full((b, steps), PAD_INDEX, dtype=torch.long, device=dev)
    left = None if quotas is None else quotas.to(dev).clone()
    reg = None if regions is None else regions.to(dev).clamp_min(0)
    for step in range(steps):
        open_ = allowed if left is None or reg is None else allowed & (left.gather(1, reg) > 0)
        key = torch.where(open_ & (d2 > EPS), d2, torch.where(open_, q - 2.0, -torch.inf))
        j = key.argmax(dim=1)  # [B]; the first maximum: lower index on ties
        active = step < budget  # [B]
        gain = d2[rows, j]
        useful = active & (gain > EPS)
        # L[j, :]: a float64 vector-matrix product per sample, rounded to float32 — the kernel
        # bmm picks can depend on the batch, and float64 makes its last-bit differences vanish
        # in the rounding, so a sample's row (and its tie-breaks) is the same alone and in a batch.
        # Row vector times the transposed rows, not rows times a column: the latter is a
        # batched gemv on the CPU, several times slower (docs/benchmarks.md §2d)
        sim = torch.bmm(wide[rows, j][:, None, :], wide.transpose(1, 2))[:, 0].float()
        row = sim * q * q[rows, j][:, None]
        known = (chol[:step, rows, j][:, :, None] * chol[:step]).sum(dim=0)  # [B, N]
        e = (row - known) / gain.clamp_min(EPS).sqrt()[:, None]
        e = torch.where(useful[:, None], e, 0.0)
        chol[step] = e
        d2 = d2 - e * e
        picks[:, step] = torch.where(active, j, PAD_INDEX)
        taken = torch.zeros(b, n, dtype=torch.bool, device=dev).scatter_(1, j[:, None], active[:, None])
        allowed = allowed & ~taken
        d2 = torch.where(taken, -torch.inf, d2)
        if left is not None and reg is not None:
            left = left.scatter_add(1, reg.gather(1, j[:, None]), -active.long()[:, None])
    return picks


def picks_to_selection(picks: torch.Tensor, counts: torch.Tensor) -> Selection:
    """Picks [B, K] (-1 padded) -> a :class:`Selection` with ascending indices; ``counts`` [B]
    host long (the budgets the picks were made for; the contract check verifies them)."""
    past = torch.iinfo(torch.long).max
    ordered = torch.where(picks >= 0, picks, past).sort(dim=1).values
    return Selection(indices=torch.where(ordered == past, PAD_INDEX, ordered), counts=counts.clone())


def make_dpp(theta: float | None = None) -> Selector:
    """Selector ``dpp``: conditional-DPP greedy MAP, quality from the scores (module doc)."""
    if theta is not None and not (isinstance(theta, (int, float)) and 0.0 < theta < 1.0):
        raise ContractError(f"theta must be None or a number in (0, 1), got {theta!r}")

    def select(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
        dev = ctx.features.device
        valid = ctx.valid_mask().to(dev)
        steps = int(alloc.budget.max()) if alloc.budget.numel() else 0  # host tensor
        q = quality(scores.to(dev), valid, theta)
        picks = greedy_dpp(
            unit_rows_no_read(ctx.features), q, alloc.budget.to(dev), steps, alloc.regions, alloc.quotas
        )
        return picks_to_selection(picks, alloc.budget)

    return select


# -- registration -------------------------------------------------------------------------------


@hookimpl
def vtprune_scorers() -> Iterable[ScorerSpec]:
    return [
        ScorerSpec(
            "instruction_relevance",
            make_instruction_relevance,
            Capabilities(needs=frozenset({"text_features"}), text_in_feature_space=True, row_grids=True),
            description="mean cosine of a visual token with the instruction's tokens",
        )
    ]


@hookimpl
def vtprune_selectors() -> Iterable[SelectorSpec]:
    return [
        SelectorSpec(
            "dpp",
            make_dpp,
            Capabilities(row_grids=True),
            description="conditional-DPP greedy MAP: quality from scores, diversity from cosine",
        )
    ]


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "cdpruner", "instruction_relevance", "global", "dpp",
            description="conditional DPP over visual tokens, quality = relevance to the instruction",
            reference="arXiv 2506.10967",
        )
    ]
