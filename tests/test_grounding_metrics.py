"""Grounding metrics against hand computations and pycocotools."""

from __future__ import annotations

import numpy as np
import pytest

from vtprune.grounding.metrics import average_precision, evaluate_image, iou_matrix, summarise


def box(r0: int, c0: int, r1: int, c1: int, n: int = 10) -> np.ndarray:
    m = np.zeros((n, n), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_iou_by_hand() -> None:
    a = box(0, 0, 4, 4)        # 16 px
    b = box(2, 2, 6, 6)        # 16 px, overlap 4
    iou = iou_matrix(np.stack([a, b]), np.stack([b]))
    assert iou[0, 0] == pytest.approx(4 / 28)
    assert iou[1, 0] == 1.0


def test_miou_uses_one_to_one_matching_and_zero_for_missed() -> None:
    g1, g2 = box(0, 0, 4, 4), box(5, 5, 9, 9)
    # Two predictions both near g1: only one may be matched to it; g2 gets the other (IoU 0).
    p1, p2 = box(0, 0, 4, 4), box(0, 0, 4, 3)
    r = evaluate_image(np.stack([p1, p2]), [0.9, 0.8], ["a", "a"],
                       np.stack([g1, g2]), ["a", "b"])
    assert sorted(r.matched_iou.tolist()) == [0.0, 1.0]
    # A missed object counts 0.
    r = evaluate_image(np.zeros((0, 10, 10), bool), [], [], np.stack([g1]), ["a"])
    assert r.matched_iou.tolist() == [0.0]


def test_recall_needs_phrase_and_iou_above_half() -> None:
    g = box(0, 0, 4, 4)
    good = evaluate_image(np.stack([g]), [1.0], ["red circle"], np.stack([g]), ["red circle"])
    wrong = evaluate_image(np.stack([g]), [1.0], ["blue circle"], np.stack([g]), ["red circle"])
    half = evaluate_image(np.stack([box(0, 0, 4, 2)]), [1.0], ["red circle"], np.stack([g]),
                          ["red circle"])   # IoU exactly 0.5 -> not found
    assert good.found.tolist() == [True]
    assert wrong.found.tolist() == [False]
    assert half.found.tolist() == [False]


def test_ap50_by_hand() -> None:
    # Image 1: two GT; predictions: TP (0.9), FP (0.8), TP (0.7). Image 2: one GT, missed.
    g1, g2, g3 = box(0, 0, 4, 4), box(5, 5, 9, 9), box(0, 5, 4, 9)
    r1 = evaluate_image(np.stack([g1, box(5, 0, 9, 4), g2]), [0.9, 0.8, 0.7], ["x"] * 3,
                        np.stack([g1, g2]), ["x", "x"])
    r2 = evaluate_image(np.zeros((0, 10, 10), bool), [], [], np.stack([g3]), ["x"])
    # Sorted: TP, FP, TP -> recall 1/3, 1/3, 2/3; precision 1, 1/2, 2/3 -> monotone 1, 2/3, 2/3.
    # 101 points r in [0, 1/3] -> 1 (34 points: 0.00..0.33), (1/3, 2/3] -> 2/3 (33 points:
    # 0.34..0.66), above 2/3 -> 0.
    expected = (34 * 1.0 + 33 * (2 / 3)) / 101
    assert average_precision([r1, r2]) == pytest.approx(expected)


def test_ap50_matches_pycocotools() -> None:
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_util
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    n = 24
    images, anns, dets, results = [], [], [], []
    aid = 1
    for img in range(12):
        gts = []
        for _ in range(int(rng.integers(1, 4))):
            r0, c0 = rng.integers(0, n - 8, size=2)
            h, w = rng.integers(3, 8, size=2)
            gts.append(box(r0, c0, r0 + h, c0 + w, n))
        preds, scores = [], []
        for g in gts:
            if rng.random() < 0.8:
                dr, dc = rng.integers(-1, 2, size=2)
                preds.append(np.roll(g, (dr, dc), axis=(0, 1)))
                scores.append(float(rng.random()))
        for _ in range(int(rng.integers(0, 2))):
            r0, c0 = rng.integers(0, n - 6, size=2)
            preds.append(box(r0, c0, r0 + 5, c0 + 5, n))
            scores.append(float(rng.random()))
        images.append({"id": img + 1, "width": n, "height": n})
        for g in gts:
            rle = mask_util.encode(np.asfortranarray(g.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": aid, "image_id": img + 1, "category_id": 1, "segmentation": rle,
                         "area": float(g.sum()), "bbox": list(mask_util.toBbox(rle)), "iscrowd": 0})
            aid += 1
        for p, s in zip(preds, scores):
            rle = mask_util.encode(np.asfortranarray(p.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            dets.append({"image_id": img + 1, "category_id": 1, "segmentation": rle, "score": s})
        pm = np.stack(preds) if preds else np.zeros((0, n, n), bool)
        results.append(evaluate_image(pm, scores, ["x"] * len(preds), np.stack(gts),
                                      ["x"] * len(gts)))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "o"}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "segm")
    ev.params.maxDets = [1, 10, 100]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    ours = average_precision(results)
    theirs = float(ev.eval["precision"][0, :, 0, 0, -1].mean())  # IoU 0.5, all areas, 100 dets
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert 0.2 < ours < 0.95  # the case is not trivial


def test_summarise_and_errors() -> None:
    g = box(0, 0, 4, 4)
    r = evaluate_image(np.stack([g]), [1.0], ["a"], np.stack([g, box(6, 6, 8, 8)]), ["a", "b"],
                       small_area=10)
    s = summarise([r])
    assert s["miou"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(0.5)
    assert s["miou_small"] == 0.0
    with pytest.raises(ValueError, match="as many scores"):
        evaluate_image(np.stack([g]), [], [], np.stack([g]), ["a"])
    with pytest.raises(ValueError, match="resize predictions"):
        iou_matrix(np.zeros((1, 5, 5), bool), np.zeros((1, 6, 6), bool))
