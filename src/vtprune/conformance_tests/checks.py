"""Named checks of the stage contract, each a plain function ``check_x(strategy, ctx)``.

A check calls the strategy's three stage functions itself (``strategy.scorer``, ``.allocator``,
``.selector``) and inspects their raw outputs, so it catches a broken stage on its own instead of
relying on :class:`~vtprune.core.Strategy`'s internal validation. A check returns None when
the invariant holds and raises :class:`ConformanceError` (an ``AssertionError``) naming the
broken invariant otherwise. :data:`CHECKS` lists them with the capability flag (if any) that
must be true for a check to apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from ..core import (
    Allocation,
    ContractError,
    PruneContext,
    Selection,
    Strategy,
    check_allocation,
    check_scores,
    check_selection,
)
from ..core.canvas import block_indices, crop


class ConformanceError(AssertionError):
    """A stage broke an invariant of the contract (the message says which)."""


@dataclass(frozen=True)
class StageOutputs:
    """Raw outputs of the three stages for one context."""

    scores: torch.Tensor
    allocation: Allocation
    selection: Selection


def _stage(kind: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        hint = ""
        if "NoneType" in str(exc):
            hint = (
                " (does the stage read a context signal it does not declare in "
                "capabilities.needs? The kit supplies only the declared ones)"
            )
        raise ConformanceError(f"the {kind} raised {type(exc).__name__}: {exc}{hint}") from exc


def run_stages(strategy: Strategy, ctx: PruneContext) -> StageOutputs:
    """Call scorer, allocator and selector directly, with no contract validation in between."""
    scores = _stage("scorer", strategy.scorer, ctx)
    alloc = _stage("allocator", strategy.allocator, ctx, scores)
    sel = _stage("selector", strategy.selector, ctx, scores, alloc)
    return StageOutputs(scores, alloc, sel)


def _contract(what: str, check: Callable[..., Any], *args: Any) -> None:
    try:
        check(*args)
    except ContractError as err:
        raise ConformanceError(f"{what}: {err}") from None


def _fresh(ctx: PruneContext) -> PruneContext:
    """The same context with a new generator in the state the original one was seeded with."""
    g = ctx.generator
    if g is None:
        return ctx
    return replace(ctx, generator=torch.Generator(device=g.device).manual_seed(g.initial_seed()))


def check_on_device(what: str, tensor: Any, ctx: PruneContext) -> None:
    """The device clause of the API checks: ``tensor`` (a stage output) lives on the device of
    ``ctx.features``. Run before any value check, so that a tensor on another device is named
    as such instead of crashing a comparison. Raises :class:`ConformanceError`."""
    have, want = getattr(tensor, "device", None), ctx.features.device
    if have != want:
        raise ConformanceError(
            f"{what} is on {have}, but the input (ctx.features) is on {want}; build outputs "
            "on the input's device (e.g. torch.zeros(..., device=ctx.features.device), "
            "no .cpu() on the way out)"
        )


# -- API checks ----------------------------------------------------------------------------------


def check_scores_contract(strategy: Strategy, ctx: PruneContext) -> None:
    """The scorer returns a floating [B, N] tensor on the features' device, finite on valid tokens
    and not NaN on padding tokens (padding may hold any non-NaN value, -inf included: a NaN there
    poisons sorts and comparisons downstream)."""
    scores = _stage("scorer", strategy.scorer, ctx)
    if isinstance(scores, torch.Tensor):
        check_on_device("scores", scores, ctx)
    _contract("scorer output", check_scores, scores, ctx)
    if ctx.valid is not None and bool(torch.isnan(scores[~ctx.valid]).any()):
        raise ConformanceError(
            "scores hold NaN on padding tokens (ctx.valid == False); fill padding with a "
            "number (e.g. 0 or -inf), never NaN"
        )


def check_allocation_contract(strategy: Strategy, ctx: PruneContext) -> None:
    """The allocator returns an Allocation with the context's budget; regions are -1 exactly on
    invalid tokens; quotas are >= 0, never exceed their region's size and sum to the budget."""
    scores = _stage("scorer", strategy.scorer, ctx)
    alloc = _stage("allocator", strategy.allocator, ctx, scores)
    _contract("allocator output", check_allocation, alloc, ctx)
    # Re-run Allocation's own validation on the tensors as they are now (quota invariants).
    _contract("allocator output", replace, alloc)


def check_selection_contract(strategy: Strategy, ctx: PruneContext) -> None:
    """The selector returns a Selection: indices long [B, max budget] on the features' device,
    counts long == budget exactly, kept indices in range, valid, unique, sorted ascending,
    padding -1."""
    sel = run_stages(strategy, ctx).selection
    if isinstance(sel, Selection):
        check_on_device("selection.indices", sel.indices, ctx)
    _contract("selector output", check_selection, sel, ctx)


