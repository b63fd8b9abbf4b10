"""A small, honest stand-in for GLaMM on GranDf, trained on this machine.

- ``scenes``: seeded synthetic scenes (shapes over textured backgrounds) with instance masks,
  fixed splits ``train`` (unbounded stream) / ``val`` / ``test`` / ``test_small``.
- ``text``: the word-level vocabulary and tokenizer.
- ``model``: ``GroundingModel`` = a stock ``LlavaForConditionalGeneration`` + a light mask
  decoder prompted by ``[SEG]`` states.
- ``inference``: batches, losses, grounded description, masks, validity ablations.
- ``metrics``: mIoU, COCO-style AP50, phrase-matched recall.
- ``evaluate``: split and real-scale (checkpoint + GranDf-style file) evaluation,
  ``validity`` checks.

See docs/grounding.md.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported lazily: ``vtprune --help`` must not pay for importing transformers.
_EXPORTS = {
    "GroundingConfig": "model", "GroundingModel": "model", "load_pretrained": "model",
    "SceneConfig": "scenes", "make_scene": "scenes",
    "evaluate": "evaluate", "evaluate_checkpoint": "evaluate", "validity": "evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GroundingConfig", "GroundingModel", "SceneConfig", "evaluate", "evaluate_checkpoint",
           "load_pretrained", "make_scene", "validity"]
