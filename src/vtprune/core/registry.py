"""Plugin discovery and lookup: entry points -> pluggy hooks -> frozen dicts of stage specs.

The same machinery carries backbone adapters (kind ``"adapter"``, hook ``vtprune_adapters``):
same loading, same warnings for broken plugins, same duplicate-name errors, case-insensitive
lookup. :mod:`vtprune.backbones` reads them with :meth:`Registry.adapters`.

Environment variables:
    VTPRUNE_PLUGINS: comma-separated allow-list of third-party entry-point (or distribution)
        names; when set, only those load. vtprune's own built-ins always load.
    VTPRUNE_BLOCK_PLUGINS: comma-separated block-list; these never load (built-ins included).
    VTPRUNE_STRICT_PLUGINS=1: a plugin that fails to import, or a strategy naming a stage
        nobody registers, raises instead of warning.
Names in both lists are compared after PEP 503 normalisation (case, and - _ . alike).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import operator
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import ContractError, PluginError, UnknownNameError
from .hookspecs import AdapterSpec
from .schedule import ScheduleFactory
from .specs import (
    AllocatorSpec,
    ScorerSpec,
    SelectorSpec,
    StageSpec,
    StrategySpec,
    accepted_params,
)
from .strategy import Strategy

ENTRY_POINT_GROUP = "vtprune"
BUILTIN_DISTRIBUTION = "vtprune"
PROCESS_SOURCE = "register_adapter (this process)"
"""Source (and pluggy plugin name) of the adapters given to :meth:`Registry.register_adapter`."""
KINDS: dict[str, type] = {
    "scorer": ScorerSpec,
    "allocator": AllocatorSpec,
    "selector": SelectorSpec,
    "strategy": StrategySpec,
    "adapter": AdapterSpec,
}
_HOOKS = {
    "scorer": "vtprune_scorers",
    "allocator": "vtprune_allocators",
    "selector": "vtprune_selectors",
    "strategy": "vtprune_strategies",
    "adapter": "vtprune_adapters",
}


STAGE_KINDS = ("scorer", "allocator", "selector")


class PluginLoadWarning(UserWarning):
    """A plugin failed to import, or one of its strategies names a stage nobody registers;
    that plugin (or strategy) was skipped and every other one works."""


@dataclass
class PluginInfo:
    """What one plugin is and what it provides (``vtprune plugins`` prints these)."""

    name: str
    distribution: str
    version: str
    module: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    """Strategies it registers that cannot be built, each with the reason (a missing stage)."""


def _normalise(name: str) -> str:
    """PEP 503 name normalisation: ``Foo_Bar.baz`` and ``foo-bar-baz`` are the same name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _strict() -> bool:
    """True when ``VTPRUNE_STRICT_PLUGINS`` turns plugin warnings into errors."""
    return os.environ.get("VTPRUNE_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` Did you mean 'a', 'b'?`` for up to three of ``names`` closest to ``name``
    (case-insensitive, best first), or ``""`` when none is close."""
    lowered = {n.lower(): n for n in names}
    close = [lowered[c] for c in difflib.get_close_matches(str(name).lower(), lowered, n=3)]
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None or not raw.strip():
        return None
    return {_normalise(item.strip()) for item in raw.split(",") if item.strip()}


class _ProcessAdapters:
    """The plugin behind :meth:`Registry.register_adapter`: adapters given in this process,
    the most recent first. Registered before every other plugin, so its adapters come first;
    a name it holds hides a plugin adapter of that name instead of clashing with it."""

    def __init__(self) -> None:
        self.specs: list[AdapterSpec] = []

    @hookspecs.hookimpl
    def vtprune_adapters(self) -> list[AdapterSpec]:
        return list(self.specs)


class Registry:
    """Holds every registered stage, strategy and backbone adapter, keyed by kind and name."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._specs: dict[str, dict[str, Any]] | None = None
        self._sources: dict[tuple[str, str], str] = {}
        self._process = _ProcessAdapters()
        self._pm.register(self._process, name=PROCESS_SOURCE)  # not a PluginInfo: no distribution
        self._unavailable: dict[str, str] = {}  # strategy name -> why it cannot be built
        self._warned: set[str] = set()  # warnings already given (collection re-runs)

    # -- loading ---------------------------------------------------------------------------

    def load_entry_points(self) -> None:
        """Import and register every plugin of the ``vtprune`` entry-point group, one by one.

        A plugin that fails to import is skipped with a :class:`PluginLoadWarning` naming its
        distribution (``VTPRUNE_STRICT_PLUGINS=1`` turns that into :class:`PluginError`).
        """
        allow = _env_list("VTPRUNE_PLUGINS")
        block = _env_list("VTPRUNE_BLOCK_PLUGINS") or set()
        strict = _strict()

        def order(ep: metadata.EntryPoint) -> tuple[bool, str, str]:  # built-ins first
            dist = ep.dist.name if ep.dist is not None else "unknown"
            return (_normalise(dist) != BUILTIN_DISTRIBUTION, ep.name, dist)

        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=order):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "?"
            names = {_normalise(ep.name), _normalise(dist)}
            if names & block:
                continue
            if allow is not None and _normalise(dist) != BUILTIN_DISTRIBUTION and not (names & allow):
                continue
            # The same distribution seen twice on sys.path loads once; another distribution
            # reusing an entry-point name gets a qualified plugin name instead of being dropped.
            name = ep.name
            existing = self._plugins.get(name)
            if existing is not None and _normalise(existing.distribution) != _normalise(dist):
                name = f"{dist}:{ep.name}"
                existing = self._plugins.get(name)
            if existing is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                message = (
                    f"vtprune plugin {ep.name!r} from distribution {dist!r} {version} failed to "
                    f"import ({type(exc).__name__}: {exc}); skipped. Fix or uninstall {dist}, "
                    "or block it with VTPRUNE_BLOCK_PLUGINS."
                )
                if strict:
                    raise PluginError(
                        message.replace("; skipped.", " (an error because VTPRUNE_STRICT_PLUGINS is set).")
                    ) from exc
                warnings.warn(message, PluginLoadWarning, stacklevel=2)
                self._plugins[name] = PluginInfo(name, dist, version, ep.value, error=message)
                continue
            self.register(plugin, name=name, distribution=dist, version=version)

    def register(
        self, plugin: Any, name: str | None = None, distribution: str = "local", version: str = ""
    ) -> None:
        """Register a plugin object (a module or an instance with ``@hookimpl`` methods)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._plugins and self._plugins[name].error is None:
            raise PluginError(f"a plugin named {name!r} is already registered")
        self._pm.register(plugin, name=name)
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self._plugins[name] = PluginInfo(name, distribution, version, module)
        self._specs = None

    # -- collected specs ---------------------------------------------------------------------

    def _collect(self) -> dict[str, dict[str, Any]]:
        if self._specs is not None:
            return self._specs
        specs: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        sources: dict[tuple[str, str], str] = {}
        owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name, registration order
        for kind, hook_name in _HOOKS.items():
            hook = getattr(self._pm.hook, hook_name)
            for impl in hook.get_hookimpls():  # registration order (pluggy calls them LIFO)
                source = self._source(impl.plugin_name)
                for spec in _records(kind, hook_name, impl.function, source):
                    if spec.name in specs[kind] and sources[(kind, spec.name)] == PROCESS_SOURCE:
                        continue  # hidden by an adapter registered in this process
                    if spec.name in specs[kind]:
                        raise PluginError(
                            f"{kind} name {spec.name!r} is registered twice: by "
                            f"{sources[(kind, spec.name)]} and by {source}. Uninstall or block "
                            "one of them (VTPRUNE_BLOCK_PLUGINS)."
                        )
                    specs[kind][spec.name] = spec
                    sources[(kind, spec.name)] = source
                    owners[(kind, spec.name)] = impl.plugin_name
        unavailable = _unresolved(specs, sources)
        for name in unavailable:
            del specs["strategy"][name]
        self._describe_plugins(owners, unavailable)
        for name, reason in unavailable.items():
            plugin = owners[("strategy", name)]
            owner = self._plugins.get(plugin)
            self._warn_unavailable(reason, owner.distribution if owner else plugin)
        self._specs, self._sources, self._unavailable = specs, sources, unavailable
        return specs

    def _source(self, plugin_name: str) -> str:
        """``"<distribution> (plugin '<name>')"``, how messages name a plugin."""
        info = self._plugins.get(plugin_name)
        return f"{info.distribution} (plugin {plugin_name!r})" if info else plugin_name

    def _describe_plugins(
        self, owners: dict[tuple[str, str], str], unavailable: dict[str, str]
    ) -> None:
        """Recompute each plugin's ``provides`` and ``unavailable`` (never appended twice)."""
        for known in self._plugins.values():
            known.provides.clear()
            known.unavailable.clear()
        for (kind, name), plugin in owners.items():
            info = self._plugins.get(plugin)
            if info is None:
                continue
            if kind == "strategy" and name in unavailable:
                info.unavailable[name] = unavailable[name]
            else:
                info.provides.setdefault(kind, []).append(name)

    def _warn_unavailable(self, reason: str, dist: str) -> None:
        """Warn once (per registry) that a strategy of distribution ``dist`` is unavailable;
        raise :class:`PluginError` instead under ``VTPRUNE_STRICT_PLUGINS``."""
        what_to_do = f"Fix the StrategySpec in {dist}, or block it with VTPRUNE_BLOCK_PLUGINS."
        if _strict():
            raise PluginError(
                f"vtprune {reason} (an error because VTPRUNE_STRICT_PLUGINS is set). {what_to_do}"
            )
        message = (
            f"vtprune {reason}; that strategy is unavailable, every other one works. {what_to_do}"
        )
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, PluginLoadWarning, stacklevel=2)

    def names(self, kind: str = "strategy") -> list[str]:
        """Sorted names registered for ``kind`` (strategy, scorer, allocator, selector or
        adapter)."""
        if kind not in KINDS:
            raise UnknownNameError(f"unknown kind {kind!r}; choose from {list(KINDS)}")
        return sorted(self._collect()[kind])

    def spec(self, kind: str, name: str) -> Any:
        """The registered record for ``name``; unknown names get close-match suggestions, and
        a strategy isolated for naming a missing stage a :class:`PluginError` saying so."""
        table = self._collect()[kind] if kind in KINDS else None
        if table is None:
            raise UnknownNameError(f"unknown kind {kind!r}; choose from {list(KINDS)}")
        if name not in table and isinstance(name, str) and name.lower() in table:
            name = name.lower()  # registered names are lower-case; lookups ignore case
        if kind == "strategy" and isinstance(name, str) and name.lower() in self._unavailable:
            raise PluginError(
                f"{self._unavailable[name.lower()]}, so it is unavailable (the other strategies "
                "work). Fix that StrategySpec in its plugin, or choose another strategy."
            )
        if name not in table:
            raise UnknownNameError(
                f"no {kind} named {name!r}.{_did_you_mean(name, table)} Registered {kind} names: "
                f"{', '.join(sorted(table)) or 'none'}"
            )
        return table[name]

    def source(self, kind: str, name: str) -> str:
        """Which distribution and plugin registered ``name``."""
        self.spec(kind, name)
        return self._sources[(kind, name)]

    def adapters(self) -> list[AdapterSpec]:
        """Every registered adapter spec: those given to :meth:`register_adapter` (the most
        recent first), then plugins' in registration order (vtprune's built-ins first, then
        third-party plugins by entry-point name; each plugin's in the order its hook returns
        them), less those an adapter registered in this process hides by name."""
        return list(self._collect()["adapter"].values())

    def register_adapter(self, spec: AdapterSpec) -> None:
        """Register an adapter in this process (source :data:`PROCESS_SOURCE`), ahead of every
        plugin adapter and hiding one of the same name; registering a name again replaces it."""
        self._process.specs[:] = [spec, *(s for s in self._process.specs if s.name != spec.name)]
        self._specs = None

    def unregister_adapter(self, name: str) -> None:
        """Forget an adapter given to :meth:`register_adapter` (unknown names are ignored)."""
        self._process.specs[:] = [s for s in self._process.specs if s.name != name]
        self._specs = None

    def plugins(self) -> list[PluginInfo]:
        self._collect()
        return sorted(self._plugins.values(), key=lambda p: p.name)

    # -- building strategies -----------------------------------------------------------------

    def get_strategy(self, name: str, **params: Any) -> Strategy:
        """The registered strategy ``name``, with ``params`` overriding its defaults.

        Each parameter goes to every stage factory (and the schedule factory) that accepts it;
        a parameter nobody accepts is an error listing the accepted ones.
        """
        spec: StrategySpec = self.spec("strategy", name)
        name = spec.name  # the registered spelling ("ALTP" finds "altp")
        merged = {**spec.params, **params}
        return self._build(name, (spec.scorer, spec.allocator, spec.selector), merged, spec.schedule)

    def compose(
        self,
        scorer: str,
        allocator: str,
        selector: str,
        name: str | None = None,
        schedule: str | ScheduleFactory | None = None,
        **params: Any,
    ) -> Strategy:
        """A hybrid strategy from registered stages of (possibly) different strategies.

        ``schedule`` is a strategy name whose default placement to borrow, a schedule factory,
        or None (prune before the LLM; not allowed when a stage needs attention from inside
        the LLM).
        """
        factory: ScheduleFactory | None
        if isinstance(schedule, str):
            factory = self.spec("strategy", schedule).schedule
        else:
            factory = schedule
        label = name or f"{scorer}/{allocator}/{selector}"
        strategy = self._build(label, (scorer, allocator, selector), params, factory)
        if factory is None and "attention" in strategy.needs:
            raise ContractError(
                f"hybrid {label!r} scores with attention from inside the LLM; pass "
                "schedule='fastv' (or another strategy name or a schedule factory)"
            )
        return strategy

    def _build(
        self,
        label: str,
        stage_names: tuple[str, str, str],
        params: Mapping[str, Any],
        schedule: ScheduleFactory | None,
    ) -> Strategy:
        stages: list[StageSpec] = [
            self.spec(kind, stage)
            for kind, stage in zip(("scorer", "allocator", "selector"), stage_names)
        ]
        factories: list[Callable[..., Any]] = [s.factory for s in stages]
        if schedule is not None:
            factories.append(schedule)
        routed: list[dict[str, Any]] = [{} for _ in factories]
        reserved = sorted({"num_layers", "keep"} & set(params))
        if reserved:
            raise ContractError(
                f"{reserved} cannot be a parameter of strategy {label!r}: the budget is given "
                "where the strategy is applied, e.g. attach(model, name, keep=0.25) or "
                "strategy.schedule(num_layers, keep)"
            )
        for key, value in params.items():
            takers = [i for i, f in enumerate(factories) if _accepts(f, key)]
            if not takers:
                accepted = set().union(*(accepted_params(f) or set() for f in factories))
                accepted -= {"num_layers", "keep"}
                raise ContractError(
                    f"strategy {label!r} has no parameter {key!r}; it accepts {sorted(accepted)}"
                )
            for i in takers:
                routed[i][key] = value
        allocator_caps, selector_caps = stages[1].capabilities, stages[2].capabilities
        if allocator_caps.regions and not selector_caps.region_quotas:
            raise ContractError(
                f"strategy {label!r}: allocator {stage_names[1]!r} splits the budget into region "
                f"quotas, which selector {stage_names[2]!r} does not take "
                "(capabilities.region_quotas=False); compose it with the 'global' allocator, or "
                "use a selector that honours quotas ('topk', 'spread')"
            )
        fns = [s.build(**kw) for s, kw in zip(stages, routed)]
        if not selector_caps.region_quotas:
            fns[2] = _global_budget_only(stage_names[2], fns[2])
        if schedule is not None and routed[3]:
            schedule = functools.partial(schedule, **routed[3])
        caps = functools.reduce(operator.or_, (s.capabilities for s in stages))
        return Strategy(
            name=label,
            scorer=fns[0],
            allocator=fns[1],
            selector=fns[2],
            capabilities=caps,
            stage_names=stage_names,
            params=dict(params),
            schedule_factory=schedule,
        )