def check_replacement_features(strategy: Strategy, ctx: PruneContext) -> None:
    """With ``capabilities.merges``: selection.features is [B, K, D], of the input's dtype and
    device, finite on kept slots. Without it: selection.features is None."""
    sel = run_stages(strategy, ctx).selection
    f = sel.features
    if not strategy.capabilities.merges:
        if f is not None:
            raise ConformanceError(
                "the selector returned replacement features but the strategy does not declare "
                "capabilities.merges=True"
            )
        return
    if f is None:
        raise ConformanceError("capabilities.merges=True but selection.features is None")
    check_on_device("selection.features", f, ctx)
    b, k = sel.indices.shape
    want = (b, k, ctx.features.shape[2])
    if tuple(f.shape) != want or f.dtype != ctx.features.dtype or f.device != ctx.features.device:
        raise ConformanceError(
            f"selection.features must be {list(want)} {ctx.features.dtype} on "
            f"{ctx.features.device}, got {list(f.shape)} {f.dtype} on {f.device}"
        )
    if not bool(torch.isfinite(f[sel.kept_mask]).all()):
        raise ConformanceError("selection.features has NaN/inf on kept slots")


# -- properties ----------------------------------------------------------------------------------


def check_keep_all_keeps_every_valid_token(strategy: Strategy, ctx: PruneContext) -> None:
    """With budget == valid count, every valid token is kept (and no padding token), and
    replacement features, if any, equal the original features: keep-all is the identity."""
    ctx = ctx.with_budget(1.0)
    sel = run_stages(strategy, ctx).selection
    if isinstance(sel, Selection):
        check_on_device("keep-all selection.indices", sel.indices, ctx)
    _contract("keep-all selection", check_selection, sel, ctx)
    kept = sel.token_mask(ctx.num_tokens)
    missing = ctx.valid_mask().to(kept.device) & ~kept
    if bool(missing.any()):
        b = int(missing.any(dim=1).nonzero()[0, 0])
        raise ConformanceError(
            f"keep-all dropped valid tokens {missing[b].nonzero().flatten().tolist()[:20]} of "
            f"sample {b}"
        )
    if sel.features is not None:
        idx = sel.indices.clamp_min(0)[..., None].expand(-1, -1, ctx.features.shape[2])
        original = ctx.features.gather(1, idx)[sel.kept_mask].float()
        replaced = sel.features[sel.kept_mask].float()
        tol = 1e-2 if ctx.features.dtype == torch.bfloat16 else 1e-5
        if not torch.allclose(original, replaced, rtol=tol, atol=tol):
            raise ConformanceError(
                "keep-all changed the kept tokens' features (max abs difference "
                f"{float((original - replaced).abs().max()):.3g}); with nothing to drop, "
                "replacement features must equal the originals"
            )


def check_keep_none_keeps_nothing(strategy: Strategy, ctx: PruneContext) -> None:
    """With budget 0, nothing is kept: counts are 0 and indices are [B, 0]."""
    ctx = ctx.with_budget(0)
    sel = run_stages(strategy, ctx).selection
    if sel.counts.tolist() != [0] * ctx.batch_size or sel.indices.shape[1] != 0:
        raise ConformanceError(
            f"keep-none must give counts 0 and indices [B, 0]; got counts {sel.counts.tolist()} "
            f"and indices {list(sel.indices.shape)}"
        )


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def _same_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point():
        return bool(torch.isclose(a, b, rtol=0.0, atol=0.0, equal_nan=True).all())
    return torch.equal(a, b)


def _differences(first: StageOutputs, second: StageOutputs) -> list[str]:
    pairs = {
        "scores": _same_nan(first.scores, second.scores),
        "allocation.budget": _same(first.allocation.budget, second.allocation.budget),
        "allocation.regions": _same(first.allocation.regions, second.allocation.regions),
        "allocation.quotas": _same(first.allocation.quotas, second.allocation.quotas),
        "selection.indices": _same(first.selection.indices, second.selection.indices),
        "selection.counts": _same(first.selection.counts, second.selection.counts),
        "selection.features": _same(first.selection.features, second.selection.features),
    }
    return [name for name, same in pairs.items() if not same]


