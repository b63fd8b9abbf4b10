"""vtprune: visual-token pruning for vision-language models.

Quick start::

    import torch, vtprune
    strategy = vtprune.get_strategy("uniform")
    ctx = vtprune.PruneContext.create(torch.randn(2, 576, 64), keep=0.25)
    selection = strategy(ctx)          # kept indices [2, 144], sorted per sample
"""

from .core import (
    PAD_INDEX,
    Allocation,
    AllocatorSpec,
    Capabilities,
    ContractError,
    MissingSignalError,
    PluginError,
    PruneContext,
    PrunePoint,
    Schedule,
    ScorerSpec,
    Selection,
    SelectorSpec,
    Strategy,
    StrategySpec,
    UnknownNameError,
    VtpruneError,
    compose,
    get_strategy,
    hookimpl,
    keep_count,
    list_stages,
    list_strategies,
    register,
    reload_plugins,
)

__version__ = "0.1.0"

__all__ = [
    "PAD_INDEX", "Allocation", "AllocatorSpec", "Capabilities", "ContractError",
    "MissingSignalError", "PluginError", "PruneContext", "PrunePoint", "Schedule", "ScorerSpec",
    "Selection", "SelectorSpec", "Strategy", "StrategySpec", "UnknownNameError", "VtpruneError",
    "compose", "get_strategy", "hookimpl", "keep_count", "list_stages", "list_strategies",
    "register", "reload_plugins", "__version__",
]
