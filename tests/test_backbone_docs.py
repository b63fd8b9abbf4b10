"""The python examples of docs/adapters.md run, the GLaMM example finds the [SEG] rows, and the
excerpts of the example plugin's adapter match its files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adapters.md"
EXCERPT = re.compile(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", re.S)


def _blocks() -> list[str]:
    text = EXCERPT.sub("", DOC.read_text())  # excerpts are checked against their files instead
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    # skip the signature sketch, the adapter skeleton and the (slow) timing recipe
    return [
        b for b in blocks
        if not b.lstrip().startswith("attach(") and "class MyVLMAdapter" not in b and "perf_counter" not in b
    ]


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_doc_example_runs(index):
    torch.set_num_threads(1)
    namespace: dict = {}
    exec(compile(_blocks()[index], f"adapters.md block {index}", "exec"), namespace)
    if "seg_states" in namespace:  # the GLaMM offset example
        ns = namespace
        assert ns["offset"].tolist() == [143, 143]
        kept_ids = ns["inputs"]["input_ids"].gather(1, ns["handle"].records[-1].kept_positions)
        for (b, _), r in zip(ns["seg_pos"], ns["rows"]):
            assert int(kept_ids[int(b), r]) == ns["SEG_ID"]
        assert ns["seg_states"].shape == (2, 64)


def test_docs_have_examples():
    assert len(_blocks()) >= 2


def test_excerpts_match_the_example_plugin():
    excerpts = EXCERPT.findall(DOC.read_text())
    assert {src for src, _ in excerpts} >= {
        "examples/vtprune-example-plugin/src/vtprune_example/adapter.py",
        "examples/vtprune-example-plugin/pyproject.toml",
    }
    for src, body in excerpts:
        assert body in (ROOT / src).read_text(), f"stale excerpt of {src}"


def test_the_adapter_plugin_guide_is_there():
    text = DOC.read_text()
    assert "## Writing an adapter plugin" in text and "## Writing an adapter for another family" in text
    assert "vtprune_adapters" in text and "register_adapter" in text
