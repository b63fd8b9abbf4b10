"""Referring segmentation on RefCOCO / RefCOCO+ / RefCOCOg: annotations, cIoU / gIoU, runs.

Layout accepted: the refer toolkit's, which is also what Sa2VA's evaluation reads
(``projects/sa2va/evaluation/utils/refcoco_refer.py``): ``ROOT/DATASET/refs(SPLIT_BY).p`` (a
pickled list of refs: ``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences`` with
``sent``) and ``ROOT/DATASET/instances.json`` (COCO images and annotations, polygons or RLE).
DATASET is ``refcoco`` / ``refcoco+`` (split by ``unc``) or ``refcocog`` (``umd``); images are
COCO train2014 files named by ``file_name``. The pickle is read with :mod:`pickle`: load only
files you trust.

Metrics as Sa2VA's ``RESDataset.evaluate``: every sentence is one prediction (the union of the
answer's masks, empty without a ``[SEG]``); cIoU = sum of intersections / sum of unions;
gIoU = mean over sentences of I / (U + 1e-5), 1 where both masks are empty.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .keep_plot import plot_keeps

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
COLUMNS = ("setting", "visual tokens / layer", "FLOPs", "cIoU", "gIoU", "sentences", "s / sentence")


@dataclass
class ReferImage:
    """One image of a split: its sentences and, for each, the annotation it refers to."""

    image_id: int
    file_name: str
    height: int
    width: int
    sentences: list[str]
    ann_ids: list[int]


class ReferSplit:
    """A split of a refer-toolkit data set (module docstring)."""

    def __init__(self, root: str | Path, dataset: str = "refcoco", split: str = "val",
                 split_by: str | None = None):
        folder = Path(root) / dataset
        split_by = split_by or SPLIT_BY.get(dataset, "unc")
        refs_file, instances_file = folder / f"refs({split_by}).p", folder / "instances.json"
        missing = [str(p) for p in (refs_file, instances_file) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{missing} not found: expected the refer toolkit's layout ROOT/{dataset}/"
                f"refs({split_by}).p and ROOT/{dataset}/instances.json")
        with refs_file.open("rb") as f:
            refs = pickle.load(f, encoding="latin1")
        instances = json.loads(instances_file.read_text())
        self.images = {im["id"]: im for im in instances["images"]}
        self.annotations = {a["id"]: a for a in instances["annotations"]}
        chosen = [r for r in refs if r["split"] == split]
        if not chosen:
            raise ValueError(f"no refs of split {split!r} in {refs_file} "
                             f"(splits there: {sorted({r['split'] for r in refs})})")
        by_image: dict[int, ReferImage] = {}
        for ref in chosen:  # Sa2VA's order: images as refs list them, sentences ref by ref
            im = self.images[ref["image_id"]]
            entry = by_image.setdefault(ref["image_id"], ReferImage(
                im["id"], im["file_name"], im["height"], im["width"], [], []))
            for sent in ref["sentences"]:
                entry.sentences.append(sent["sent"])
                entry.ann_ids.append(ref["ann_id"])
        self.split = list(by_image.values())

    def mask(self, ann_id: int, image: ReferImage) -> np.ndarray:
        """The annotation's mask, bool [H, W] (polygons or RLE; parts united)."""
        from pycocotools import mask as coco_mask

        seg = self.annotations[ann_id]["segmentation"]
        if not seg:
            return np.zeros((image.height, image.width), bool)
        if isinstance(seg, list):  # polygons
            rles = coco_mask.frPyObjects(seg, image.height, image.width)
        elif isinstance(seg["counts"], list):  # uncompressed RLE
            rles = [coco_mask.frPyObjects(seg, image.height, image.width)]
        else:  # compressed RLE
            counts = seg["counts"]
            rles = [dict(seg, counts=counts.encode() if isinstance(counts, str) else counts)]
        decoded = coco_mask.decode(rles)
        return decoded.reshape(image.height, image.width, -1).sum(-1) > 0


def scores(pairs: Iterable[tuple[np.ndarray | None, np.ndarray]]) -> dict[str, float]:
    """cIoU, gIoU and the sentence count over (prediction or None, ground truth) bool masks."""
    inter = union = 0.0
    per: list[float] = []
    for pred, gt in pairs:
        gt = np.asarray(gt, bool)
        pred = np.zeros_like(gt) if pred is None else np.asarray(pred, bool)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        i, u = float((pred & gt).sum()), float((pred | gt).sum())
        inter, union = inter + i, union + u
        per.append(1.0 if u == 0 else i / (u + 1e-5))
    return {"cIoU": inter / (union + 1e-10), "gIoU": float(np.mean(per)) if per else 0.0,
            "sentences": float(len(per))}


