"""vtprune.bench.slic_quality: the segmentation metrics and the reports' plumbing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vtprune.bench import slic_quality as sq


def test_perfect_superpixels_score_perfectly():
    gt = np.zeros((20, 20), dtype=np.int64)
    gt[5:12, 4:15] = 1
    s = sq.segmentation_scores(gt * 7 + 3, gt)  # label values do not matter
    assert s == {"br": 1.0, "ue": 0.0, "asa": 1.0, "segments": 2.0, "components": 2.0,
                 "edge_share": pytest.approx(float(sq._edges(gt).mean()))}


def test_one_superpixel_over_two_objects():
    gt = np.zeros((10, 10), dtype=np.int64)
    gt[:, 7:] = 1  # 70 / 30 pixels
    s = sq.segmentation_scores(np.zeros_like(gt), gt)
    assert s["br"] == 0.0 and s["segments"] == 1.0
    assert s["asa"] == pytest.approx(0.7)
    assert s["ue"] == pytest.approx((30 + 30) / 100)  # each segment leaks min(in, out) = 30


def test_fragments_count_as_pieces_and_raise_edge_share():
    gt = np.zeros((10, 10), dtype=np.int64)
    sp = np.zeros((10, 10), dtype=np.int64)
    sp[0, 0] = sp[9, 9] = 1  # one label in two pieces
    s = sq.segmentation_scores(sp, gt)
    assert s["segments"] == 2.0 and s["components"] == 3.0 and s["edge_share"] > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        sq.segmentation_scores(np.zeros((3, 3), dtype=np.int64), np.zeros((3, 4), dtype=np.int64))


def test_ground_truth_from_masks():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True
    masks[1, 3, 3] = True
    gt = sq.ground_truth(masks)
    assert gt[0, 0] == 1 and gt[3, 3] == 2 and gt[2, 0] == 0


def test_quality_report_on_two_scenes(tmp_path):
    assert sq.main(["quality", "--split", "val", "--limit", "2", "--backends", "torch,skimage",
                    "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "slic_quality.json").read_text())
    assert {(r["backend"], r["level"]) for r in result["rows"]} == {
        (b, lv) for b in ("torch", "skimage") for lv in ("pixel", "token")}
    assert all(0 <= r["br"] <= 1 and 0 <= r["ue"] <= 1 and 0 < r["asa"] <= 1 for r in result["rows"])
    assert "| token | 0.1 | 7 | torch |" in (tmp_path / "slic_quality.md").read_text()


def test_speed_report_has_every_backend_and_batch():
    result = sq.run_speed(batches=(1, 2), sizes=((48, 6),), repeats=1, backends=["torch", "skimage"])
    assert [(r["batch"], r["backend"]) for r in result["rows"]] == [
        (1, "torch"), (1, "skimage"), (2, "torch"), (2, "skimage")]
    assert all(r["ms_per_image"] > 0 for r in result["rows"])
    assert sq.format_speed(result).count("\n") == 5  # head, rule, 2 rows, blank, note
