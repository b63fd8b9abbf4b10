"""The python examples of docs/adapters.md run, and the GLaMM example finds the [SEG] rows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"


def _blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    # skip the signature sketch, the adapter skeleton and the (slow) timing recipe
    return [
        b for b in blocks
        if not b.lstrip().startswith("attach(") and "class Qwen2VLAdapter" not in b and "perf_counter" not in b
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