def _global_budget_only(name: str, select: Callable[..., Any]) -> Callable[..., Any]:
    """``select`` refusing an allocation with regions (its selector declared
    ``region_quotas=False``); the one place that message is written."""

    @functools.wraps(select)
    def guarded(ctx: Any, scores: Any, alloc: Any) -> Any:
        if alloc.regions is not None:
            raise ContractError(
                f"selector {name!r} does not support region quotas "
                "(capabilities.region_quotas=False); compose it with the 'global' allocator, or "
                "use 'topk' with a region allocator"
            )
        return select(ctx, scores, alloc)

    return guarded


def _records(kind: str, hook_name: str, function: Callable[[], Any], source: str) -> list[Any]:
    """The records one hook implementation returns, each checked to be of its kind's type."""
    try:
        records = list(function() or ())
    except Exception as exc:  # e.g. a record with an invalid name
        raise PluginError(f"{hook_name} of {source} raised {type(exc).__name__}: {exc}") from exc
    for spec in records:
        if not issubclass(type(spec), KINDS[kind]):
            raise PluginError(
                f"{hook_name} of {source} returned {type(spec).__name__}; "
                f"expected {KINDS[kind].__name__} records"
            )
    return records


def _unresolved(
    specs: dict[str, dict[str, Any]], sources: dict[tuple[str, str], str]
) -> dict[str, str]:
    """Each strategy naming a stage that nobody registers, with the reason: every missing
    stage and the closest registered names."""
    reasons = {}
    for spec in specs["strategy"].values():
        missing = [
            f"{kind} {getattr(spec, kind)!r} (no plugin registers it."
            f"{_did_you_mean(getattr(spec, kind), specs[kind])})"
            for kind in STAGE_KINDS
            if getattr(spec, kind) not in specs[kind]
        ]
        if missing:
            source, uses = sources[("strategy", spec.name)], " and ".join(missing)
            reasons[spec.name] = f"strategy {spec.name!r} from {source} uses {uses}"
    return reasons


