"""Sa2VA through the GranD-f GCG run (the same command and metric code as GLaMM) and the new-user
path of docs/sa2va.md: script -> vtprune convert sa2va -> vtprune grandf run / vtprune refer run."""

from __future__ import annotations

import runpy
import sys

from vtprune.grounding.grandf_run import export_scenes, run


def test_grandf_run_takes_a_sa2va(tiny_sa2va_dir, tmp_path):
    images, annotations = export_scenes(tmp_path / "grandf", "val", 2)
    rows = run(tiny_sa2va_dir, images, annotations, tmp_path / "gcg", ["altp"], [0.1],
               max_new_tokens=6, batch_size=2, progress=False, captions=False)
    assert [r["setting"] for r in rows] == ["unpruned", "altp_keep0.1"]
    assert rows[1]["flops_ratio"] < 1
    assert rows[1]["visual_tokens_per_layer"] < rows[0]["visual_tokens_per_layer"]
    assert len(list((tmp_path / "gcg" / "predictions" / "altp_keep0.1").glob("*.json"))) == 2
    assert (tmp_path / "gcg" / "keep_plot.png").is_file()


def test_new_user_path_through_the_command_line(tmp_path, capsys):
    from vtprune.cli import main

    argv = sys.argv
    sys.argv = ["build_tiny_sa2va.py", str(tmp_path / "tiny"), "--images", "2"]
    try:
        runpy.run_path("scripts/build_tiny_sa2va.py", run_name="__main__")
    finally:
        sys.argv = argv
    tiny = tmp_path / "tiny"
    assert main(["convert", "sa2va", str(tiny / "sa2va"), "--out", str(tiny / "hf")]) == 0
    assert main(["grandf", "run", str(tiny / "hf"), "--images", str(tiny / "grandf/images"),
                 "--annotations", str(tiny / "grandf/annotations"), "--strategies", "fastv",
                 "--keeps", "0.1", "--max-new-tokens", "4", "--no-captions", "--out", str(tiny / "gcg")]) == 0
    assert main(["refer", "run", str(tiny / "hf"), "--refs", str(tiny / "refcoco/refs"),
                 "--images", str(tiny / "refcoco/images"), "--strategies", "uniform", "--keeps", "0.1",
                 "--max-new-tokens", "4", "--out", str(tiny / "ref")]) == 0
    text = capsys.readouterr().out
    assert "fastv_keep0.1" in text and "uniform_keep0.1" in text and "cIoU" in text
