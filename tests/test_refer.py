"""Referring segmentation: cIoU / gIoU as Sa2VA computes them, the refer-toolkit layout, runs."""

from __future__ import annotations

import numpy as np
import pytest

from vtprune.grounding import refer


def box(h, w, top, left, bottom, right):
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


def test_ciou_and_giou_hand_computed():
    gt1, pred1 = box(4, 4, 0, 0, 2, 2), box(4, 4, 0, 0, 2, 4)   # I 4, U 8 -> 0.5
    gt2, pred2 = box(4, 4, 0, 0, 4, 4), box(4, 4, 0, 0, 1, 4)   # I 4, U 16 -> 0.25
    gt3 = np.zeros((4, 4), bool)                                  # both empty -> 1
    gt4 = box(4, 4, 3, 3, 4, 4)                                   # no prediction: I 0, U 1 -> 0
    out = refer.scores([(pred1, gt1), (pred2, gt2), (gt3.copy(), gt3), (None, gt4)])
    assert out["cIoU"] == pytest.approx(8 / 25)
    assert out["gIoU"] == pytest.approx((4 / (8 + 1e-5) + 4 / (16 + 1e-5) + 1 + 0) / 4)
    assert out["sentences"] == 4
    with pytest.raises(ValueError, match="differ in size"):
        refer.scores([(np.zeros((2, 2), bool), gt1)])


def test_the_refer_toolkit_layout_round_trips(tmp_path):
    from PIL import Image

    root, images = refer.export_scenes(tmp_path, count=2)
    data = refer.ReferSplit(root, "refcoco", "val")
    assert len(data.split) == 2
    first = data.split[0]
    assert first.sentences and len(first.sentences) == len(first.ann_ids)
    mask = data.mask(first.ann_ids[0], first)
    assert mask.shape == (first.height, first.width) and mask.any()
    assert Image.open(images / first.file_name).size == (first.width, first.height)
    with pytest.raises(ValueError, match="splits there"):
        refer.ReferSplit(root, "refcoco", "testA")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\).p"):
        refer.ReferSplit(root, "refcocog", "val")


def test_polygon_annotations_decode():
    data = refer.ReferSplit.__new__(refer.ReferSplit)
    data.annotations = {1: {"segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]}}
    image = refer.ReferImage(1, "x.png", 6, 6, ["a"], [1])
    assert data.mask(1, image)[:4, :4].sum() >= 9


def test_run_tabulates_pruning_settings(tiny_sa2va_dir, tmp_path):
    root, images = refer.export_scenes(tmp_path / "data", count=2)
    rows = refer.run(tiny_sa2va_dir, root, images, tmp_path / "out", ["fastv"], [0.1],
                     max_new_tokens=4, progress=False)
    assert [r["setting"] for r in rows] == ["unpruned", "fastv_keep0.1"]
    assert rows[1]["flops_ratio"] < 1 and rows[1]["visual_tokens_per_layer"] < rows[0]["visual_tokens_per_layer"]
    assert rows[0]["sentences"] > 0 and 0 <= rows[0]["cIoU"] <= 1
    assert refer.table(rows) == (tmp_path / "out" / "table.md").read_text().strip()
    assert (tmp_path / "out" / "keep_plot.png").stat().st_size > 0


def test_keep_plot_draws_each_strategy_and_skips_empty_metrics(tmp_path):
    from PIL import Image

    from vtprune.grounding.keep_plot import plot_keeps

    rows = [{"strategy": "unpruned", "keep": None, "cIoU": 0.5, "miou": None}]
    rows += [{"strategy": s, "keep": k, "cIoU": k / 2, "miou": None}
             for s in ("altp", "fastv") for k in (0.1, 0.25, 1.0)]
    path = plot_keeps(rows, ("cIoU", "miou"), tmp_path / "p.png", title="t")
    assert path is not None and Image.open(path).size[0] > 100
    assert plot_keeps(rows, ("miou",), tmp_path / "q.png") is None and not (tmp_path / "q.png").exists()
