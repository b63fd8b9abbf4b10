"""Issue #24 §2: the kit without blind spots at real sizes.

Each broken stage here is a plausible plugin bug. ``byte_counts`` (wrong from 256 kept tokens)
and ``half_precision_positions`` (wrong past 2048 tokens) passed the default kit before: its
budget sweep stopped at 10 valid tokens and hypothesis draws at most 144 tokens. The in-LLM one
was caught before too, but only through rare draws: most in-LLM contexts had no earlier-pruned
token or a zero budget. The default run must catch every one of them.
"""

from __future__ import annotations

import torch

from vtprune.conformance_tests import check_strategy
from vtprune.core import Capabilities, PruneContext, Selection, Strategy
from vtprune.core.types import Allocation
from vtprune.strategies import stages


def _strategy(name: str, selector, scorer=None, **caps) -> Strategy:
    return Strategy(name=name, scorer=scorer or stages.make_feature_norm(), allocator=stages.make_global(),
                    selector=selector, capabilities=Capabilities(**caps))


def _rows(ctx: PruneContext, alloc: Allocation, pick) -> Selection:
    """A selection from ``pick(valid_positions [m] long, k) -> chosen positions``, per sample."""
    valid = ctx.valid_mask()
    mask = torch.zeros_like(valid)
    for b in range(ctx.batch_size):
        rows = valid[b].nonzero().squeeze(1)
        mask[b, pick(rows, int(alloc.budget[b]))] = True
    return Selection.from_mask(mask)


def byte_counts(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
    """Top-k with the per-sample counts kept in uint8 (wraps past 255 kept tokens)."""
    k = alloc.budget.to(torch.uint8).long()
    return _rows(ctx, Allocation(budget=k), lambda rows, m: rows[:m])


def half_precision_positions(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
    """The last k valid tokens, their positions computed in float16 (exact only up to 2048)."""
    def pick(rows: torch.Tensor, k: int) -> torch.Tensor:
        m = rows.numel()
        return rows[torch.arange(m, dtype=torch.float16)[m - k:].long().clamp(max=m - 1)]
    return _rows(ctx, alloc, pick)


def padding_inside_the_llm(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
    """Correct before the LLM; inside it (``ctx.layer`` set), when the budget is more than half
    the survivors, the last k positions of the row, earlier-pruned tokens included."""
    survivors = int(ctx.valid_mask()[0].sum())
    k = int(alloc.budget[0])
    if ctx.layer is None or 2 * k <= survivors or survivors == ctx.num_tokens:
        return stages.make_topk()(ctx, scores, alloc)
    mask = torch.zeros(ctx.batch_size, ctx.num_tokens, dtype=torch.bool)
    mask[:, ctx.num_tokens - k:] = True
    return Selection.from_mask(mask)


def _failed(strategy: Strategy) -> set[str]:
    return {r.check for r in check_strategy(strategy) if r.status == "failed"}


def test_half_precision_positions_wrong_past_2048_tokens_are_caught() -> None:
    assert "check_selection_contract" in _failed(_strategy("half_positions", half_precision_positions))


def test_counts_wrapping_past_255_kept_tokens_are_caught() -> None:
    assert "check_selection_contract" in _failed(_strategy("byte_counts", byte_counts))


def test_a_selector_keeping_pruned_tokens_inside_the_llm_is_caught() -> None:
    assert "check_selection_contract" in _failed(_strategy("llm_padding", padding_inside_the_llm))


# -- a stage depending on Python's hash salt (module level, so another interpreter can rebuild it)


def salted_scores(ctx: PruneContext) -> torch.Tensor:
    """Feature norms plus a per-process offset from ``hash()`` of a string (the bug)."""
    salt = (hash("vtprune") % 1000) / 1000.0
    scores = ctx.features.float().norm(dim=-1) + salt * torch.arange(ctx.num_tokens).flip(0)
    return scores.masked_fill(~ctx.valid_mask(), float("-inf"))


def global_budget(ctx: PruneContext, scores: torch.Tensor) -> Allocation:
    return Allocation(budget=ctx.budget.clone())


def top_k(ctx: PruneContext, scores: torch.Tensor, alloc: Allocation) -> Selection:
    return stages.make_topk()(ctx, scores, alloc)


def test_a_stage_reading_the_hash_salt_is_caught_by_default() -> None:
    salted = Strategy(name="salted", scorer=salted_scores, allocator=global_budget, selector=top_k,
                      capabilities=Capabilities())
    results = {r.check: r for r in check_strategy(salted)}
    assert results["check_hash_seed_independent"].status == "failed"
    assert "PYTHONHASHSEED" in results["check_hash_seed_independent"].message
    fixed = Strategy(name="fixed", scorer=lambda ctx: ctx.features.float().norm(dim=-1),
                     allocator=global_budget, selector=top_k, capabilities=Capabilities())
    skipped = {r.check: r for r in check_strategy(fixed, checks=["check_hash_seed_independent"])}
    assert skipped["check_hash_seed_independent"].status == "skipped"
    assert "cannot be rebuilt in another interpreter" in skipped["check_hash_seed_independent"].skip_reason
