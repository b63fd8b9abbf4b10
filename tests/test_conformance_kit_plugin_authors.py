"""Issue #25: what a plugin author meets in the kit's first hour.

The hints of the kit's failure messages, ``--collect-only`` counts, and no ``.hypothesis/``
folder left behind. Each broken stage here got a message from the kit before the issue that
did not say what this one does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import Phase
from test_plugins import plugin_env

from vtprune.conformance_tests import CHECKS, ContextSpec, build_context, check_strategy
from vtprune.core import Capabilities, PruneContext, Selection, Strategy
from vtprune.strategies import stages

pytest_plugins = ["pytester"]

NO_SHRINK = {"phases": [Phase.explicit, Phase.generate]}


def _strategy(name: str, scorer=None, selector=None) -> Strategy:
    return Strategy(
        name=name,
        scorer=scorer or stages.make_feature_norm(),
        allocator=stages.make_global(),
        selector=selector or stages.make_topk(),
        capabilities=Capabilities(),
    )


def _failed(strategy: Strategy, **kwargs) -> dict[str, str]:
    results = check_strategy(strategy, 25, **kwargs)
    return {r.check: r.message for r in results if r.status == "failed"}


# -- messages ------------------------------------------------------------------------------------


def fp16_squared_norm(ctx: PruneContext) -> torch.Tensor:
    """Squared norm in the features' dtype: overflows to inf in float16 on hidden-state scales."""
    f = ctx.features  # [B, N, D], float16 stays float16
    return (f * f).sum(dim=-1).float().masked_fill(~ctx.valid_mask(), 0.0)


def test_non_finite_scores_hint_says_float32_first_then_nan_to_num() -> None:
    failed = _failed(_strategy("fp16_overflow", fp16_squared_norm), settings=NO_SHRINK)
    message = failed["check_scores_contract"]
    assert "is inf" in message
    assert "float32" in message and "overflow" in message
    assert message.index("float32") < message.index("nan_to_num")  # the usual cause first


def descending_selector(ctx: PruneContext, scores: torch.Tensor, alloc) -> Selection:
    """Top-k, returned in descending order of index (the bug)."""
    sel = stages.make_topk()(ctx, scores, alloc)
    flipped = [row.flip(0) for row in sel.per_sample()]
    indices = torch.full_like(sel.indices, -1)
    for b, row in enumerate(flipped):
        indices[b, : len(row)] = row
    return Selection(indices, sel.counts)


def test_a_selection_failure_names_the_sample_and_the_index_and_keeps_reproduce() -> None:
    message = _failed(_strategy("descending", selector=descending_selector))["check_selection_contract"]
    where = re.search(r"selection\.indices\[(\d+), (\d+)\] = (\d+) after (\d+) \(sample (\d+)\)", message)
    assert where, message
    b, j, value, before, sample = (int(g) for g in where.groups())
    assert b == sample and j >= 1 and value < before
    spec = message.split("reproduce: ctx = vtprune.conformance_tests.build_context(", 1)[1][:-1]
    ctx = build_context(eval(spec, {"ContextSpec": ContextSpec}))
    s = _strategy("descending", selector=descending_selector)
    indices = s.selector(ctx, s.scorer(ctx), s.allocator(ctx, s.scorer(ctx))).indices
    assert int(indices[b, j]) == value and int(indices[b, j - 1]) == before  # the named slot


def test_collect_only_counts_the_kits_items(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "--collect-only", "-q", "--vtprune-conformance=uniform"
    )
    out = result.stdout.str()
    assert "vtprune-conformance[uniform-check_scores_contract]" in out
    assert f"{len(CHECKS)} tests collected" in out
    assert "no tests collected" not in out


# -- no files left behind ------------------------------------------------------------------------

KIT_RUN = "from vtprune.conformance_tests import check_strategy; check_strategy('uniform', 5)"


@pytest.mark.parametrize(
    "command",
    [
        ["-c", KIT_RUN],
        ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--vtprune-conformance=uniform",
         "--vtprune-conformance-examples=3"],
    ],
    ids=["check_strategy", "pytest-option"],
)
def test_the_kit_leaves_no_hypothesis_folder(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, cwd=tmp_path,
        env=plugin_env([]), timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
