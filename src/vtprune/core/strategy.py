"""A runnable strategy: three stage functions called in order, with the contract checked."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .budget import Keep
from .canvas import run_by_grid
from .errors import ContractError, MissingSignalError
from .schedule import Schedule, ScheduleFactory, pre_llm_schedule
from .specs import Allocator, Capabilities, Scorer, Selector
from .types import (
    PruneContext,
    Selection,
    allocation_verdict,
    check_allocation,
    check_scores,
    check_selection,
    scores_verdict,
    selection_verdict,
)


@dataclass(frozen=True, eq=False)
class Strategy:
    """``strategy(ctx) -> Selection``: score, allocate, select.

    Built by :func:`vtprune.get_strategy` or :func:`vtprune.compose`; the stage functions are
    plain callables (no plugin machinery on the hot path). With ``validate=True`` (default)
    every stage output is checked against the contract and a violation raises
    :class:`~vtprune.core.errors.ContractError` naming the stage. A context whose rows have
    their own grids (``ctx.grids``) is run per grid on cropped rows unless every stage
    declares ``Capabilities.row_grids`` (:mod:`vtprune.core.canvas`).
    """

    name: str
    scorer: Scorer
    allocator: Allocator
    selector: Selector
    capabilities: Capabilities = field(default_factory=Capabilities)
    stage_names: tuple[str, str, str] = ("", "", "")
    params: Mapping[str, Any] = field(default_factory=dict)
    schedule_factory: ScheduleFactory | None = None
    validate: bool = True

    def __call__(self, ctx: PruneContext) -> Selection:
        missing = [s for s in sorted(self.capabilities.needs) if getattr(ctx, s) is None]
        if missing:
            raise MissingSignalError(
                f"strategy {self.name!r} needs the context signal(s) {missing}; pass them to "
                "PruneContext (a backbone adapter supplies them automatically)"
            )
        if ctx.grids is not None and not self.capabilities.row_grids:
            return run_by_grid(ctx, self)  # each row on its own grid (dynamic resolution)
        scores = self.scorer(ctx)
        if not self.validate:
            return self.selector(ctx, scores, self.allocator(ctx, scores))
        # Each stage's structural checks run at once; the value invariants of all three are
        # read from the device once, at the end. Only on failure (or when a later stage
        # raises) are the stages re-checked one by one, to name the first that broke.
        scorer, allocator, selector = self.stage_names
        verdicts = [_staged("scorer", scorer, scores_verdict, scores, ctx)]
        alloc: Any = None
        sel: Any = None
        try:
            alloc = self.allocator(ctx, scores)
            verdicts.append(_staged("allocator", allocator, allocation_verdict, alloc, ctx))
            sel = self.selector(ctx, scores, alloc)
            verdicts.append(_staged("selector", selector, selection_verdict, sel, ctx, alloc))
        except Exception:
            self._explain(ctx, scores, alloc, sel)  # a broken earlier output is the likelier cause
            raise
        dev = ctx.features.device
        if not bool(torch.stack([v.to(dev) for v in verdicts]).all()):  # the one host read
            self._explain(ctx, scores, alloc, sel)
        return sel

    def _explain(self, ctx: PruneContext, scores: Any, alloc: Any = None, sel: Any = None) -> None:
        """Run the full checks of the stage outputs given, in order; raise the first failure."""
        scorer, allocator, selector = self.stage_names
        _staged("scorer", scorer, check_scores, scores, ctx)
        if alloc is not None:
            _staged("allocator", allocator, check_allocation, alloc, ctx)
        if sel is not None:
            _staged("selector", selector, check_selection, sel, ctx, alloc)

    def scores(self, ctx: PruneContext) -> torch.Tensor:
        """Only the scoring stage (used by pictures and diagnostics)."""
        return self.scorer(ctx)

    def schedule(self, num_layers: int, keep: Keep) -> Schedule:
        """This strategy's default placement for a model with ``num_layers`` decoder layers."""
        factory = self.schedule_factory or pre_llm_schedule
        schedule = factory(num_layers, keep)
        schedule.check_depth(num_layers)
        return schedule

    @property
    def needs(self) -> frozenset[str]:
        return self.capabilities.needs

    def __repr__(self) -> str:
        s, a, c = self.stage_names
        return f"Strategy({self.name!r}, scorer={s!r}, allocator={a!r}, selector={c!r}, params={dict(self.params)})"


def _staged(kind: str, name: str, check: Callable[..., Any], value: Any, *args: Any) -> Any:
    try:
        return check(value, *args)
    except ContractError as err:
        raise ContractError(f"{kind} {name!r} broke the contract: {err}") from None
