"""``vtprune demo --model tiny`` end to end (CI-sized: a few seconds); the default
(grounding) demo is tested in test_grounding_demo.py."""

import json

import pytest

import vtprune
from vtprune.cli import main
from vtprune.demo import run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(keep=0.25, out_dir=out, new_tokens=2, repeats=1, print_fn=None)


def test_demo_runs_every_registered_strategy(demo):
    names = [r["strategy"] for r in demo["rows"]]
    assert names == ["unpruned", *vtprune.list_strategies()]
    errors = {r["strategy"]: r["error"] for r in demo["rows"] if r["error"]}
    assert not errors, errors
    for r in demo["rows"][1:]:
        assert 0 < r["flops_ratio"] < 1
        assert 0 <= r["agreement"] <= 1
        assert r["prefill_speedup"] > 0 and r["llm_speedup"] > 0
        assert "of 576" in r["kept"]
    pre = [r for r in demo["rows"] if r["schedule"] == "pre:144"]
    assert pre and all(r["kept"] == "pre: 144/144 of 576" for r in pre)


def test_demo_writes_its_files_and_says_weights_are_random(demo):
    files = demo["files"]
    data = json.loads(open(files["json"]).read())
    assert data["keep"] == 0.25 and len(data["rows"]) == len(demo["rows"])
    text = open(files["markdown"]).read()
    assert "Random weights" in text and "| fastv |" in text
    with open(files["picture"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_keep_all_agrees_exactly_with_the_unpruned_model(tmp_path):
    result = run_demo(keep=1.0, out_dir=tmp_path, strategies=["uniform", "fastv"], new_tokens=3,
                      repeats=1, print_fn=None)
    for r in result["rows"]:
        assert r["error"] is None, r["error"]
        assert r["agreement"] == 1.0 and r["flops_ratio"] == 1.0


def test_cli_demo_prints_where_files_went(tmp_path, capsys):
    assert main(["demo", "--model", "tiny", "--strategies", "random", "--out", str(tmp_path), "--new-tokens", "1",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "demo.md") in out and "Random weights" in out
    with pytest.raises(SystemExit):
        main(["demo", "--keep", "1.5"])
