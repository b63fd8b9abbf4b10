"""Hybrids: new triples of registered stages from different methods, registered by name.

- ``fastv_ddf``: FastV's attention scorer + ALTP's DDF allocator (density = mean attention of
  the region, so regions the query looks at get more tokens, yet every region keeps one) +
  ``topk`` inside each region; FastV's schedule (prune before layer 2).
- ``ddc_attention``: ALTP's DDC regions (quotas by region size, >= 1 each) + top-k by
  attention inside each region; FastV's schedule.
- ``altp_pdrop``: PyramidDrop's schedule and attention scorer, with DDF (attention density)
  regions and top-k at every boundary, so every superpixel keeps a token at each stage. It
  takes PyramidDrop's schedule parameters (``layers``, ``ratio``, ``budget``): by default
  ``keep`` is the mean share over the pruned layers, ``budget="first"`` makes it the share
  after the first boundary (see :mod:`vtprune.strategies.pyramiddrop`).

All need ``image`` and ``attention``; the backbone adapter supplies both at in-LLM prune
points (the context covers the original grid, already-pruned tokens invalid).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core import StrategySpec, hookimpl
from .fastv import fastv_schedule
from .pyramiddrop import pdrop_schedule


@hookimpl
def vtprune_strategies() -> Iterable[StrategySpec]:
    return [
        StrategySpec(
            "fastv_ddf", "attention", "ddf", "topk",
            params={"density": "score"},
            schedule=fastv_schedule,
            description="FastV attention + DDF quotas (attention density) + top-k per region",
            reference="hybrid: arXiv 2403.06764 + 2503.23959",
        ),
        StrategySpec(
            "ddc_attention", "attention", "ddc", "topk",
            schedule=fastv_schedule,
            description="DDC superpixel regions + top-k by attention inside each region",
            reference="hybrid: arXiv 2503.23959 + 2403.06764",
        ),
        StrategySpec(
            "altp_pdrop", "attention", "ddf", "topk",
            params={"density": "score"},
            schedule=pdrop_schedule,
            description="PyramidDrop schedule (keep = mean over pruned layers) with DDF quotas + top-k per region",
            reference="hybrid: arXiv 2410.17247 + 2503.23959",
        ),
    ]
