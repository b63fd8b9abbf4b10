"""Issue #25: what a plugin author meets in the kit's first hour.

The padding check (a scorer reading grid neighbours must skip invalid tokens), the hints of its
failure messages, ``--collect-only`` counts, and no ``.hypothesis/`` folder left behind. Each
broken stage here passes the kit as it was before the issue, or gets a message that did not
say what this one does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import Phase
from test_plugins import plugin_env

from vtprune.conformance_tests import (
    CHECKS,
    ContextSpec,
    build_context,
    check_strategy,
    pytest_plugin,
    summarize,
)
from vtprune.core import (
    Capabilities,
    PluginLoadWarning,
    PruneContext,
    Registry,
    Selection,
    Strategy,
    StrategySpec,
    get_strategy,
    hookimpl,
)
from vtprune.core import registry as registry_module
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


# -- a scorer reading grid neighbours ------------------------------------------------------------


def _grid(ctx: PruneContext) -> torch.Tensor:
    h, w = ctx.grid
    return ctx.features.float().reshape(ctx.batch_size, h, w, -1)  # [B, h, w, D]


def edge_energy_reading_padding(ctx: PruneContext) -> torch.Tensor:
    """Distance to the right and lower neighbours, padding neighbours included (the bug)."""
    f = _grid(ctx)
    right = (f[:, :, 1:] - f[:, :, :-1]).norm(dim=-1)  # [B, h, w-1]
    down = (f[:, 1:] - f[:, :-1]).norm(dim=-1)  # [B, h-1, w]
    energy = torch.zeros(f.shape[:3])
    energy[:, :, :-1] += right
    energy[:, :-1] += down
    return energy.flatten(1).masked_fill(~ctx.valid_mask(), 0.0)  # [B, N]


def edge_energy_skipping_padding(ctx: PruneContext) -> torch.Tensor:
    """The same, counting a neighbour only when both tokens are valid (the fix)."""
    f = _grid(ctx)
    v = ctx.valid_mask().reshape(f.shape[:3])  # [B, h, w]
    right = (f[:, :, 1:] - f[:, :, :-1]).norm(dim=-1) * (v[:, :, 1:] & v[:, :, :-1])
    down = (f[:, 1:] - f[:, :-1]).norm(dim=-1) * (v[:, 1:] & v[:, :-1])
    energy = torch.zeros(f.shape[:3])
    energy[:, :, :-1] += right
    energy[:, :-1] += down
    return energy.flatten(1).masked_fill(~ctx.valid_mask(), 0.0)


def test_kit_catches_a_scorer_whose_valid_scores_read_padding_features() -> None:
    failed = _failed(_strategy("edge_bad", edge_energy_reading_padding))
    assert set(failed) == {"check_padding_features_ignored"}
    message = failed["check_padding_features_ignored"]
    assert re.search(r"changed scores of valid tokens \(sample \d+, token \d+: ", message)
    assert "mask them out" in message and "reproduce: ctx = " in message


def test_a_scorer_skipping_invalid_neighbours_passes() -> None:
    assert _failed(_strategy("edge_ok", edge_energy_skipping_padding)) == {}


def test_kit_catches_a_merging_selector_that_averages_padding_into_kept_tokens() -> None:
    def merge_all(ctx: PruneContext, scores: torch.Tensor, alloc) -> Selection:
        sel = stages.make_topk()(ctx, scores, alloc)
        mean = ctx.features.mean(dim=1, keepdim=True)  # [B, 1, D], padding included (the bug)
        kept = torch.where(sel.kept_mask[..., None], mean.expand(-1, sel.indices.shape[1], -1), 0)
        return Selection(sel.indices, sel.counts, kept.to(ctx.features.dtype))

    strategy = replace(
        _strategy("merge_all", selector=merge_all), capabilities=Capabilities(merges=True)
    )
    failed = _failed(strategy, checks=["check_padding_features_ignored"], settings=NO_SHRINK)
    assert "selection.features of kept slots" in failed["check_padding_features_ignored"]


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
    failed = _failed(_strategy("descending", selector=descending_selector))
    message = failed["check_selection_contract"]
    where = re.search(
        r"selection\.indices\[(\d+), (\d+)\] = (\d+) after (\d+) \(sample (\d+)\)", message
    )
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


def test_pytest_option_says_why_a_plugins_strategy_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    @hookimpl
    def vtprune_strategies() -> list[StrategySpec]:
        return [StrategySpec("edge", "feature_norm", "global", "top_k")]

    registry = Registry()
    registry.register(stages, name="stages", distribution="vtprune")
    plugin = SimpleNamespace(vtprune_strategies=vtprune_strategies)
    registry.register(plugin, name="edge", distribution="vtprune-edge")
    monkeypatch.setattr(registry_module, "_default", registry)
    with pytest.warns(PluginLoadWarning), pytest.raises(pytest.UsageError) as caught:
        pytest_plugin._requested("edge,fetaure_norm")
    message = str(caught.value)
    assert "strategy 'edge' from vtprune-edge (plugin 'edge') uses selector 'top_k'" in message
    assert "Did you mean 'topk'?" in message and "unavailable" in message
    assert "no strategy named 'fetaure_norm'" in message


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


# -- the docs print what the kit prints -----------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"
SUMMARY = re.compile(r"(\w[\w:]*): \d+ passed, \d+ failed, \d+ skipped")


def test_conformance_docs_summaries_are_what_the_kit_prints() -> None:
    uniform = get_strategy("uniform")
    strategies = {  # every summary conformance.md quotes, rebuilt here (the example's aside)
        "uniform": uniform,
        "my_sampler": replace(
            uniform, name="my_sampler", capabilities=Capabilities(deterministic=False)
        ),
    }
    quoted = {m[0] for m in SUMMARY.finditer((DOCS / "conformance.md").read_text())}
    quoted -= {"center_saliency: 12 passed, 0 failed, 1 skipped"}  # checked by test_plugins.py
    assert {line.split(":")[0] for line in quoted} == set(strategies)
    for line in quoted:
        name = line.split(":")[0]
        assert summarize(check_strategy(strategies[name], 3)) == line


def test_conformance_docs_failure_message_is_the_kits_format() -> None:
    uniform = get_strategy("uniform")
    strategy = replace(uniform, name="my_uniform", selector=descending_selector)
    (result,) = check_strategy(strategy, checks=["check_selection_contract"])
    head = "my_uniform check_selection_contract: failed"
    block = (DOCS / "conformance.md").read_text().split(head)[1].split("```")[0]
    documented = [head, *block.strip().splitlines()]
    printed = str(result).splitlines()
    assert len(documented) == len(printed)
    for doc, kit in zip(documented, printed):
        pattern = re.sub(r"\d+", r"\\d+", re.escape(doc))  # numbers may differ with the draw
        assert re.fullmatch(pattern, kit), f"docs: {doc}\nkit:  {kit}"
