"""``vtprune demo`` (default: the shipped grounding model) on 2 scenes: outputs and table."""

import json

import pytest

from vtprune.cli import main
from vtprune.grounding.demo import DEMO_STRATEGIES, run_grounding_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("gdemo")
    assert main(["demo", "--scenes", "2", "--repeats", "1", "--no-progress",
                 "--out", str(out)]) == 0
    return out


def test_writes_json_markdown_and_png(demo):
    for name in ("demo.json", "demo.md"):
        assert (demo / name).stat().st_size > 0
    assert (demo / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_has_unpruned_then_each_strategy(demo):
    data = json.loads((demo / "demo.json").read_text())
    rows = data["rows"]
    assert [r["strategy"] for r in rows] == ["unpruned", *DEMO_STRATEGIES]
    assert data["meta"]["scenes"] == 2 and data["meta"]["keep"] == 0.1
    base = rows[0]
    assert base["flops_ratio"] == 1.0 and base["mean_layer_tokens"] == 144
    for r in rows[1:]:
        assert 0 < r["flops_ratio"] < 1 and r["mean_layer_tokens"] < 144
        assert r["prefill_speedup"] > 0
        assert 0 <= r["miou"] <= 1 and 0 <= r["ap50"] <= 1
    assert base["miou"] > 0.1  # the shipped model grounds something unpruned
    md = (demo / "demo.md").read_text()
    for r in rows:
        assert f"| {r['strategy']} |" in md
    assert "synthetic stand-in" in md.lower() and "docs/grounding.md" in md


def test_keep_one_reproduces_the_unpruned_scores(tmp_path):
    res = run_grounding_demo(keep=1.0, scenes=2, strategies=["uniform"], out_dir=tmp_path,
                             repeats=1, picture_scenes=1, progress=False, print_fn=None)
    base, same = res["rows"]
    assert same["flops_ratio"] == 1.0
    assert same["miou"] == pytest.approx(base["miou"]) and same["ap50"] == pytest.approx(base["ap50"])


@pytest.mark.parametrize("kwargs, match", [
    ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"scenes": 0}, "scenes"),
    ({"strategies": ["nope"]}, "unknown strategies"),
])
def test_bad_input_is_rejected_before_running(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_grounding_demo(out_dir=tmp_path, progress=False, print_fn=None, **kwargs)
