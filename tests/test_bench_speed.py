"""Speed-benchmark harness on a tiny model in quick mode: structure, not timings."""

import json

import pytest
import torch

from vtprune.bench.memory import PeakRSS, rss_bytes
from vtprune.bench.report import format_markdown, format_table, write_outputs
from vtprune.bench.speed import (
    QUICK,
    BenchConfig,
    cache_bytes,
    run_speed,
    summarize,
    with_overrides,
)
from vtprune.cli import main


@pytest.fixture(scope="module")
def quick_result():
    return run_speed(QUICK, strategies=["uniform", "fastv"], progress=False)


def test_quick_run_structure_and_ratios(quick_result):
    r = quick_result
    assert {"config", "environment", "model", "baseline", "rows"} <= set(r)
    assert r["environment"]["torch_threads"] == QUICK.threads
    assert [(row["strategy"], row["keep"]) for row in r["rows"]] == [("uniform", 0.25), ("fastv", 0.25)]
    for row in r["rows"]:
        assert row["error"] is None, row["error"]
        for key in ("llm_prefill", "e2e_prefill", "generate_b1", "generate_b2"):
            cell = row[key]
            assert cell["n"] == QUICK.repeats
            assert 0 < cell["min"] <= cell["paired_median"] <= cell["max"]
            assert cell["speedup"] > 0 and cell["best"] > 0
            assert cell["pruned_s"] > 0 and cell["unpruned_s"] > 0
        assert 0 < row["flops_prefill_ratio"] < 1
        assert row["ideal_llm_prefill"] == pytest.approx(1 / row["flops_prefill_ratio"])
        assert row["efficiency_llm_prefill"] > 0
        assert 0 <= row["prune_share"]["median"] < 1
    uniform, fastv = r["rows"]
    assert uniform["schedule"] == "pre:144" and fastv["schedule"] == "L2:144"
    assert uniform["avg_visual"] == 144 and fastv["avg_visual"] == (576 * 2 + 144 * 2) / 4


def test_measured_kv_cache_bytes_equal_the_accounting(quick_result):
    # float32 cache; after generate it holds the prompt plus new_tokens - 1 tokens per layer
    for row in quick_result["rows"]:
        assert row["kv_bytes"]["pruned"] == row["kv_bytes_accounted"]
        assert row["kv_bytes"]["unpruned"] == row["kv_bytes_accounted_unpruned"]
        assert row["kv_bytes"]["ratio"] == pytest.approx(row["kv_ratio_accounted"])
        assert row["kv_bytes"]["ratio"] < 1


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_vl_moe"])
def test_quick_run_on_qwen3_vl(family):
    """`--family qwen3_vl`: a 768 px image (24 x 24 tokens of 32 px), DeepStack in the LLM,
    FastV's cache accounted exactly."""
    cfg = with_overrides(QUICK, family=family)
    r = run_speed(BenchConfig(**{**cfg.__dict__, "batches": (1,)}), strategies=["fastv"], progress=False)
    assert r["model"]["family"] == family and r["model"]["visual_tokens"] == 576
    (row,) = r["rows"]
    assert row["error"] is None, row["error"]
    assert row["schedule"] == "L2:144" and row["kv_bytes"]["pruned"] == row["kv_bytes_accounted"]


def test_table_json_and_plot_render(quick_result, tmp_path):
    table = format_table(quick_result)
    assert table.count("\n") == 1 + len(quick_result["rows"])
    assert "| uniform | 0.25 | pre:144 |" in table
    md = format_markdown(quick_result)
    assert "threads" in md and "random weights" in md.lower()
    paths = write_outputs(quick_result, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"][0]["strategy"] == "uniform"
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failing_strategy_becomes_an_error_row(tmp_path):
    cfg = with_overrides(QUICK, keeps=[0.5])
    cfg = BenchConfig(**{**cfg.__dict__, "text": {**QUICK.text, "num_hidden_layers": 1}})
    r = run_speed(cfg, strategies=["fastv"], progress=False)  # FastV needs 1 <= K < depth
    assert r["rows"][0]["error"] and "layer" in r["rows"][0]["error"]
    assert "not run" in format_table(r)


def test_cli_bench_speed_quick(tmp_path, capsys):
    rc = main(["bench", "speed", "--quick", "--strategies", "random", "--out", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    assert (tmp_path / "speed.json").exists() and (tmp_path / "speed.png").exists()
    assert "| random |" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["bench", "speed", "--keeps", "0.5,2"], ["bench", "speed", "--keeps", "x"]])
def test_cli_rejects_bad_keeps(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_unknown_strategy_and_bad_config_raise():
    with pytest.raises(ValueError, match="unknown strategies"):
        run_speed(QUICK, strategies=["nope"], progress=False)
    with pytest.raises(ValueError, match="keeps"):
        BenchConfig(keeps=(0.0,))
    with pytest.raises(ValueError, match="batches"):
        BenchConfig(batches=(9,))


def test_summarize_and_cache_bytes():
    s = summarize([2.0, 3.0, 4.0], [1.0, 1.0, 2.0])
    assert s["speedup"] == 3.0  # median 3 / median 1
    assert s["paired_median"] == 2.0 and s["min"] == 2.0 and s["max"] == 3.0 and s["n"] == 3
    assert s["best"] == 2.0
    from transformers import DynamicCache

    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4), 0)
    assert cache_bytes(cache) == 2 * 1 * 2 * 5 * 4 * 4


def test_peak_rss_sees_a_large_allocation():
    if rss_bytes() is None:
        pytest.skip("no /proc on this system")
    with PeakRSS(interval=0.001) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        block.add_(1)
    del block
    assert peak.delta is not None and peak.delta > 32 * 2**20
