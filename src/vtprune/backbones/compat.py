"""Differences between transformers 5.x releases that the decoder loop must bridge.

transformers 5.24 renamed the KV-cache argument of decoder layers and models from
``past_key_values`` to ``cache`` (the old name is deprecated until 5.40) and the matching field
of ``BaseModelOutputWithPast``. Both are detected from the installed classes' own signatures,
never from version strings, so a backport or a later rename is picked up the same way.
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import cache
from typing import Any

OLD_CACHE = "past_key_values"
NEW_CACHE = "cache"


@cache
def _accepts(cls: type, name: str) -> bool:
    """True when ``cls.forward`` declares a parameter called ``name``."""
    forward = getattr(cls, "forward", None)
    if forward is None:
        return False
    forward = inspect.unwrap(forward)
    return name in inspect.signature(forward).parameters


def cache_kwarg(module: Any) -> str:
    """The keyword under which ``module.forward`` takes the KV cache: ``"cache"`` (5.24+) or
    ``"past_key_values"`` (earlier 5.x)."""
    owner: type = type(module)
    return NEW_CACHE if _accepts(owner, NEW_CACHE) else OLD_CACHE


@cache
def _output_cache_field() -> str:
    from transformers.modeling_outputs import BaseModelOutputWithPast

    names = {f.name for f in dataclasses.fields(BaseModelOutputWithPast)}
    return NEW_CACHE if NEW_CACHE in names else OLD_CACHE


def model_output(last_hidden_state: Any, cache: Any, hidden_states: Any) -> Any:
    """``BaseModelOutputWithPast`` with the cache under the field name this release uses."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    fields = {"last_hidden_state": last_hidden_state, "hidden_states": hidden_states}
    fields[_output_cache_field()] = cache
    return BaseModelOutputWithPast(**fields)


def output_cache(output: Any) -> Any:
    """The KV cache carried by a model output of any 5.x release (None when absent)."""
    for name in (NEW_CACHE, OLD_CACHE):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


__all__ = ["cache_kwarg", "model_output", "output_cache"]
