"""GranD-f GCG evaluation as GLaMM's ``eval/gcg/evaluate.py`` computes it.

Inputs as released: ground truth ``{split}_gcg_coco_mask_gt.json`` (COCO instances, one
category) and ``{split}_gcg_coco_caption_gt.json`` (captions with ``labels``, the phrases) in an
annotation folder; predictions one JSON per image (``image_id``, ``caption``, ``phrases``,
``pred_masks`` as COCO RLE), named ``{image_id}.json`` — GLaMM's own files score unchanged.

- AP50: ``COCOeval(gt, predictions, "segm")`` on category 1, every score 1.0 (pycocotools).
- mIoU: per image, greedy one-to-one pairing by maximal IoU while it is > 0, the mean of the
  paired IoUs (0 without a pair); averaged over images.
- recall: per image, greedy pairs by maximal IoU that need IoU >= 0.5 *and* BERT similarity >=
  0.5 of the phrases (cosine of mean-pooled ``bert-base-uncased`` last hidden states); the first
  pair failing either ends the image. True pairs over ground-truth phrases. Needs a local BERT
  folder; an image whose masks and phrases disagree in number scores no pair, as in GLaMM's
  code (which catches the IndexError).
- METEOR, CIDEr: pycocoevalcap's scorers after its PTB tokenizer (both need Java). SPICE is
  not computed (it downloads Stanford CoreNLP at run time).

A metric whose requirement is missing is ``None`` ("unavailable"), never a guess.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Similarity = Callable[[Sequence[str], Sequence[str]], np.ndarray]  # [G, P] cosine


def rle_encode(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a bool [H, W] mask, JSON-ready (as GLaMM writes its masks)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def rle_decode(rle: dict) -> np.ndarray:
    """Bool [H, W] mask of a compressed or uncompressed COCO RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(rle["counts"], list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    return mask_utils.decode(rle).astype(bool)


def write_prediction(directory: str | Path, image_id: str, caption: str, phrases: Sequence[str],
                     masks: np.ndarray) -> Path:
    """``directory/{image_id}.json`` in GLaMM's prediction format; masks bool [n, H, W]."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{image_id}.json"
    path.write_text(json.dumps({"image_id": image_id, "caption": caption, "phrases": list(phrases),
                                "pred_masks": [rle_encode(m) for m in masks]}))
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def iou_matrix(rows: Sequence[np.ndarray], cols: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([[iou(r, c) for c in cols] for r in rows]).reshape(len(rows), len(cols))


def greedy_miou(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray]) -> float:
    """GLaMM's per-image mIoU (module docstring)."""
    m = iou_matrix(pred, gt)
    paired = []
    while m.size and m.max() > 0:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        paired.append(m[i, j])
        m = np.delete(np.delete(m, i, axis=0), j, axis=1)
    return float(np.mean(paired)) if paired else 0.0


def recall_matches(gt: Sequence[np.ndarray], pred: Sequence[np.ndarray], text_sims: np.ndarray,
                   iou_threshold: float = 0.5, text_threshold: float = 0.5) -> int:
    """GLaMM's per-image true positives: greedy by IoU [G, P], both thresholds, stop at the
    first pair that fails. ``text_sims`` [G', P'] (ground-truth phrases x predicted phrases)."""
    ious = iou_matrix(gt, pred)
    sims = text_sims.copy()
    matches = 0
    try:
        while ious.size:
            i, j = np.unravel_index(np.argmax(ious), ious.shape)
            if ious[i, j] < iou_threshold or sims[i, j] < text_threshold:
                break
            matches += 1
            ious[i, :] = ious[:, j] = 0
            sims[i, :] = sims[:, j] = 0
    except IndexError:  # phrases and masks disagree in number: GLaMM's code scores nothing
        return 0
    return matches


def bert_similarity(bert_dir: str | Path) -> Similarity:
    """Cosine similarity of mean-pooled last hidden states of a local BERT (GLaMM uses
    ``bert-base-uncased``; every token, [CLS] and [SEP] included, up to 512)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bert_dir))
    model = AutoModel.from_pretrained(str(bert_dir)).eval()
    cache: dict[str, np.ndarray] = {}

    def embed(text: str) -> np.ndarray:
        if text not in cache:
            with torch.no_grad():
                inputs = tokenizer(text, return_tensors="pt", max_length=512, truncation=True)
                cache[text] = model(**inputs).last_hidden_state[0].mean(0).double().numpy()
        return cache[text]

    def similarity(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(a), len(b)))
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                u, v = embed(x), embed(y)
                out[i, j] = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
        return out

    return similarity


def caption_scores(gts: dict[str, list[str]], res: dict[str, str]) -> dict[str, float | None]:
    """METEOR and CIDEr through pycocoevalcap (None when it or Java is missing)."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        return {"meteor": None, "cider": None}
    if shutil.which("java") is None:
        return {"meteor": None, "cider": None}
    with contextlib.redirect_stdout(io.StringIO()):
        tok = PTBTokenizer()
        g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
        r = tok.tokenize({k: [{"caption": res[k]}] for k in gts})
        meteor, _ = Meteor().compute_score(g, r)
        cider, _ = Cider().compute_score(g, r)
    return {"meteor": float(meteor), "cider": float(cider)}


@dataclass(frozen=True)
class GroundTruth:
    """A GranD-f split: mask and caption COCO files."""

    masks: Path
    captions: Path

    @classmethod
    def find(cls, annotations: str | Path, split: str) -> GroundTruth:
        d = Path(annotations)
        gt = cls(d / f"{split}_gcg_coco_mask_gt.json", d / f"{split}_gcg_coco_caption_gt.json")
        for p in (gt.masks, gt.captions):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found: expected GranD-f's annotations/val_test folder "
                    f"({{val,test}}_gcg_coco_{{mask,caption}}_gt.json)")
        return gt

    def image_ids(self) -> list[str]:
        return [img["id"] for img in json.loads(self.captions.read_text())["images"]]


