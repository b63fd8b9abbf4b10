"""`vtprune bench grounding` under torchrun (issue #13): 2 processes give the table 1 process
gives, bootstrap errors included (gloo on CPU, nothing downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vtprune.grounding import parallel

ARGS = ["bench", "grounding", "--strategies", "uniform,cdpruner", "--keeps", "0.25",
        "--limit", "20", "--no-progress"]


def run(out: Path, processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "vtprune.cli"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "vtprune.cli"]
    done = subprocess.run(cmd + ARGS + ["--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "grounding_bench.json").read_text())


@pytest.mark.slow
def test_two_processes_give_the_table_of_one(tmp_path):
    one = run(tmp_path / "one", 1)
    two = run(tmp_path / "two", 2)
    assert (one["meta"]["processes"], two["meta"]["processes"]) == (1, 2)
    for key in ("unpruned", "validity", "rows", "skipped"):
        assert two[key] == one[key], key
    assert one["meta"]["scenes"] == {"test": 20, "test_small": 20}


def test_batches_are_dealt_round_robin(monkeypatch):
    monkeypatch.setattr(parallel, "world", lambda: (1, 3))
    assert parallel.batch_starts(100, 16) == [16, 64]  # batches 1 and 4 of 0..6


def test_one_process_maps_every_batch_in_order():
    out = parallel.map_batches(list(range(40)), 16, lambda start, chunk: [(start, len(chunk))])
    assert out == [(0, 16), (16, 16), (32, 8)]
