"""The Python blocks of docs/concepts.md run, in order, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_plugins import PLUGIN_ENV, ROOT, RUN_BLOCKS, code_blocks


def test_concepts_python_blocks_run(tmp_path: Path) -> None:
    code = [b["body"] for b in code_blocks(ROOT / "docs" / "concepts.md") if b["lang"] == "python"]
    assert len(code) >= 8
    script = tmp_path / "blocks.json"
    script.write_text(json.dumps(code))
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN_BLOCKS), str(script)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert done.returncode == 0, f"a python block of concepts.md failed:\n{done.stderr[-4000:]}"
    out = done.stdout
    for expected in (
        "(24, 24) tensor([144, 144])",      # context from a ratio
        "tensor([144, 100])",               # ratio applies to each sample's valid count
        "[8, 16, 24] [288, 144, 72]",       # PyramidDrop's schedule
        "2 tensor([288, 288])",             # FastV through the LLaVA adapter
        "58 3 144",                         # keep_count
        "tensor([ 58, 288])",               # per-sample budgets
    ):
        assert expected in out, f"concepts.md no longer prints {expected!r}:\n{out}"


def test_docs_index_links_every_page_of_mine() -> None:
    index = (ROOT / "docs" / "index.md").read_text()
    for page in ("concepts.md", "writing-a-plugin.md", "conformance.md", "strategies.md"):
        assert f"({page})" in index, page