def _read_prediction(path: Path) -> dict:
    pred = json.loads(path.read_text())
    if "caption" not in pred and len(pred) == 1:  # GLaMM's reader accepts a one-key wrapper
        pred = next(iter(pred.values()))
    return pred


def score(predictions: str | Path, annotations: str | Path, split: str = "val",
          similarity: Similarity | None = None, image_ids: Sequence[str] | None = None,
          captions: bool = True) -> dict[str, float | int | None]:
    """GranD-f metrics of a folder of prediction files (module docstring), over every image of
    the split or the given ``image_ids``; ``captions=False`` skips METEOR and CIDEr (None)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = GroundTruth.find(annotations, split)
    ids = list(image_ids) if image_ids is not None else gt.image_ids()
    preds = {}
    for image_id in ids:
        path = Path(predictions) / f"{image_id}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no prediction for image {image_id!r}: {path} is missing")
        preds[image_id] = _read_prediction(path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt.masks))
        caption_gt = COCO(str(gt.captions))
    detections = [{"image_id": i, "category_id": 1, "segmentation": rle, "score": 1.0}
                  for i in ids for rle in preds[i]["pred_masks"]]
    ap50 = 0.0
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_eval = COCOeval(coco, coco.loadRes(detections), "segm")
            coco_eval.params.catIds = [1]
            coco_eval.params.imgIds = ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        ap50 = float(coco_eval.stats[1])
    mious, positives, found = [], 0, 0
    for i in ids:
        gt_masks = [coco.annToMask(a).astype(bool) for a in coco.anns.values() if a["image_id"] == i]
        pred_masks = [rle_decode(r) for r in preds[i]["pred_masks"]]
        mious.append(greedy_miou(pred_masks, gt_masks))
        if similarity is not None:
            labels = next(a for a in caption_gt.anns.values() if a["image_id"] == i)["labels"]
            positives += len(labels)
            sims = similarity(labels, preds[i]["phrases"])
            found += recall_matches(gt_masks, pred_masks, sims)
    gts = {i: [a["caption"] for a in caption_gt.anns.values() if a["image_id"] == i] for i in ids}
    out: dict[str, float | int | None] = {
        "ap50": ap50, "miou": float(np.mean(mious)) if mious else 0.0,
        "recall": (found / positives if positives else 0.0) if similarity is not None else None,
        "n_images": len(ids),
    }
    out.update(caption_scores(gts, {i: preds[i]["caption"] for i in ids}) if captions
               else {"meteor": None, "cider": None})
    return out
