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
- ``glamm``: the real GLaMM (LLaVA + SAM) from a folder ``glamm_convert`` wrote;
  ``glamm_text`` its tokenizer rules and prompt; ``sam`` SAM on transformers' ``SamModel``;
  ``checkpoints`` shard-by-shard reading with strict key accounting; ``tiny_glamm`` a random
  checkpoint in GLaMM's released layout; ``grandf`` GranD-f prediction files and metrics.
- ``sa2va``: the real Sa2VA (Qwen2.5-VL + SAM 2) from a folder ``sa2va_convert`` wrote; ``sam2``
  SAM 2 on transformers' ``Sam2Model``; ``tiny_sa2va`` a random checkpoint in Sa2VA's layout;
  ``refer`` referring-segmentation metrics.
- ``load(directory)``: whichever of these a folder holds.

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
    "GLaMM": "glamm", "convert_glamm": "glamm_convert", "build_tiny_glamm": "tiny_glamm",
    "Sa2VA": "sa2va", "convert_sa2va": "sa2va_convert", "build_tiny_sa2va": "tiny_sa2va",
}


def load(directory: Any, **kwargs: Any) -> Any:
    """The grounding model saved in ``directory``: a converted GLaMM (``glamm.json``, see
    ``vtprune convert glamm``) or Sa2VA (``sa2va.json``, ``vtprune convert sa2va``; for both
    ``dtype`` / ``device`` keywords apply) or the stand-in
    (``GroundingModel.save``'s ``config.json`` + ``model.safetensors``)."""
    from pathlib import Path

    d = Path(directory)
    if (d / "glamm.json").is_file():
        from .glamm import GLaMM

        return GLaMM.load(d, **kwargs)
    if (d / "sa2va.json").is_file():
        from .sa2va import Sa2VA

        return Sa2VA.load(d, **kwargs)
    if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
        from .model import GroundingModel

        if kwargs:
            raise TypeError(f"the stand-in loads in float32 on the CPU; got options {sorted(kwargs)}")
        return GroundingModel.load(d)
    raise FileNotFoundError(
        f"{d} holds no grounding model: expected glamm.json (a converted GLaMM: run `vtprune "
        "convert glamm CHECKPOINT --clip CLIP --out DIR`), sa2va.json (a converted Sa2VA: `vtprune "
        "convert sa2va CHECKPOINT --out DIR`) or config.json + model.safetensors (the "
        "stand-in, GroundingModel.save)")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GLaMM", "GroundingConfig", "GroundingModel", "Sa2VA", "build_tiny_glamm", "build_tiny_sa2va",
           "convert_glamm", "convert_sa2va", "load", "SceneConfig", "evaluate", "evaluate_checkpoint",
           "load_pretrained", "make_scene", "validity"]
