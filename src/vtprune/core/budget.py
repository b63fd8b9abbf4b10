"""The one rounding rule for budgets, used everywhere a keep ratio becomes a token count."""

from __future__ import annotations

import math
from fractions import Fraction
from numbers import Integral, Real

import torch

from .errors import ContractError

Keep = int | float
"""A budget: an ``int`` is a token count, a ``float`` in [0, 1] is a keep ratio."""


def keep_count(keep: Keep, n: int) -> int:
    """Number of tokens to keep out of ``n``.

    An ``int`` is taken as a count and must lie in ``[0, n]``. A ``float`` is a ratio in
    ``[0, 1]`` and is rounded half up: ``floor(keep * n + 0.5)`` (so 0.5 of 5 keeps 3, and
    ratio 0.1 of 576 keeps 58), computed on the ratio's shortest decimal form so that binary
    representation error cannot turn a half down (0.009 of 1500 keeps 14, not 13).
    ``bool`` is rejected. Nothing is clamped: out-of-range values raise :class:`ContractError`.
    """
    if isinstance(keep, bool) or not isinstance(keep, Real):
        raise ContractError(
            f"keep must be an int token count or a float ratio in [0, 1], got {keep!r} "
            f"({type(keep).__name__})"
        )
    if n < 0:
        raise ContractError(f"token count n must be >= 0, got {n}")
    if isinstance(keep, Integral):
        k = int(keep)
        if not 0 <= k <= n:
            raise ContractError(
                f"keep={k} tokens is out of range for {n} tokens; pass a count in [0, {n}] "
                f"or a float ratio such as {min(1.0, max(0.0, k / max(n, 1))):.2f}"
            )
        return k
    ratio = float(keep)
    if not math.isfinite(ratio) or not 0.0 <= ratio <= 1.0:
        raise ContractError(f"keep ratio must be a finite float in [0, 1], got {ratio!r}")
    return math.floor(Fraction(repr(ratio)) * n + Fraction(1, 2))


def budgets(keep: Keep | torch.Tensor, valid_counts: torch.Tensor) -> torch.Tensor:
    """Per-sample budgets [B] (long) for ``valid_counts`` [B] valid tokens per sample.

    ``keep`` is one int/float for every sample (see :func:`keep_count`), or a [B] tensor of
    per-sample counts (integer dtype) or ratios (floating dtype).
    """
    counts = [int(c) for c in valid_counts.tolist()]
    if isinstance(keep, torch.Tensor):
        if keep.dtype == torch.bool:
            raise ContractError(
                "per-sample keep must be an integer tensor of counts or a floating tensor of "
                "ratios, got a bool tensor"
            )
        if keep.dim() != 1 or keep.shape[0] != len(counts):
            raise ContractError(
                f"per-sample keep must be a 1-D tensor of length B={len(counts)}, "
                f"got shape {tuple(keep.shape)}"
            )
        values: list[Keep]
        if keep.dtype == torch.float64:
            values = [float(v) for v in keep.tolist()]
        elif keep.is_floating_point():  # shortest float32 decimal: 0.7, not 0.699999988
            values = [float(str(v)) for v in keep.detach().cpu().float().numpy()]
        else:
            values = [int(v) for v in keep.tolist()]
        return torch.tensor([keep_count(v, n) for v, n in zip(values, counts)], dtype=torch.long)
    return torch.tensor([keep_count(keep, n) for n in counts], dtype=torch.long)
