"""Grounding metrics: mask mIoU, COCO-style AP50 and phrase-matched recall.

All functions take plain numpy arrays, one image at a time, and return per-image records that
``summarise`` pools over a split (pooling happens over objects, and for AP over all
predictions of the split, as COCO does).

- ``iou_matrix(pred [P, H, W] bool, gt [G, H, W] bool) -> [P, G]``.
- mIoU: predictions are matched one-to-one to ground-truth objects (Hungarian, maximising
  IoU); every ground-truth object scores the IoU of its match, 0 when unmatched; mIoU is the
  mean over all ground-truth objects.
- AP50: class-agnostic, COCO's procedure at IoU 0.5: predictions of all images sorted by
  score, each greedily matched to the best still-unmatched ground truth with IoU >= 0.5,
  precision made monotone, sampled at 101 recall points. Tested against pycocotools.
- recall: a ground-truth object is found when some prediction has IoU > 0.5 with it *and*
  that prediction's phrase equals the object's phrase (one-to-one, greedy by IoU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


def _check_masks(name: str, m: np.ndarray) -> np.ndarray:
    if m.ndim != 3:
        raise ValueError(f"{name} must be [n, H, W] boolean masks, got shape {m.shape}")
    return m.astype(bool, copy=False)


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU between every predicted and ground-truth mask: [P, G] float64 (0 when both empty)."""
    pred, gt = _check_masks("pred", pred), _check_masks("gt", gt)
    if pred.shape[1:] != gt.shape[1:]:
        raise ValueError(f"pred masks are {pred.shape[1:]} but gt masks are {gt.shape[1:]}; "
                         "resize predictions to the ground-truth resolution first")
    pixels = int(np.prod(gt.shape[1:]))
    p = pred.reshape(pred.shape[0], pixels).astype(np.float64)
    g = gt.reshape(gt.shape[0], pixels).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class ImageResult:
    """Per-image matching outcome used by ``summarise``."""

    matched_iou: np.ndarray          # [G] IoU of each GT object's Hungarian match (0 if none)
    scores: np.ndarray               # [P] prediction confidences
    ious: np.ndarray                 # [P, G]
    found: np.ndarray                # [G] bool, phrase-matched recall at IoU > 0.5
    small: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # [G]


def evaluate_image(pred: np.ndarray, scores: Sequence[float], pred_phrases: Sequence[str],
                   gt: np.ndarray, gt_phrases: Sequence[str],
                   small_area: float | None = None) -> ImageResult:
    """Match one image's predictions to its ground truth (see module docstring)."""
    if len(scores) != pred.shape[0] or len(pred_phrases) != pred.shape[0]:
        raise ValueError(f"{pred.shape[0]} predicted masks need as many scores and phrases, got "
                         f"{len(scores)} scores and {len(pred_phrases)} phrases")
    if len(gt_phrases) != gt.shape[0]:
        raise ValueError(f"{gt.shape[0]} gt masks need as many phrases, got {len(gt_phrases)}")
    ious = iou_matrix(pred, gt)
    matched = np.zeros(gt.shape[0])
    if ious.size:
        r, c = linear_sum_assignment(-ious)
        matched[c] = ious[r, c]
    found = np.zeros(gt.shape[0], dtype=bool)
    used = np.zeros(pred.shape[0], dtype=bool)
    pairs = sorted(((ious[p, g], p, g) for p in range(ious.shape[0]) for g in range(ious.shape[1])
                    if ious[p, g] > 0.5 and pred_phrases[p] == gt_phrases[g]), reverse=True)
    for _, p, g in pairs:
        if not used[p] and not found[g]:
            used[p] = True
            found[g] = True
    area = gt.reshape(gt.shape[0], -1).sum(1)
    small = area < small_area if small_area is not None else np.zeros(gt.shape[0], dtype=bool)
    return ImageResult(matched, np.asarray(scores, dtype=np.float64), ious, found, small)


def average_precision(results: Sequence[ImageResult], threshold: float = 0.5) -> float:
    """COCO-style class-agnostic AP at one IoU threshold over a split (101-point)."""
    n_gt = sum(r.ious.shape[1] for r in results)
    if n_gt == 0:
        raise ValueError("AP is undefined without ground-truth objects")
    entries = []  # (score, image index, pred index)
    for i, r in enumerate(results):
        entries += [(-float(s), i, p) for p, s in enumerate(r.scores)]
    entries.sort(key=lambda e: e[0])  # stable: ties keep image order, as pycocotools does
    taken = [np.zeros(r.ious.shape[1], dtype=bool) for r in results]
    tp = np.zeros(len(entries))
    for k, (_, i, p) in enumerate(entries):
        row = results[i].ious[p]
        best, best_iou = -1, min(threshold, 1 - 1e-10)
        for g in range(row.shape[0]):
            if taken[i][g] or row[g] < best_iou:
                continue
            best, best_iou = g, row[g]
        if best >= 0:
            taken[i][best] = True
            tp[k] = 1
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(np.arange(1, len(tp) + 1), np.finfo(np.float64).eps)
    for k in range(len(precision) - 1, 0, -1):
        precision[k - 1] = max(precision[k - 1], precision[k])
    points = np.linspace(0.0, 1.0, 101)
    idx = np.searchsorted(recall, points, side="left")
    sampled = [precision[j] if j < len(precision) else 0.0 for j in idx]
    return float(np.mean(sampled))


def summarise(results: Sequence[ImageResult]) -> dict[str, float]:
    """Split-level numbers: miou, ap50, recall, and the same over small objects."""
    matched = np.concatenate([r.matched_iou for r in results])
    found = np.concatenate([r.found for r in results])
    small = np.concatenate([r.small if r.small.size else np.zeros(r.found.shape, bool)
                            for r in results])
    out = {"miou": float(matched.mean()), "ap50": average_precision(results),
           "recall": float(found.mean()), "n_objects": float(matched.size)}
    if small.any():
        out["miou_small"] = float(matched[small].mean())
        out["recall_small"] = float(found[small].mean())
    return out
