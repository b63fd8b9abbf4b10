"""Count host synchronisations: the reads that make the host wait for the device.

Counted: every ``aten._local_scalar_dense`` dispatch (``.item()``, ``int(t)``, ``bool(t)``,
``float(t)``), on any device — a strategy that reads one scalar per sample is caught even on
a CPU-only machine — plus ``Tensor.tolist`` / ``numpy`` / ``cpu`` calls on tensors that live
on an accelerator (the same calls on a CPU tensor read host memory: no device waits). Used by
the tests that hold every built-in strategy to a constant number per call, and by ``vtprune
bench overhead``.

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
        if name in ("tolist", "numpy", "cpu") and args and isinstance(args[0], torch.Tensor):
            if args[0].device.type not in ("cpu", "meta"):
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
