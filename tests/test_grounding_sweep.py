"""``vtprune bench grounding-sweep``: parameter sweeps on val through the benchmark's path."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from vtprune.cli.args import key_values as _param
from vtprune.grounding.bench import run_grounding_bench
from vtprune.grounding.metrics import ImageResult
from vtprune.grounding.model import GroundingModel, load_pretrained
from vtprune.grounding.sweep import (
    combinations,
    format_sweep_markdown,
    paired_delta,
    run_param_sweep,
)


@pytest.fixture(scope="module")
def model() -> GroundingModel:
    torch.set_num_threads(1)
    return load_pretrained()


def test_combinations_in_grid_order() -> None:
    assert combinations({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    with pytest.raises(ValueError, match=r"\['b'\] have no values"):
        combinations({"a": [1], "b": []})


@pytest.mark.parametrize("split", ["test", "test_small"])
def test_refuses_to_tune_on_test(split: str) -> None:
    with pytest.raises(ValueError, match="never|tune to the test set"):
        run_param_sweep("altp", {"segment_ratio": [0.5]}, split=split)


def test_rejects_bad_values_before_running() -> None:
    with pytest.raises(ValueError, match="altp rejects .*density"):
        run_param_sweep("altp", {"density": ["dispersion", "bogus"]}, limit=1,
                        model=None, progress=False)
    with pytest.raises(ValueError, match="unknown strategy"):
        run_param_sweep("nope", {"a": [1]})


def test_sweep_reproduces_the_benchmark_row(model: GroundingModel) -> None:
    sweep = run_param_sweep("altp", {"segment_ratio": [0.5, 2.0]}, keeps=(0.25,), limit=4,
                            model=model, progress=False)
    assert [r["params"] for r in sweep["rows"]] == [{"segment_ratio": 0.5},
                                                   {"segment_ratio": 2.0}]
    best = sweep["best"]
    assert best["mean_miou"] == max(r["scores"]["miou"] for r in sweep["rows"])
    # The default (segment_ratio 0.5) is exactly what the benchmark runs for altp.
    bench = run_grounding_bench(["altp"], keeps=(0.25,), split="val", limit=4,
                                positions=("original",), progress=False, model=model,
                                small_split=None)
    row = next(r for r in bench["rows"] if r["positions"] == "original")
    assert sweep["rows"][0]["scores"]["miou"] == pytest.approx(row["scores"]["val"]["miou"])
    assert sweep["unpruned"]["miou"] == pytest.approx(bench["unpruned"]["val"]["miou"])
    table = format_sweep_markdown(sweep)
    assert table.count("\n|") == 3  # header rule + 2 rows
    assert f"**{best['params']['segment_ratio']}**" in table
    worse = next(r for r in sweep["rows"] if r["params"] != best["params"])
    assert worse["delta_vs_best"] <= 0.0 and worse["delta_se"] >= 0.0
    assert f"{worse['delta_vs_best']:+.3f} ± {worse['delta_se']:.3f}" in table


def _results(ious: list[list[float]]) -> list[ImageResult]:
    return [ImageResult(np.array(v), np.zeros(0), np.zeros((0, len(v))), np.zeros(len(v), bool))
            for v in ious]


def test_paired_delta() -> None:
    rng = np.random.default_rng(0)
    base = [list(rng.random(int(k))) for k in rng.integers(1, 6, 40)]
    better = [[min(1.0, v + 0.05) for v in img] for img in base]
    a, b = [_results(better)] * 2, [_results(base)] * 2        # two keeps, same scenes
    delta, se = paired_delta(a, b)
    flat = np.concatenate([np.array(v) for v in better]) - np.concatenate([np.array(v) for v in base])
    assert delta == pytest.approx(flat.mean())
    assert 0.0 < se < 0.01                                    # pairing removes the scene spread
    assert paired_delta(b, b) == (0.0, 0.0)
    assert paired_delta(b, a)[0] == pytest.approx(-delta)


def test_param_parsing() -> None:
    assert _param("segment_ratio=0.25,0.5") == ("segment_ratio", [0.25, 0.5])
    assert _param("n_segments=none, 16") == ("n_segments", [None, 16])
    assert _param("density=dispersion,gradient") == ("density", ["dispersion", "gradient"])
    for bad in ("segment_ratio", "=1", "x="):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=V1,V2"):
            _param(bad)