def check_deterministic(strategy: Strategy, ctx: PruneContext) -> None:
    """Two runs on the same context give identical scores, allocations and selections, both
    with ``ctx.generator`` (re-seeded identically before each run) and without one."""
    variants = {
        "with ctx.generator (same seed)": _fresh,
        "without ctx.generator": lambda c: replace(c, generator=None),
    }
    for label, variant in variants.items():
        first = run_stages(strategy, variant(ctx))
        second = run_stages(strategy, variant(ctx))
        differ = _differences(first, second)
        if not differ:
            continue
        detail = ""
        rows = list(zip(first.selection.per_sample(), second.selection.per_sample()))
        for b, (a, c) in enumerate(rows):
            if not torch.equal(a, c):
                detail = f" (sample {b} kept {a.tolist()[:12]}, then {c.tolist()[:12]})"
                break
        raise ConformanceError(
            f"two runs on the same context {label} differ in {', '.join(differ)}{detail}; "
            "draw randomness only from ctx.generator (or a seeded generator of your own), or "
            "declare capabilities.deterministic=False"
        )


def check_batch_consistent(strategy: Strategy, ctx: PruneContext) -> None:
    """Each sample pruned alone keeps the same tokens (and replacement features) as inside the
    batch. Runs without ``ctx.generator``: one random stream shared by a batch cannot also be
    split per sample. Applies to deterministic strategies only."""
    ctx = replace(ctx, generator=None)
    batch = run_stages(strategy, ctx).selection
    rows = batch.per_sample()
    for i in range(ctx.batch_size):
        alone = run_stages(strategy, ctx.sample(i)).selection
        mine = alone.per_sample()[0]
        if not torch.equal(rows[i].cpu(), mine.cpu()):
            raise ConformanceError(
                f"sample {i} alone keeps {mine.tolist()[:16]} but inside the batch keeps "
                f"{rows[i].tolist()[:16]}; a sample's result must not depend on the rest of "
                "its batch, or declare capabilities.batch_consistent=False"
            )
        if batch.features is not None and alone.features is not None:
            k = len(mine)
            a, b = batch.features[i, :k].float(), alone.features[0, :k].float()
            tol = 1e-2 if ctx.features.dtype == torch.bfloat16 else 1e-5
            if not torch.allclose(a, b, rtol=tol, atol=tol):
                raise ConformanceError(
                    f"sample {i}: replacement features differ between the batch and the sample "
                    f"alone (max abs difference {float((a - b).abs().max()):.3g})"
                )


def check_row_grids_own_grid(strategy: Strategy, ctx: PruneContext) -> None:
    """With per-row grids (``ctx.grids``, a canvas), each row keeps the tokens it keeps alone
    on its own grid (the context cropped to its block), mapped to canvas indices. Applies to
    stages that declare ``capabilities.row_grids``; contexts without grids pass."""
    grids = ctx.grids
    if grids is None:
        return
    ctx = replace(ctx, generator=None)
    rows = run_stages(strategy, ctx).selection.per_sample()
    for i, (h, w) in enumerate(grids.tolist()):
        alone = run_stages(strategy, crop(ctx, torch.tensor([i]), (h, w))).selection.per_sample()[0]
        mine = block_indices((h, w), ctx.grid)[alone.cpu()]
        if not torch.equal(rows[i].cpu(), mine):
            raise ConformanceError(
                f"row {i} (own grid {h}x{w} on a {ctx.grid[0]}x{ctx.grid[1]} canvas) keeps "
                f"{rows[i].tolist()[:16]} on the canvas but {mine.tolist()[:16]} alone on its "
                "grid; a stage declaring capabilities.row_grids must read each row's own grid "
                "from ctx.grids (or drop the flag: Strategy then crops rows to their grids)"
            )


def _snapshot(obj: Any) -> dict[str, torch.Tensor]:
    return {
        f.name: getattr(obj, f.name).clone()
        for f in fields(obj)
        if isinstance(getattr(obj, f.name), torch.Tensor)
    }


def _changed(before: dict[str, torch.Tensor], obj: Any) -> list[str]:
    return [name for name, t in before.items() if not _same_nan(t, getattr(obj, name))]


def check_inputs_not_mutated(strategy: Strategy, ctx: PruneContext) -> None:
    """No stage modifies a tensor of the context; the allocator and selector leave the scores
    (and the selector the allocation) as they received them."""
    before_ctx = _snapshot(ctx)
    scores = _stage("scorer", strategy.scorer, ctx)
    before_scores = scores.clone() if isinstance(scores, torch.Tensor) else None
    alloc = _stage("allocator", strategy.allocator, ctx, scores)
    before_alloc = _snapshot(alloc) if isinstance(alloc, Allocation) else {}
    _stage("selector", strategy.selector, ctx, scores, alloc)
    changed = [f"ctx.{name}" for name in _changed(before_ctx, ctx)]
    if before_scores is not None and not _same_nan(before_scores, scores):
        changed.append("scores (after the allocator/selector)")
    changed += [f"allocation.{name} (after the selector)" for name in _changed(before_alloc, alloc)]
    if changed:
        raise ConformanceError(
            f"stages modified their inputs in place: {', '.join(changed)}; work on copies "
            "(e.g. x = x.clone() or out-of-place ops)"
        )


