"""Evaluate the grounding stand-in on a split, unpruned or under a validity ablation.

Two measurements per run:

- **GCG** (the GLaMM task): the model writes the grounded description itself, then each
  ``[SEG]`` gives a mask; mIoU / AP50 / recall from ``metrics``.
- **referring** (teacher-forced): the ground-truth description is fed and each object's mask
  is scored against its own ground truth (mean IoU over objects). This isolates what pruning
  does to the ``[SEG]`` states from errors in the description.

Visual-token modes: ``full`` (all tokens), ``none`` (keep 0), ``noise`` (tokens replaced by
noise with matched statistics), ``oracle`` (only the patches that overlap an object).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import inference as inf
from . import metrics, text
from .annotations import AnnotatedImage, load_annotations
from .model import GroundingModel
from .parallel import map_batches
from .scenes import SceneConfig, make_scene, split_size

MODES = ("full", "none", "noise", "oracle")

# visual provider: (model, images [B, 3, S, S], gt masks per image at S x S)
#   -> (visual [B, K, D], kept [B, K] or None)
VisualFn = Callable[[GroundingModel, torch.Tensor, list[torch.Tensor]],
                    tuple[torch.Tensor, torch.Tensor | None]]


def mode_visual(mode: str, seed: int = 0) -> VisualFn:
    """The visual-token provider of a validity mode (see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    gen = torch.Generator().manual_seed(seed)

    def provide(model: GroundingModel, images: torch.Tensor,
                masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mode == "full":
            return inf.full_visual(model, images)
        if mode == "none":
            return inf.no_visual(model, images)
        if mode == "noise":
            return inf.noise_visual(model, images, gen)
        if len(masks) != 1:
            raise ValueError("oracle mode keeps a different count per image: use batch size 1")
        kept = inf.oracle_kept(masks, model.cfg.scene.grid, model.cfg.scene.image_size)[0][None]
        return inf.select_visual(model.visual_features(images), kept), kept

    return provide


def _resize_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of [n, h, w] boolean masks to [n, *size]."""
    if masks.shape[1:] == size:
        return masks
    t = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (F.interpolate(t, size=size, mode="nearest")[:, 0] > 0.5).numpy()


def score_prediction(item: AnnotatedImage, words: Sequence[str], probs: torch.Tensor,
                     side: int, patch: int) -> metrics.ImageResult:
    """Score one image's grounded description: ``probs`` [S, side, side] mask probabilities of
    its S ``[SEG]`` states, ``words`` the generated description. Objects smaller than two
    patches (at the model's resolution) count as small."""
    masks = probs > 0.5
    scores = [float(pi[mi].mean()) if mi.any() else 0.0 for pi, mi in zip(probs, masks)]
    pred = _resize_masks(masks.numpy(), item.masks.shape[1:])
    small_area = 2 * patch * patch * item.masks.shape[1] * item.masks.shape[2] / side ** 2
    return metrics.evaluate_image(pred, scores, text.phrases_from_words(list(words)), item.masks,
                                  item.phrases, small_area=small_area)


def _description(phrases: list[str]) -> list[str]:
    words: list[str] = []
    for ph in phrases:
        words += ph.split() + [text.SEG]
    return words


@torch.no_grad()
def evaluate_items(model: GroundingModel, items: Sequence[AnnotatedImage], mode: str = "full",
                   batch_size: int = 16, visual_fn: VisualFn | None = None) -> dict[str, float]:
    """GCG and referring metrics over annotated images of any size.

    Images are resized to the model's resolution; predicted masks are resized back and scored
    at each image's own resolution. Small objects: area below two patches' worth of pixels at
    the model's resolution.
    """
    results, ref_ious, ref_small = _run(model, items, mode, batch_size, visual_fn)
    out = {f"gcg_{k}": v for k, v in metrics.summarise(results).items()}
    out["ref_miou"] = float(np.mean(ref_ious))
    small = np.asarray(ref_small)
    if small.any():
        out["ref_miou_small"] = float(np.asarray(ref_ious)[small].mean())
    out["n_images"] = float(len(items))
    return out


def gcg_results(model: GroundingModel, items: Sequence[AnnotatedImage], mode: str = "full",
                batch_size: int = 16) -> list[metrics.ImageResult]:
    """Per-image GCG outcomes in a validity ``mode`` (for bootstrapped errors)."""
    return _run(model, items, mode, batch_size, None)[0]


@torch.no_grad()
def _run(model: GroundingModel, items: Sequence[AnnotatedImage], mode: str, batch_size: int,
         visual_fn: VisualFn | None,
         ) -> tuple[list[metrics.ImageResult], list[float], list[bool]]:
    """GCG results per image, referring IoU per object and whether that object is small."""
    if not items:
        raise ValueError("nothing to evaluate: got an empty list of images")
    if mode == "oracle" and visual_fn is None:
        batch_size = 1
    model.eval()
    side = model.cfg.scene.image_size
    patch = model.cfg.scene.patch_size

    def run(start: int, chunk: Sequence[AnnotatedImage]) -> list[tuple[list[metrics.ImageResult], list[float], list[bool]]]:
        # noise is seeded per batch (by its first scene), so sharded runs draw the same noise
        provide = visual_fn or mode_visual(mode, seed=start)
        results: list[metrics.ImageResult] = []
        ref_ious: list[float] = []
        ref_small: list[bool] = []
        images = torch.stack([
            F.interpolate(torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)[None],
                          size=(side, side), mode="bilinear", align_corners=False)[0]
            if it.image.shape[:2] != (side, side)
            else torch.from_numpy(np.ascontiguousarray(it.image)).permute(2, 0, 1)
            for it in chunk])
        small_masks = [torch.from_numpy(_resize_masks(it.masks, (side, side))) for it in chunk]
        visual, kept = provide(model, images, small_masks)
        # GCG: describe, then ground what was described.
        words = inf.describe(model, visual, kept)
        probs = inf.ground(model, images, visual, kept, words)
        for it, w, p in zip(chunk, words, probs):
            results.append(score_prediction(it, w, p, side, patch))
        # Referring: ground the true description.
        probs = inf.ground(model, images, visual, kept, [_description(it.phrases) for it in chunk])
        for it, p in zip(chunk, probs):
            pred = _resize_masks((p > 0.5).numpy(), it.masks.shape[1:])
            small_area = 2 * patch * patch * it.masks.shape[1] * it.masks.shape[2] / side ** 2
            for pm, gm in zip(pred, it.masks):
                union = np.logical_or(pm, gm).sum()
                ref_ious.append(float(np.logical_and(pm, gm).sum() / union) if union else 0.0)
                ref_small.append(bool(gm.sum() < small_area))
        return [(results, ref_ious, ref_small)]

    parts = map_batches(items, batch_size, run)  # this rank's batches, gathered in scene order
    return (
        [r for part in parts for r in part[0]],
        [v for part in parts for v in part[1]],
        [v for part in parts for v in part[2]],
    )


def split_items(split: str, limit: int | None, config: SceneConfig) -> list[AnnotatedImage]:
    """The first ``limit`` scenes of a fixed split as annotated images."""
    size = split_size(split)
    if size is None:
        raise ValueError("the train split is an unbounded stream; evaluate on val/test/test_small")
    n = size if limit is None else min(limit, size)
    out = []
    for i in range(n):
        s = make_scene(split, i, config)
        out.append(AnnotatedImage(s.image, s.masks, s.phrases))
    return out


def evaluate(model: GroundingModel, split: str = "val", limit: int | None = None,
             mode: str = "full", batch_size: int = 16, visual_fn: VisualFn | None = None,
             ) -> dict[str, float]:
    """GCG and referring metrics of ``model`` on the first ``limit`` scenes of ``split``."""
    return evaluate_items(model, split_items(split, limit, model.cfg.scene), mode, batch_size,
                          visual_fn)


def evaluate_checkpoint(checkpoint: str | Path, annotations: str | Path,
                        image_root: str | Path | None = None, mode: str = "full",
                        limit: int | None = None) -> dict[str, float]:
    """The real-scale entry point: a local checkpoint directory + a GranDf-style file.

    ``checkpoint`` is a directory written by ``GroundingModel.save`` (LLaVA weights, mask
    decoder, tokenizer); ``annotations`` follows ``vtprune.grounding.annotations``.
    """
    model = GroundingModel.load(checkpoint)
    items = load_annotations(annotations, image_root)
    return evaluate_items(model, items[:limit] if limit is not None else items, mode)


def validity(model: GroundingModel, split: str = "val", limit: int | None = None,
             ) -> dict[str, dict[str, float]]:
    """Scores for every mode, ratios to ``full`` and the pass/fail of each check.

    ``pass``: with ``none`` (keep 0) and ``noise`` tokens the GCG mIoU - the task's metric -
    must fall to at most 30% of the unpruned one. ``pass_referring`` applies the same test to
    the teacher-forced referring mIoU (a diagnostic: when it fails, referring numbers must not
    be used to compare pruning). ``oracle_*_ratio`` should stay near 1.
    """
    scores = {m: evaluate(model, split, limit, m) for m in MODES}
    full = scores["full"]
    checks: dict[str, float] = {}
    for m in ("none", "noise", "oracle"):
        for key in ("gcg_miou", "ref_miou"):
            checks[f"{m}_{key}_ratio"] = scores[m][key] / max(full[key], 1e-9)
    for name, key in (("pass", "gcg_miou"), ("pass_referring", "ref_miou")):
        checks[name] = float(all(checks[f"{m}_{key}_ratio"] <= 0.30 for m in ("none", "noise")))
    return {**scores, "checks": checks}
