"""GranDf-style annotation files: the real-scale input format of the grounding evaluation.

A file is COCO-shaped JSON::

    {"images": [{"id": 1, "file_name": "0001.png", "height": 192, "width": 192}],
     "annotations": [{"image_id": 1, "phrase": "red circle",
                      "segmentation": {"size": [192, 192], "counts": [...]}}]}

``segmentation`` is a COCO RLE: uncompressed (``counts`` a list of run lengths, column-major,
starting with a run of zeros) is read natively; compressed (``counts`` a string, as in the
GranDf release) needs pycocotools. Annotations of an image are its objects in description
order. ``export_split`` writes generated scenes in this format (PNG images + JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .scenes import SceneConfig, make_scene


@dataclass(frozen=True)
class AnnotatedImage:
    """image [H, W, 3] float32 in [0, 1]; masks [n, H, W] bool; phrases in description order."""

    image: np.ndarray
    masks: np.ndarray
    phrases: list[str]


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a boolean [H, W] mask."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """Boolean [H, W] mask of a COCO RLE (uncompressed natively, compressed via pycocotools)."""
    h, w = (int(x) for x in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        try:
            from pycocotools import mask as mask_util
        except ImportError as err:
            raise ImportError("compressed RLE masks need pycocotools: pip install pycocotools") from err
        c = counts.encode() if isinstance(counts, str) else counts
        return mask_util.decode({"size": [h, w], "counts": c}).astype(bool)
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(counts)} but size {h}x{w} needs {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((w, h)).T


def load_annotations(path: str | Path, image_root: str | Path | None = None) -> list[AnnotatedImage]:
    """Read a GranDf-style file; images are resolved against ``image_root`` (default: its folder)."""
    from skimage import io

    p = Path(path)
    doc = json.loads(p.read_text())
    for key in ("images", "annotations"):
        if key not in doc:
            raise ValueError(f"{p} has no {key!r} list; expected the COCO-shaped format "
                             "described in vtprune.grounding.annotations")
    root = Path(image_root) if image_root is not None else p.parent
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    out = []
    for info in doc["images"]:
        im = np.asarray(io.imread(root / info["file_name"]), dtype=np.float32)
        im = im / 255.0 if im.max() > 1.5 else im
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        anns = by_image.get(int(info["id"]), [])
        h, w = im.shape[:2]
        masks = (np.stack([rle_decode(a["segmentation"]) for a in anns]) if anns
                 else np.zeros((0, h, w), dtype=bool))
        out.append(AnnotatedImage(im[..., :3], masks, [str(a["phrase"]) for a in anns]))
    return out


def export_split(directory: str | Path, split: str, count: int,
                 config: SceneConfig | None = None) -> Path:
    """Write the first ``count`` scenes of ``split`` as PNGs plus ``annotations.json``."""
    from skimage import io

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(count):
        s = make_scene(split, i, config)
        name = f"{split}_{i:05d}.png"
        io.imsave(d / name, (s.image * 255).round().astype(np.uint8), check_contrast=False)
        h, w = s.image.shape[:2]
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
        anns += [{"image_id": i + 1, "phrase": ph, "segmentation": rle_encode(m)}
                 for ph, m in zip(s.phrases, s.masks)]
    path = d / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}) + "\n")
    return path
