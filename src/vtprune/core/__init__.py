"""The contract: stage data types, budgets, schedules, hook specs and the plugin registry.

Depends on torch, numpy and pluggy only; knows nothing of any method or model.
"""

from .budget import Keep, budgets, keep_count
from .errors import (
    ContractError,
    MissingSignalError,
    PluginError,
    UnknownNameError,
    VtpruneError,
)
from .hookspecs import AdapterSpec, hookimpl, hookspec
from .registry import (
    PluginInfo,
    PluginLoadWarning,
    Registry,
    compose,
    default_registry,
    get_strategy,
    list_adapter_specs,
    list_stages,
    list_strategies,
    register,
    reload_plugins,
)
from .schedule import PrunePoint, Schedule, ScheduleFactory, pre_llm_schedule
from .specs import (
    Allocator,
    AllocatorSpec,
    Capabilities,
    Scorer,
    ScorerSpec,
    Selector,
    SelectorSpec,
    StrategySpec,
)
from .strategy import Strategy
from .types import (
    PAD_INDEX,
    SIGNALS,
    Allocation,
    PruneContext,
    Selection,
    check_allocation,
    check_scores,
    check_selection,
)

__all__ = [
    "Keep", "budgets", "keep_count",
    "ContractError", "MissingSignalError", "PluginError", "UnknownNameError", "VtpruneError",
    "AdapterSpec", "hookimpl", "hookspec",
    "PluginInfo", "PluginLoadWarning", "Registry", "compose", "default_registry", "get_strategy",
    "list_adapter_specs", "list_stages", "list_strategies", "register", "reload_plugins",
    "PrunePoint", "Schedule", "ScheduleFactory", "pre_llm_schedule",
    "Allocator", "AllocatorSpec", "Capabilities", "Scorer", "ScorerSpec", "Selector",
    "SelectorSpec", "StrategySpec", "Strategy",
    "PAD_INDEX", "SIGNALS", "Allocation", "PruneContext", "Selection",
    "check_allocation", "check_scores", "check_selection",
]
