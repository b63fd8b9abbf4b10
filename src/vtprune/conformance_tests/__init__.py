"""Conformance kit for vtprune strategies (see docs/conformance.md).

Run it on a strategy (a :class:`vtprune.Strategy` or a registered name)::

    from vtprune.conformance_tests import assert_conforms, check_strategy
    for result in check_strategy("uniform"):
        print(result)
    assert_conforms(my_strategy)

Names are imported on first use, so that the kit's pytest plugin (loaded by every pytest run)
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checks import CHECKS, OPT_IN_CHECKS, Check, ConformanceError, StageOutputs, run_stages
    from .generators import ContextSpec, budget_sweep, build_context, context_specs, prune_contexts
    from .runner import (
        DEFAULT_MAX_EXAMPLES,
        CheckResult,
        assert_conforms,
        check_seed,
        check_stage,
        check_strategy,
        parametrize_with_checks,
        run_check,
        stage_strategy,
        summarize,
    )

_EXPORTS = {
    "checks": ("CHECKS", "OPT_IN_CHECKS", "Check", "ConformanceError", "StageOutputs", "run_stages"),
    "generators": ("ContextSpec", "budget_sweep", "build_context", "context_specs", "prune_contexts"),
    "runner": (
        "DEFAULT_MAX_EXAMPLES", "CheckResult", "assert_conforms", "check_seed", "check_stage",
        "check_strategy", "parametrize_with_checks", "run_check", "stage_strategy", "summarize",
    ),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "CHECKS", "OPT_IN_CHECKS", "Check", "ConformanceError", "StageOutputs", "run_stages",
    "ContextSpec", "budget_sweep", "build_context", "context_specs", "prune_contexts",
    "DEFAULT_MAX_EXAMPLES", "CheckResult", "assert_conforms", "check_seed", "check_stage", "check_strategy",
    "parametrize_with_checks", "run_check", "stage_strategy", "summarize",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