def run(model_dir: str | Path, root: str | Path, images: str | Path, out: str | Path,
        strategies: Sequence[str], keeps: Sequence[float], dataset: str = "refcoco",
        split: str = "val", split_by: str | None = None, limit: int | None = None,
        max_new_tokens: int = 64, dtype: Any = None, device: Any = None,
        progress: bool = True) -> list[dict[str, Any]]:
    """Segment every sentence of a split unpruned and per (strategy, keep) with a grounding
    model that has ``refer`` (Sa2VA); writes ``out/results.json``, ``out/table.md`` and
    ``out/keep_plot.png`` (cIoU, gIoU against keep per strategy) and returns one row per setting. ``limit`` takes the first N images."""
    from PIL import Image
    from tqdm import tqdm

    from ..backbones.handle import attach
    from . import load
    from .grandf_run import _costs, _prompt_counts, _setting_name

    model = load(model_dir, **({"dtype": dtype} if dtype is not None else {}),
                 **({"device": device} if device is not None else {}))
    if not hasattr(model, "refer"):
        raise TypeError(f"{type(model).__name__} has no refer(); referring segmentation runs Sa2VA")
    data = ReferSplit(root, dataset, split, split_by)
    chosen = data.split[:limit] if limit is not None else data.split
    truth = {(im.image_id, k): data.mask(a, im) for im in chosen for k, a in enumerate(im.ann_ids)}
    settings: list[tuple[str | None, float | None]] = [(None, None)]
    settings += [(s, k) for s in strategies for k in keeps]
    rows = []
    for strategy, keep in settings:
        name = _setting_name(strategy, keep)
        handle = attach(model, strategy, keep=keep) if strategy is not None and keep is not None else None
        pairs, counts, seconds = [], [], 0.0
        try:
            for im in tqdm(chosen, desc=name, disable=not progress):
                pixels = np.asarray(Image.open(Path(images) / im.file_name).convert("RGB"))
                t0 = time.perf_counter()
                results = model.ground([pixels] * len(im.sentences), max_new_tokens=max_new_tokens,
                                       questions=[model.meta["refer_question"].format(s) for s in im.sentences])
                seconds += time.perf_counter() - t0
                for k, r in enumerate(results):
                    counts.append(_prompt_counts(model, r))
                    pairs.append((r.masks.any(0).numpy() if r.masks.shape[0] else None, truth[(im.image_id, k)]))
        finally:
            if handle is not None:
                handle.detach()
        visual, total = (round(float(np.mean(c))) for c in zip(*counts))
        tokens, flops = _costs(model, strategy, keep, visual, total)
        rows.append({"setting": name, "strategy": strategy or "unpruned", "keep": keep,
                     "visual_tokens_per_layer": tokens, "flops_ratio": flops,
                     "seconds_per_sentence": seconds / max(len(pairs), 1), **scores(pairs)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "table.md").write_text(table(rows) + "\n")
    plot_keeps(rows, ("cIoU", "gIoU"), out / "keep_plot.png", title=f"{dataset} {split}")
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`run`'s rows."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["setting"], f"{r['visual_tokens_per_layer']:.1f}", f"{r['flops_ratio']:.0%}",
            f"{r['cIoU']:.3f}", f"{r['gIoU']:.3f}", f"{int(r['sentences'])}",
            f"{r['seconds_per_sentence']:.2f}"]) + " |")
    return "\n".join(lines)


def export_scenes(out: str | Path, dataset: str = "refcoco", split: str = "val", count: int = 3,
                  sizes: Sequence[tuple[int, int]] = ((96, 128), (128, 96))) -> tuple[Path, Path]:
    """Stand-in scenes as a refer-toolkit split: ``out/images/*.png`` and
    ``out/refs/DATASET/{refs(unc).p, instances.json}`` (each shape's phrase a sentence, its
    mask as an RLE annotation); returns (refs root, images)."""
    from PIL import Image

    from . import grandf
    from .scenes import SceneConfig, make_scene

    root = Path(out)
    images, folder = root / "images", root / "refs" / dataset
    images.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    for k in range(count):
        scene = make_scene(split, k, SceneConfig())
        h, w = sizes[k % len(sizes)]
        name = f"scene_{split}_{k:04d}.png"
        Image.fromarray((scene.image * 255).round().astype(np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR).save(images / name)
        entries.append({"id": k + 1, "file_name": name, "height": h, "width": w})
        for m, phrase in zip(scene.masks, scene.phrases):
            small = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
                (w, h), Image.Resampling.NEAREST)) > 127
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": grandf.rle_encode(small), "area": int(small.sum())})
            refs.append({"ref_id": len(refs), "ann_id": anns[-1]["id"], "image_id": k + 1,
                         "split": split, "category_id": 1, "sentences": [{"sent": phrase}]})
    (folder / "instances.json").write_text(json.dumps(
        {"images": entries, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))
    with (folder / f"refs({SPLIT_BY.get(dataset, 'unc')}).p").open("wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root / "refs", images
