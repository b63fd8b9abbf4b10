import torch

import vtprune


def test_builtin_baselines_are_registered():
    assert {"random", "uniform"} <= set(vtprune.list_strategies())


def test_uniform_keeps_an_even_lattice():
    ctx = vtprune.PruneContext.create(torch.randn(1, 576, 8), keep=144)
    kept = vtprune.get_strategy("uniform")(ctx).indices[0]
    rows, cols = kept // 24, kept % 24
    assert set(rows.tolist()) == set(range(1, 24, 2))
    assert set(cols.tolist()) == set(range(1, 24, 2))
