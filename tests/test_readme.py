"""The README's python blocks run as written and print what their comments say."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quick_start_runs_and_prints_what_it_claims():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile("\n".join(blocks), str(README), "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0] == "tensor([58, 58])"
    assert lines[1] == "2 tensor([288, 288])"
    assert lines[2] == "tensor([6, 2, 6]) tensor([0, 1, 1])"  # Qwen2.5-VL: per image
    assert {"altp", "fastv", "pyramiddrop", "random", "uniform"} <= set(eval(lines[3]))
