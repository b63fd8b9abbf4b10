"""``attach``: put a pruning strategy into a model; the returned handle reports and undoes it."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..core.budget import Keep
from ..core.errors import ContractError, MissingSignalError
from ..core.registry import get_strategy
from ..core.schedule import Positions, Schedule
from ..core.strategy import Strategy
from .base import AttentionSource, BackboneAdapter, find_adapter
from .plan import ATTENTION_SIGNALS, PrunePlan, scoring_layer
from .records import PruneRecord


class PruneHandle:
    """A strategy attached to one model. Use as a context manager or call :meth:`detach`.

    Attributes:
        adapter: the backbone adapter driving the model.
        strategy: the :class:`~vtprune.core.Strategy` run at every prune point.
        schedule: where pruning happens and how survivors are positioned.
        records: one :class:`PruneRecord` per prune point of the last prefill (empty before
            the first forward, or when the input had no image).
        attention_source: which layer's attention scores a point before layer K:
            ``"previous"`` (layer K-1, FastV) or ``"current"`` (layer K on its input).

    The adapter gets a frozen :class:`~.plan.PrunePlan` of the strategy and schedule, never
    the handle; each pruned forward's records come back through the plan's ``report``.
    """

    def __init__(
        self,
        adapter: BackboneAdapter,
        strategy: Strategy,
        schedule: Schedule,
        attention_source: AttentionSource = "previous",
    ) -> None:
        if schedule.attention != attention_source:
            schedule = dataclasses.replace(schedule, attention=attention_source)
        self.adapter = adapter
        self.attention_source = attention_source
        self.strategy = strategy
        self.schedule = schedule
        self.records: list[PruneRecord] = []
        self.attached = False
        self._plan = PrunePlan(strategy, schedule, report=self._receive)

    def _receive(self, records: list[PruneRecord]) -> None:
        """The plan's ``report``: the records of the last pruned forward."""
        self.records = records

    def position_map(self, original: int | torch.Tensor, layer: int | None = -1) -> torch.Tensor:
        """Pruned position(s) of original sequence position(s), per sample: [B] (or [B, M]).

        ``layer=-1`` (default) maps into the layout after the last prune point — the layout
        of the returned logits and last hidden states. Pass a record's layer (None = the
        pre-LLM point) for the layout of an earlier stage. -1 in the result means "pruned".
        With no pruning recorded, positions map to themselves.
        """
        if not self.records:
            pos = torch.as_tensor(original, dtype=torch.long)
            return pos.clone()
        if layer == -1:
            record = self.records[-1]
        else:
            found = [r for r in self.records if r.layer == layer]
            if not found:
                raise ContractError(
                    f"no prune point at layer {layer}; recorded layers: {[r.layer for r in self.records]}"
                )
            record = found[0]
        return record.map_position(original)

    def detach(self) -> None:
        """Remove every hook and wrapper; the model computes exactly as before ``attach``."""
        if self.attached:
            self.adapter.remove()
            self.attached = False

    def reattach(self) -> None:
        """Install the strategy again after :meth:`detach` (same adapter, schedule and
        strategy; records start empty). Raises ``ContractError`` if another handle is attached
        to the model now. No-op while attached."""
        if not self.attached:
            self.records = []
            self.adapter.install(self._plan)
            self.attached = True

    def __enter__(self) -> PruneHandle:
        """Entering the block (re-)attaches: ``with handle:`` on a detached handle prunes again
        instead of silently running the model unpruned."""
        self.reattach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def __repr__(self) -> str:
        points = ", ".join(f"({p.layer}, {p.keep})" for p in self.schedule.points)
        state = "attached" if self.attached else "detached"
        return (
            f"PruneHandle({self.strategy.name!r}, points=[{points}], "
            f"positions={self.schedule.positions!r}, {state})"
        )


