"""Count host synchronisations: the reads that make the host wait for the device.

Counted: every ``aten._local_scalar_dense`` dispatch (``.item()``, ``int(t)``, ``bool(t)``,
``float(t)``) plus every ``Tensor.item`` / ``tolist`` / ``numpy`` / ``cpu`` call on a tensor
that is not already on the host side of the call (``tolist`` and ``numpy`` count even on
CPU tensors: on an accelerator they would each be a device-to-host copy). Used by the tests
that hold every built-in strategy to a constant number per call, and by ``vtprune bench
overhead``.

    with HostSyncCounter() as syncs:
        strategy(ctx)
    print(syncs.count, syncs.events)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_METHODS = {"item", "tolist", "numpy"}


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: HostSyncCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.owner.events["_local_scalar_dense"] += 1
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, owner: HostSyncCounter) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in ("tolist", "numpy"):
            self.owner.events[name] += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter:
    """Context manager counting host synchronisations inside its block (``count``, and
    ``events``: a Counter by kind). ``item()`` is counted once, as its scalar read."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self._modes: list[Any] = []

    @property
    def count(self) -> int:
        return sum(self.events.values())

    def __enter__(self) -> HostSyncCounter:
        self._modes = [_Function(self), _Dispatch(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = []


__all__ = ["HostSyncCounter"]
