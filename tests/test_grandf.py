"""GranD-f metrics as GLaMM's evaluate.py computes them, and the evaluation run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vtprune.grounding import grandf
from vtprune.grounding.grandf_run import export_scenes, run, table


def box(h, w, top, left, bottom, right):
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


def test_greedy_miou_hand_computed():
    a, b = box(10, 10, 0, 0, 4, 5), box(10, 10, 5, 5, 10, 10)  # 20 and 25 pixels
    assert grandf.greedy_miou([a, b], [a, b]) == 1.0
    half = box(10, 10, 0, 0, 2, 5)  # 10 of a's 20 pixels
    assert grandf.greedy_miou([half], [a, b]) == pytest.approx(0.5)   # one pair, b unpaired
    assert grandf.greedy_miou([], [a]) == 0.0
    # greedy, not Hungarian: the best pair is taken first
    big = box(10, 10, 0, 0, 4, 10)  # 40 px, covers a (20) -> IoU 0.5, b overlap 0
    assert grandf.greedy_miou([big, a], [a]) == pytest.approx(1.0)


def test_recall_needs_iou_and_text_and_stops_at_the_first_failure():
    a, b = box(10, 10, 0, 0, 4, 5), box(10, 10, 5, 5, 10, 10)
    sims = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert grandf.recall_matches([a, b], [a, b], sims) == 2
    assert grandf.recall_matches([a, b], [a, b], np.array([[0.9, 0.1], [0.1, 0.4]])) == 1
    # the best-IoU pair (the first maximum) fails on text: GLaMM stops there, though b matches
    assert grandf.recall_matches([a, b], [a, b], np.array([[0.4, 0.1], [0.1, 0.9]])) == 0
    assert grandf.recall_matches([a], [a, b], np.array([[0.9, 0.9]])) == 1
    # more masks than phrases, the chosen pair out of range: no pair (GLaMM's IndexError)
    assert grandf.recall_matches([a], [b, a], np.array([[0.9]])) == 0


def test_rle_round_trip_matches_pycocotools():
    m = box(7, 9, 1, 2, 5, 8)
    rle = grandf.rle_encode(m)
    assert isinstance(rle["counts"], str) and rle["size"] == [7, 9]
    assert np.array_equal(grandf.rle_decode(rle), m)
    uncompressed = {"size": [2, 2], "counts": [0, 2, 2]}  # column-major: left column set
    assert grandf.rle_decode(uncompressed).tolist() == [[True, False], [True, False]]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return export_scenes(tmp_path_factory.mktemp("grandf"), "val", count=3)


def perfect_predictions(images, annotations, out):
    gt_masks = json.loads((annotations / "val_gcg_coco_mask_gt.json").read_text())
    caps = json.loads((annotations / "val_gcg_coco_caption_gt.json").read_text())
    for cap in caps["annotations"]:
        masks = [grandf.rle_decode(a["segmentation"]) for a in gt_masks["annotations"]
                 if a["image_id"] == cap["image_id"]]
        grandf.write_prediction(out, cap["image_id"], cap["caption"], cap["labels"], np.stack(masks))


def exact_text(a, b):
    return np.array([[1.0 if x == y else 0.0 for y in b] for x in a])


def test_perfect_predictions_score_one(split, tmp_path):
    images, annotations = split
    perfect_predictions(images, annotations, tmp_path)
    res = grandf.score(tmp_path, annotations, "val", similarity=exact_text)
    assert res["ap50"] == pytest.approx(1.0) and res["miou"] == 1.0 and res["recall"] == 1.0
    assert res["n_images"] == 3
    if res["meteor"] is not None:  # Java present
        assert res["cider"] > 1.0 and res["meteor"] > 0.9


def test_glamms_wrapped_prediction_files_and_missing_requirements(split, tmp_path):
    images, annotations = split
    perfect_predictions(images, annotations, tmp_path)
    for p in tmp_path.glob("*.json"):  # GLaMM's reader also takes {"<key>": prediction}
        p.write_text(json.dumps({"wrapped": json.loads(p.read_text())}))
    res = grandf.score(tmp_path, annotations, "val", captions=False)
    assert res["miou"] == 1.0 and res["recall"] is None and res["meteor"] is None
    with pytest.raises(FileNotFoundError, match="annotations/val_test"):
        grandf.score(tmp_path, images, "val")


def test_run_writes_predictions_and_table(tiny_glamm_dir, split, tmp_path):
    images, annotations = split
    rows = run(tiny_glamm_dir, images, annotations, tmp_path, ["fastv"], [0.1],
               max_new_tokens=6, batch_size=2, progress=False, limit=2, captions=False)
    assert [r["setting"] for r in rows] == ["unpruned", "fastv_keep0.1"]
    assert rows[1]["flops_ratio"] < 1 and rows[1]["visual_tokens_per_layer"] < 16
    assert len(list((tmp_path / "predictions" / "fastv_keep0.1").glob("*.json"))) == 2
    text = (tmp_path / "table.md").read_text()
    assert "fastv_keep0.1" in text and "| recall |" in text and "unavailable" in text
    assert table(rows) == text.strip()


def test_new_user_path_through_the_command_line(tmp_path, capsys):
    """scripts/build_tiny_glamm.py -> vtprune convert glamm -> vtprune grandf run / score."""
    import runpy
    import sys

    from vtprune.cli import main

    argv = sys.argv
    sys.argv = ["build_tiny_glamm.py", str(tmp_path / "tiny"), "--images", "2"]
    try:
        runpy.run_path("scripts/build_tiny_glamm.py", run_name="__main__")
    finally:
        sys.argv = argv
    tiny = tmp_path / "tiny"
    assert main(["convert", "glamm", str(tiny / "glamm"), "--clip", str(tiny / "clip"),
                 "--out", str(tiny / "hf")]) == 0
    assert main(["grandf", "run", str(tiny / "hf"), "--images", str(tiny / "grandf/images"),
                 "--annotations", str(tiny / "grandf/annotations"), "--strategies", "altp",
                 "--keeps", "0.1", "--max-new-tokens", "4", "--out", str(tiny / "gcg"),
                 "--no-captions"]) == 0
    assert "altp_keep0.1" in capsys.readouterr().out
    assert main(["grandf", "score", str(tiny / "gcg/predictions/unpruned"), "--annotations",
                 str(tiny / "grandf/annotations"), "--no-captions"]) == 0
    assert '"recall": "unavailable"' in capsys.readouterr().out
    with pytest.raises(SystemExit, match="tokenizer.model not found"):
        main(["convert", "glamm", str(tiny / "clip"), "--clip", str(tiny / "clip"),
              "--out", str(tmp_path / "bad")])


def test_load_still_reads_the_stand_in(tmp_path):
    from vtprune.grounding import GroundingModel, load
    from vtprune.grounding.model import GroundingConfig

    GroundingModel(GroundingConfig()).save(tmp_path)
    assert isinstance(load(tmp_path), GroundingModel)