def _accepts(factory: Callable[..., Any], key: str) -> bool:
    accepted = accepted_params(factory)
    return accepted is None or key in accepted


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry, built from the entry points on first use."""
    global _default
    if _default is None:
        registry = Registry()
        registry.load_entry_points()
        _default = registry
    return _default


def reload_plugins() -> Registry:
    """Forget the process-wide registry and rediscover plugins (after installing one)."""
    global _default
    process = _default._process.specs if _default is not None else []
    _default = None
    importlib.invalidate_caches()
    registry = default_registry()
    registry._process.specs[:] = process  # adapters registered in this process stay
    return registry


def list_strategies() -> list[str]:
    """Names of every registered strategy."""
    return default_registry().names("strategy")


def list_adapter_specs() -> list[AdapterSpec]:
    """Every adapter registered by a plugin, in the order :meth:`Registry.adapters` gives."""
    return default_registry().adapters()


def list_stages(kind: str) -> list[str]:
    """Names of every registered ``scorer``, ``allocator`` or ``selector``."""
    return default_registry().names(kind)


def get_strategy(name: str, **params: Any) -> Strategy:
    """Build the registered strategy ``name``; see :meth:`Registry.get_strategy`."""
    return default_registry().get_strategy(name, **params)


def compose(
    scorer: str,
    allocator: str,
    selector: str,
    name: str | None = None,
    schedule: str | ScheduleFactory | None = None,
    **params: Any,
) -> Strategy:
    """Build a hybrid from registered stages; see :meth:`Registry.compose`."""
    return default_registry().compose(scorer, allocator, selector, name=name, schedule=schedule, **params)


def register(plugin: Any, name: str | None = None) -> None:
    """Register an in-process plugin (a module or object with ``@vtprune.hookimpl`` functions)."""
    default_registry().register(plugin, name=name)


__all__ = [
    "PROCESS_SOURCE",
    "Registry",
    "PluginInfo",
    "PluginLoadWarning",
    "default_registry",
    "reload_plugins",
    "list_strategies",
    "list_stages",
    "list_adapter_specs",
    "get_strategy",
    "compose",
    "register",
]
