"""``vtprune bench overhead`` wiring (the benchmark itself is tested by its author)."""

import json

import pytest

from vtprune.cli import main


def test_bench_overhead_quick_writes_table_and_json(tmp_path, capsys):
    rc = main(["bench", "overhead", "--quick", "--strategies", "uniform,random,visionzip,cdpruner,dart,sparsevlm",
               "--repeats", "2", "--dim", "32", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "overhead.json").read_text())  # signals the new methods need
    assert {r["strategy"] for r in rows} == {"uniform", "random", "visionzip", "cdpruner", "dart", "sparsevlm"}
    table = (tmp_path / "overhead.md").read_text()
    out = capsys.readouterr().out
    assert "uniform" in table and table.strip() in out
    assert str(tmp_path / "overhead.json") in out


def test_bench_needs_a_subcommand():
    with pytest.raises(SystemExit):
        main(["bench"])


def test_bench_overhead_batches_report_per_sample_cost_ratio_and_syncs(tmp_path):
    rc = main(["bench", "overhead", "--quick", "--strategies", "uniform,altp", "--repeats", "1",
               "--dim", "16", "--batch", "1,3", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "overhead.json").read_text())
    assert {(r["strategy"], r["batch"]) for r in rows} >= {("uniform", 1), ("uniform", 3), ("altp", 3)}
    for r in rows:
        assert r["cpu_ms_per_sample"] == pytest.approx(r["cpu_median_ms"] / r["batch"], abs=1e-3)
        assert r["x_fastv"] > 0 and r["host_syncs"] >= 1
    with pytest.raises(SystemExit):
        main(["bench", "overhead", "--batch", "0"])


def test_bench_overhead_canvas_rows_have_their_own_grids_and_constant_syncs(tmp_path):
    rc = main(["bench", "overhead", "--quick", "--strategies", "uniform,altp,pool", "--repeats", "1",
               "--dim", "16", "--batch", "4,20", "--canvas", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "overhead.json").read_text())
    assert {r["distinct_grids"] for r in rows} == {4, 16}  # 20 rows: the grids repeat after 16
    assert all("canvas" in r["image"] for r in rows)
    syncs = {(r["strategy"], r["backend"]): set() for r in rows}
    for r in rows:
        syncs[(r["strategy"], r["backend"])].add(r["host_syncs"])
    assert all(len(counts) == 1 for counts in syncs.values()), syncs  # the same at 4 and 16 grids
