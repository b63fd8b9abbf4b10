"""The sample image benchmarks and the demo feed the model (bundled with vtprune)."""

from __future__ import annotations

import torch


def sample_image(name: str | None = None, size: int = 336) -> torch.Tensor:
    """A bundled image (``name``, default the first of :data:`vtprune.viz.BUNDLED`) or an image
    path, as uint8 [3, size, size] — the form :func:`vtprune.models.make_inputs` normalises
    with CLIP's statistics. Loading (resize + centre crop) is :func:`vtprune.viz.load_image`."""
    from ..viz import BUNDLED, load_image

    pixels = load_image(name or BUNDLED[0], size)  # float [3, size, size] in [0, 1]
    return (pixels * 255).round().to(torch.uint8)