def _padding_changed(ctx: PruneContext) -> PruneContext:
    """The same context with other features on its padding tokens (``1 - 2 x``: every value
    moves, zeros included) and the generator re-seeded as the original was."""
    assert ctx.valid is not None
    pad = ~ctx.valid.to(ctx.features.device)[..., None]  # [B, N, 1]
    return _fresh(replace(ctx, features=torch.where(pad, 1.0 - 2.0 * ctx.features, ctx.features)))


def _valid_scores_differ(a: torch.Tensor, b: torch.Tensor, valid: torch.Tensor) -> str | None:
    """Where scores ``a`` and ``b`` first differ on a valid token, or None."""
    differ = ~torch.isclose(a, b, rtol=0.0, atol=0.0, equal_nan=True) & valid.to(a.device)
    if not bool(differ.any()):
        return None
    i, j = (int(v) for v in differ.nonzero()[0])
    before, after = float(a[i, j]), float(b[i, j])
    return f"scores of valid tokens (sample {i}, token {j}: {before}, then {after})"


def check_padding_features_ignored(strategy: Strategy, ctx: PruneContext) -> None:
    """Changing the features of padding tokens (``ctx.valid`` False) changes neither the scores
    of valid tokens nor the allocation, the selection or the kept replacement features: a stage
    that pools, normalises or reads grid neighbours must skip invalid tokens. Contexts without
    padding pass."""
    if ctx.valid is None or bool(ctx.valid.all()):
        return
    first = run_stages(strategy, _fresh(ctx))
    second = run_stages(strategy, _padding_changed(ctx))
    moved = [_valid_scores_differ(first.scores, second.scores, ctx.valid)]
    # scores may differ on padding, replacement features past a sample's count: both unread
    moved += [n for n in _differences(first, second) if n not in ("scores", "selection.features")]
    fa, fb = first.selection.features, second.selection.features
    if fa is not None and fb is not None and fa.shape == fb.shape:
        kept = first.selection.kept_mask
        if not _same_nan(fa[kept], fb[kept]):
            moved.append("selection.features of kept slots")
    changed = [m for m in moved if m]
    if changed:
        raise ConformanceError(
            f"other features on padding tokens (ctx.valid == False) changed {', '.join(changed)}; "
            "a stage must not read invalid tokens: mask them out before pooling, averaging or "
            "reading grid neighbours (e.g. torch.where(ctx.valid_mask()[..., None], features, 0))"
        )


def check_selector_respects_quotas(strategy: Strategy, ctx: PruneContext) -> None:
    """When the allocation has regions, the selector keeps exactly ``quotas[b, r]`` tokens in
    region r of sample b (vacuous when the allocator returns no regions)."""
    out = run_stages(strategy, ctx)
    if out.allocation.regions is None:
        return
    _contract("selection against the allocation", check_selection, out.selection, ctx, out.allocation)


def check_deterministic_across_processes(strategy: Strategy, ctx: PruneContext) -> None:
    """A fresh Python interpreter with another ``PYTHONHASHSEED`` gives the same scores,
    allocation and selection as this process on the same context (no ``hash()`` of strings,
    set order or ``id()`` in the result). Opt-in: it starts a new interpreter (seconds)."""
    _across_processes(strategy, ctx, persistent=False)


def check_hash_seed_independent(strategy: Strategy, ctx: PruneContext) -> None:
    """Another Python interpreter, started with another ``PYTHONHASHSEED``, gives the same
    scores, allocation and selection on one fixed context (no ``hash()`` of strings, set order
    or ``id()`` in the result). One persistent interpreter serves every strategy of a run."""
    _across_processes(strategy, ctx, persistent=True)


def _across_processes(strategy: Strategy, ctx: PruneContext, persistent: bool) -> None:
    from .fresh import differences

    differ, here, there = differences(strategy, ctx, persistent=persistent)
    if differ:
        detail = ""
        a, b = here["selection.indices"], there["selection.indices"]
        if a is not None and b is not None and not torch.equal(a.cpu(), b.cpu()):
            detail = f" (kept {a.cpu().tolist()[:2]} here, {b.tolist()[:2]} there)"
        raise ConformanceError(
            f"a fresh interpreter (other PYTHONHASHSEED) differs in {', '.join(differ)}{detail}; "
            "do not derive results from hash() of strings, set iteration order or id(), or "
            "declare capabilities.deterministic=False"
        )


