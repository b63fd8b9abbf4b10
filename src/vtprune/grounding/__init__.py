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

from .evaluate import evaluate, evaluate_checkpoint, validity
from .model import GroundingConfig, GroundingModel
from .scenes import SceneConfig, make_scene

__all__ = ["GroundingConfig", "GroundingModel", "SceneConfig", "evaluate", "evaluate_checkpoint",
           "make_scene", "validity"]