def attach(
    model: Any,
    strategy: Strategy | str,
    keep: Keep = 0.25,
    schedule: Schedule | None = None,
    positions: Positions | None = None,
    attention_source: AttentionSource | None = None,
    **params: Any,
) -> PruneHandle:
    """Prune ``model``'s visual tokens with ``strategy`` in every forward and ``generate`` call.

    Args:
        model: a supported model instance (transformers ``LlavaForConditionalGeneration``), or
            a wrapper with a ``vtprune_backbone()`` method returning one (the grounding models
            of :mod:`vtprune.grounding` prune their LLM this way).
        strategy: a :class:`~vtprune.core.Strategy` or a registered strategy name (``params``
            go to :func:`vtprune.get_strategy`).
        keep: ratio of (or count out of) the original visual tokens, used when ``schedule``
            is None to build the strategy's own placement ``strategy.schedule(L, keep)``.
        schedule: explicit prune points; overrides ``keep``.
        positions: ``"original"`` or ``"compact"``; None keeps the schedule's own setting
            (``"original"`` unless the schedule says otherwise).
        attention_source: for attention-scored strategies, the query row is recomputed from
            layer K-1's inputs with layer K-1's norm / projections / RoPE (``"previous"``: the
            attention FastV reads), or from layer K's inputs with layer K's own modules
            (``"current"``: what PyramidDrop's reference code computes). None (default) takes
            the schedule's own ``attention`` setting.

    Returns:
        A :class:`PruneHandle` (``handle.records``, ``handle.detach()``; also a context manager).

    Raises:
        UnsupportedModelError: no adapter drives this model.
        MissingSignalError: the strategy needs a signal the adapter cannot supply at one of
            the prune points.
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy, **params)
    elif params:
        raise ContractError(
            f"strategy parameters {sorted(params)} can only be given with a strategy name; "
            "build the Strategy with vtprune.get_strategy(name, **params) instead"
        )
    if not isinstance(strategy, Strategy):
        raise ContractError(f"strategy must be a vtprune Strategy or a registered name, got {type(strategy).__name__}")
    if attention_source not in (None, "previous", "current"):
        raise ContractError(f"attention_source must be 'previous' or 'current', got {attention_source!r}")
    backbone = getattr(model, "vtprune_backbone", None)
    if callable(backbone):
        model = backbone()
    adapter = find_adapter(model)(model)
    if schedule is None:
        schedule = strategy.schedule(adapter.num_layers, keep)
    elif not isinstance(schedule, Schedule):
        raise ContractError(f"schedule must be a vtprune Schedule or None, got {type(schedule).__name__}")
    if positions is not None:
        schedule = dataclasses.replace(schedule, positions=positions)
    if attention_source is not None:
        schedule = dataclasses.replace(schedule, attention=attention_source)
    attention_source = schedule.attention
    schedule.check_depth(adapter.num_layers)
    if adapter.num_visual_tokens is not None:
        schedule.counts(adapter.num_visual_tokens)
    for point in schedule.points:
        supplied = adapter.signals(point.layer)
        if point.layer is not None and scoring_layer(point.layer, attention_source) < 0:
            supplied -= ATTENTION_SIGNALS  # no layer before layer 0 to score with
        missing = sorted(strategy.needs - supplied)
        if missing:
            where = "before the LLM" if point.layer is None else f"before layer {point.layer}"
            raise MissingSignalError(
                f"strategy {strategy.name!r} needs {missing}, which adapter {adapter.name!r} cannot "
                f"supply {where} (it supplies {sorted(supplied)}). Attention "
                "exists only inside the LLM (from layer 1 on with attention_source='previous'): "
                "use an in-LLM schedule for attention-scored strategies."
                + "".join(f" {h}." for h in map(adapter.missing_signal_hint, missing) if h)
            )
    handle = PruneHandle(adapter, strategy, schedule, attention_source)
    handle.reattach()
    return handle


__all__ = ["PruneHandle", "attach"]