# -- the table -----------------------------------------------------------------------------------

Requirement = Literal["deterministic", "batch_consistent", "row_grids"]


@dataclass(frozen=True)
class Check:
    """One named check: the function, its group, and what decides whether it applies.

    Attributes:
        requires: :class:`~vtprune.core.Capabilities` flags that must all be True.
        budget: budgets the runner draws for it (``"any"``, ``"all"`` or ``"none"``).
        once: run on one fixed context (the largest of the budget sweep), not on
            hypothesis' draws: for expensive checks.
        rebuildable: needs the strategy rebuilt in another interpreter (picklable stages or
            registered names); skipped with the reason otherwise.
        real_sizes: also run on :func:`~.generators.real_size_specs` (576 and 2304 tokens,
            budgets past 10, an in-LLM point with pruned tokens): the selection contract, and
            the quota check for strategies whose allocator makes regions.
    """

    name: str
    fn: Callable[[Strategy, PruneContext], None]
    group: Literal["api", "property"]
    requires: tuple[Requirement, ...] = ()
    budget: Literal["any", "all", "none"] = "any"
    once: bool = False
    real_sizes: bool = False
    rebuildable: bool = False

    @property
    def description(self) -> str:
        doc = self.fn.__doc__ or ""
        return " ".join(doc.split())

    def skip_reason(self, strategy: Strategy) -> str | None:
        """Why this check does not apply to ``strategy`` (from its capabilities), or None."""
        off = [flag for flag in self.requires if not getattr(strategy.capabilities, flag)]
        if off:
            return " and ".join(f"capabilities.{flag} is False" for flag in off)
        if self.rebuildable:
            from .fresh import recipe

            if recipe(strategy) is None:
                return ("the strategy cannot be rebuilt in another interpreter (its stages are "
                        "closures and it is not registered): register it, or define its stages "
                        "at module level")
        return None


CHECKS: tuple[Check, ...] = (
    Check("check_scores_contract", check_scores_contract, "api"),
    Check("check_allocation_contract", check_allocation_contract, "api"),
    Check("check_selection_contract", check_selection_contract, "api", real_sizes=True),
    Check("check_replacement_features", check_replacement_features, "api"),
    Check("check_keep_all_keeps_every_valid_token", check_keep_all_keeps_every_valid_token, "property", budget="all"),
    Check("check_keep_none_keeps_nothing", check_keep_none_keeps_nothing, "property", budget="none"),
    Check("check_deterministic", check_deterministic, "property", requires=("deterministic",)),
    # Comparing a sample alone with the same sample in a batch needs repeatable outputs.
    Check(
        "check_batch_consistent", check_batch_consistent, "property",
        requires=("deterministic", "batch_consistent"),
    ),
    Check(
        "check_row_grids_own_grid", check_row_grids_own_grid, "property",
        requires=("row_grids", "deterministic"),
    ),
    Check("check_inputs_not_mutated", check_inputs_not_mutated, "property"),
    Check(
        "check_padding_features_ignored", check_padding_features_ignored, "property",
        requires=("deterministic",),
    ),
    Check("check_selector_respects_quotas", check_selector_respects_quotas, "property", real_sizes=True),
    Check(
        "check_hash_seed_independent", check_hash_seed_independent, "property",
        requires=("deterministic",), once=True, rebuildable=True,
    ),
)
"""Every default check of the kit, in the order they run."""

OPT_IN_CHECKS: tuple[Check, ...] = (
    Check(
        "check_deterministic_across_processes", check_deterministic_across_processes, "property",
        requires=("deterministic",), once=True, rebuildable=True,
    ),
)
"""Checks that run only when named in ``checks=[...]`` (they cost seconds each)."""

__all__ = [
    "CHECKS",
    "OPT_IN_CHECKS",
    "Check",
    "ConformanceError",
    "StageOutputs",
    "run_stages",
    "check_on_device",
    "check_scores_contract",
    "check_allocation_contract",
    "check_selection_contract",
    "check_replacement_features",
    "check_keep_all_keeps_every_valid_token",
    "check_keep_none_keeps_nothing",
    "check_deterministic",
    "check_batch_consistent",
    "check_row_grids_own_grid",
    "check_inputs_not_mutated",
    "check_padding_features_ignored",
    "check_selector_respects_quotas",
    "check_deterministic_across_processes",
    "check_hash_seed_independent",
]
