"""pluggy hook specifications: the four things a vtprune plugin can provide.

A plugin is a module (or object) with functions marked ``@vtprune.hookimpl`` whose names
match these specs, registered through the ``vtprune`` entry-point group::

    [project.entry-points.vtprune]
    my_plugin = "my_package.plugin"

Hooks are called once, when the registry is built; the stages they return are plain
functions called directly during pruning.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from .specs import AllocatorSpec, ScorerSpec, SelectorSpec, StrategySpec

PROJECT = "vtprune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def vtprune_scorers() -> Iterable[ScorerSpec]:
    """Return the scorers this plugin provides: ``scorer(ctx) -> scores [B, N]``."""
    raise NotImplementedError


@hookspec
def vtprune_allocators() -> Iterable[AllocatorSpec]:
    """Return the allocators this plugin provides: ``allocator(ctx, scores) -> Allocation``."""
    raise NotImplementedError


@hookspec
def vtprune_selectors() -> Iterable[SelectorSpec]:
    """Return the selectors: ``selector(ctx, scores, allocation) -> Selection``."""
    raise NotImplementedError


@hookspec
def vtprune_strategies() -> Iterable[StrategySpec]:
    """Return named strategies, each a triple of registered stage names plus defaults."""
    raise NotImplementedError
