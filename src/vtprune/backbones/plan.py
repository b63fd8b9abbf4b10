"""What an adapter is told to run: a frozen :class:`PrunePlan`, and where its records go.

``attach`` builds one plan per handle and hands it to the adapter's ``install`` (and the
adapter to its decoder loop). The plan is read-only: the strategy, the schedule, the signals
the strategy needs and where attention rows come from, plus the ``report`` callback through
which each pruned forward hands its :class:`~.records.PruneRecord` list back to the handle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..core.schedule import AttentionSource, Schedule
from ..core.strategy import Strategy
from .records import PruneRecord

ATTENTION_SIGNALS = frozenset({"attention", "text_attention"})
"""Signals recomputed from a decoder layer's attention (the scoring layer of a point)."""


def scoring_layer(layer: int, source: AttentionSource) -> int:
    """The decoder layer whose attention rows score a point before ``layer``: ``layer - 1``
    (``"previous"``) or ``layer`` (``"current"``); -1 means there is none (a ``"previous"``
    point before layer 0), so attention signals cannot be supplied there."""
    return layer - 1 if source == "previous" else layer


def _ignore(records: list[PruneRecord]) -> None:
    """The default ``report``: records go nowhere."""


@dataclass(frozen=True, eq=False)
class PrunePlan:
    """The pruning one handle asks of a model.

    Attributes:
        strategy: run at every prune point.
        schedule: the prune points, positions (``original`` / ``compact``) and attention source.
        report: called after every pruned prefill with its records (one per point; an empty
            list when the call held no image), in point order.
    """

    strategy: Strategy
    schedule: Schedule
    report: Callable[[list[PruneRecord]], None] = field(default=_ignore)

    @property
    def needs(self) -> frozenset[str]:
        """Optional context signals the strategy reads."""
        return self.strategy.needs

    @property
    def attention_source(self) -> AttentionSource:
        """Which layer's attention scores a point before layer K: K-1 (``"previous"``) or K."""
        return self.schedule.attention

    def scoring_layer(self, layer: int) -> int:
        """:func:`scoring_layer` of ``layer`` under this plan's attention source."""
        return scoring_layer(layer, self.attention_source)


__all__ = ["ATTENTION_SIGNALS", "PrunePlan", "scoring_layer"]
