"""What an adapter hands the decoder loop for one model call: :class:`Pending`.

The adapter's pre-hook on the multimodal model fills one before the language model runs
(where the image tokens are, the images' grids and prompts, the signals it can read off the
vision tower); the decoder takes it at its next call and the adapter's post-hook clears it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Pending:
    """Signals of the current model call, handed over by the adapter's hooks."""

    visual: torch.Tensor | None = None  # [B, T] bool, where the image tokens are
    image: torch.Tensor | None = None  # [M, 3, H, W] pixels the vision tower saw (canvas)
    cls_attention: torch.Tensor | None = None  # [M, heads, N] vision [CLS] -> patch attention
    grids: torch.Tensor | None = None  # [M, 2] long CPU, each image's token grid; None: one per sample
    image_sample: torch.Tensor | None = None  # [M] long CPU, the sample of each image
    extras: dict[str, Any] = field(default_factory=dict)  # a family's own per-call tensors (layer hooks)


__all__ = ["Pending"]
