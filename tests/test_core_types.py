"""Stage data types: PruneContext validation, check_scores, Allocation, Selection."""

from __future__ import annotations

import pytest
import torch

from vtprune.core import (
    PAD_INDEX,
    Allocation,
    ContractError,
    PruneContext,
    Selection,
    check_allocation,
    check_scores,
    check_selection,
)


def ctx_of(b: int = 2, h: int = 2, w: int = 3, d: int = 4, **kwargs) -> PruneContext:
    kwargs.setdefault("keep", 0.5)
    return PruneContext.create(torch.randn(b, h * w, d), grid=(h, w), **kwargs)


# -- PruneContext ---------------------------------------------------------------------------------


def test_create_builds_budgets_from_valid_counts():
    valid = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    ctx = ctx_of(valid=valid, keep=0.5)
    assert ctx.budget.tolist() == [3, 2]  # 1.5 rounds half up
    assert ctx.valid_counts.tolist() == [6, 3]
    assert ctx.batch_size == 2 and ctx.num_tokens == 6
    assert PruneContext.create(torch.randn(1, 16, 2)).grid == (4, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features": torch.randn(6, 4)}, r"features must have 3 dims, got shape \(6, 4\)"),
        ({"features": torch.zeros(2, 6, 4, dtype=torch.long)}, "features must be floating point, got torch.int64"),
        ({"features": [[0.0]]}, "features must be a torch.Tensor, got list"),
        ({"grid": (2, 2)}, "grid 2x2 has 4 cells but features have N=6 tokens"),
        ({"grid": [2, 3]}, r"grid must be a tuple \(h, w\) of positive ints, got \[2, 3\]"),
        ({"grid": (0, 6)}, "grid must be a tuple"),
        ({"budget": torch.tensor([1, 1], dtype=torch.int32)}, "budget must be a long tensor, got torch.int32"),
        ({"budget": torch.tensor([1])}, r"budget must have size 2 on axis 0, got shape \(1,\)"),
        ({"budget": torch.tensor([7, 1])}, r"budget of sample 0 is 7 but it has 6 valid tokens; budgets must lie in \[0, valid count\]"),
        ({"budget": torch.tensor([1, -1])}, "budget of sample 1 is -1"),
        ({"valid": torch.ones(2, 6, dtype=torch.long)}, "valid must be bool, got torch.int64"),
        ({"valid": torch.ones(2, 5, dtype=torch.bool)}, "valid must have size 6 on axis 1"),
        ({"valid": torch.tensor([[True] * 6, [False] * 6])}, "budget of sample 1 is 1 but it has 0 valid tokens"),
        ({"attention": torch.full((2, 6), float("nan"))}, "attention contains NaN or inf values"),
        ({"cls_attention": torch.tensor([[float("inf")] * 6] * 2)}, "cls_attention contains NaN or inf values"),
        ({"attention": torch.rand(2, 5)}, r"attention must be \[B=2, N=6\] or \[B, heads, N\], got \(2, 5\)"),
        ({"attention": torch.rand(2, 1, 1, 6)}, "attention must be"),
        ({"image": torch.rand(2, 4, 28, 42)}, r"image must be \[B, 3, H, W\]"),
        ({"image": torch.rand(1, 3, 28, 42)}, "image must have size 2 on axis 0"),
        ({"text_features": torch.randn(3, 5, 4)}, "text_features must have size 2 on axis 0"),
        ({"original_count": 5}, "original_count=5 is smaller than N=6"),
    ],
)
def test_context_rejects_bad_inputs_saying_what_was_expected(kwargs, message):
    fields = {"features": torch.randn(2, 6, 4), "grid": (2, 3), "budget": torch.tensor([1, 1])}
    fields.update(kwargs)
    with pytest.raises(ContractError, match=message):
        PruneContext(**fields)


def test_create_rejects_non_square_without_grid_and_bad_keep():
    with pytest.raises(ContractError, match="N=6 tokens is not a square grid; pass grid="):
        PruneContext.create(torch.randn(1, 6, 2))
    with pytest.raises(ContractError, match=r"features must be a \[B, N, D\] tensor"):
        PruneContext.create(torch.randn(6, 2))
    with pytest.raises(ContractError, match="out of range"):
        ctx_of(keep=7)


def test_attention_per_head_and_signals_are_accepted():
    ctx = ctx_of(attention=torch.rand(2, 3, 6), cls_attention=torch.rand(2, 6), image=torch.rand(2, 1, 8, 8))
    assert ctx.attention is not None and ctx.attention.shape == (2, 3, 6)


def test_sample_and_with_budget_share_tensors_and_recompute_budgets():
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    ctx = ctx_of(valid=valid, keep=1.0, attention=torch.rand(2, 6))
    one = ctx.sample(1)
    assert one.batch_size == 1 and one.budget.tolist() == [4]
    assert one.features.data_ptr() == ctx.features[1:2].data_ptr()
    assert one.attention is not None and one.attention.shape == (1, 6)
    assert ctx.sample(-1).budget.tolist() == [4]
    with pytest.raises(IndexError, match="sample 2 is out of range for a batch of 2"):
        ctx.sample(2)
    assert ctx.with_budget(0.5).budget.tolist() == [3, 2]
    assert ctx.with_budget(0).budget.tolist() == [0, 0]


def test_valid_mask_defaults_to_all_true():
    ctx = ctx_of()
    assert ctx.valid_mask().all() and ctx.valid_mask().shape == (2, 6)


# -- check_scores ---------------------------------------------------------------------------------


def test_check_scores_rejects_nan_on_valid_tokens_naming_the_token():
    ctx = ctx_of()
    scores = torch.zeros(2, 6)
    scores[1, 4] = float("nan")
    with pytest.raises(ContractError, match="sample 1, token 4 is nan.*nan_to_num"):
        check_scores(scores, ctx)


def test_check_scores_ignores_nan_on_padding_and_checks_shape_and_dtype():
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    ctx = ctx_of(valid=valid)
    scores = torch.zeros(2, 6)
    scores[1, 5] = float("nan")
    assert check_scores(scores, ctx) is scores
    with pytest.raises(ContractError, match="scores must have size 6 on axis 1"):
        check_scores(torch.zeros(2, 5), ctx)
    with pytest.raises(ContractError, match="scores must be floating point"):
        check_scores(torch.zeros(2, 6, dtype=torch.long), ctx)


# -- Allocation -----------------------------------------------------------------------------------


REGIONS = torch.tensor([[0, 0, 1, 1, 1, -1]])


def test_allocation_accepts_valid_quotas_and_reports_region_sizes():
    alloc = Allocation(torch.tensor([3]), REGIONS, torch.tensor([[1, 2]]))
    assert alloc.region_sizes().tolist() == [[2, 3]]


@pytest.mark.parametrize(
    "budget, regions, quotas, message",
    [
        ([3], REGIONS, None, "regions and allocation.quotas must be given together"),
        ([3], REGIONS, [[-1, 4]], "quotas must be non-negative"),
        ([3], REGIONS, [[3, 0]], "quota 3 of region 0 in sample 0 exceeds its size 2"),
        ([3], REGIONS, [[1, 1]], "quotas of sample 0 sum to 2 but its budget is 3"),
        ([3], torch.tensor([[0, 0, 1, 1, 2, -1]]), [[1, 2]], r"region ids must lie in \[-1, 1\]"),
        ([3], REGIONS.int(), [[1, 2]], "allocation.regions must be a long tensor"),
        ([3], REGIONS, torch.tensor([[1.0, 2.0]]), "allocation.quotas must be a long tensor"),
    ],
)
def test_allocation_quota_errors(budget, regions, quotas, message):
    """Shapes and dtypes are refused at construction, values where the allocation is handed
    on (check_allocation, one host read when all is well)."""
    q = quotas if quotas is None or isinstance(quotas, torch.Tensor) else torch.tensor(quotas)
    ctx = PruneContext.create(torch.randn(1, 6, 2), grid=(2, 3), keep=3, valid=REGIONS >= 0)
    with pytest.raises(ContractError, match=message):
        check_allocation(Allocation(torch.tensor(budget), regions, q), ctx)


def test_check_allocation_compares_budget_and_padding_regions():
    valid = torch.tensor([[True] * 5 + [False]])
    ctx = PruneContext.create(torch.randn(1, 6, 2), grid=(2, 3), keep=3, valid=valid)
    good = Allocation(torch.tensor([3]), REGIONS, torch.tensor([[1, 2]]))
    assert check_allocation(good, ctx) is good
    with pytest.raises(ContractError, match=r"allocation budget \[2\] differs from the context budget \[3\]"):
        check_allocation(Allocation(torch.tensor([2])), ctx)
    on_padding = Allocation(torch.tensor([3]), torch.tensor([[0, 0, 1, 1, 1, 1]]), torch.tensor([[1, 2]]))
    with pytest.raises(ContractError, match="-1 exactly on invalid tokens"):
        check_allocation(on_padding, ctx)
    with pytest.raises(ContractError, match="must return an Allocation, got dict"):
        check_allocation({}, ctx)


# -- Selection ------------------------------------------------------------------------------------


def test_from_mask_pads_ragged_rows_and_gathers_features():
    mask = torch.tensor([[False, True, True, False], [True, False, False, False], [False] * 4])
    feats = torch.arange(12, dtype=torch.float32).view(3, 4, 1)
    sel = Selection.from_mask(mask, features=feats)
    assert sel.indices.tolist() == [[1, 2], [0, PAD_INDEX], [PAD_INDEX, PAD_INDEX]]
    assert sel.counts.tolist() == [2, 1, 0] and sel.counts.dtype == torch.long
    assert sel.features is not None
    assert sel.features[..., 0].tolist() == [[1.0, 2.0], [4.0, 0.0], [0.0, 0.0]]
    assert sel.kept_mask.tolist() == [[True, True], [True, False], [False, False]]
    assert sel.token_mask(4).equal(mask)
    assert [k.tolist() for k in sel.per_sample()] == [[1, 2], [0], []]


def test_from_mask_of_nothing_has_zero_width():
    sel = Selection.from_mask(torch.zeros(2, 5, dtype=torch.bool))
    assert sel.indices.shape == (2, 0) and sel.counts.tolist() == [0, 0]


def test_from_lists_sorts_pads_and_permutes_features_alike():
    kept = [torch.tensor([5, 1, 3]), torch.tensor([2])]
    feats = [torch.tensor([[50.0], [10.0], [30.0]]), torch.tensor([[20.0]])]
    sel = Selection.from_lists(kept, features=feats)
    assert sel.indices.tolist() == [[1, 3, 5], [2, PAD_INDEX, PAD_INDEX]]
    assert sel.counts.tolist() == [3, 1]
    assert sel.features is not None
    assert sel.features[..., 0].tolist() == [[10.0, 30.0, 50.0], [20.0, 0.0, 0.0]]
    empty = Selection.from_lists([torch.zeros(0, dtype=torch.long)] * 2)
    assert empty.indices.shape == (2, 0)


def test_selection_rejects_bad_shapes():
    with pytest.raises(ContractError, match="selection.indices must be long"):
        Selection(torch.zeros(1, 2, dtype=torch.int32), torch.tensor([2]))
    with pytest.raises(ContractError, match="selection.counts must be long, got torch.float32"):
        Selection(torch.zeros(1, 2, dtype=torch.long), torch.tensor([2.0]))
    with pytest.raises(ContractError, match="selection.counts must have size 1"):
        Selection(torch.zeros(1, 2, dtype=torch.long), torch.tensor([2, 2]))
    with pytest.raises(ContractError, match="selection.features must have size 2 on axis 1"):
        Selection(torch.zeros(1, 2, dtype=torch.long), torch.tensor([2]), torch.zeros(1, 3, 4))


@pytest.mark.parametrize(
    "indices, counts, message",
    [
        ([[0, 2, 3]], [3], "sample 0 kept 3 tokens but its budget is 2"),
        ([[2, 0]], [2], r"unsorted: \[2, 0\]"),
        ([[1, 1]], [2], r"duplicate: \[1, 1\]"),
        ([[0, 6]], [2], r"kept indices must lie in \[0, 5\]"),
        ([[0, 5]], [2], "a kept index points at an invalid"),
        ([[0, 1, 2]], [2], r"must be \[B, max budget\]=\[1, 2\]"),
    ],
)
def test_check_selection_names_the_broken_invariant(indices, counts, message):
    valid = torch.tensor([[True] * 5 + [False]])
    ctx = PruneContext.create(torch.randn(1, 6, 2), grid=(2, 3), keep=2, valid=valid)
    sel = Selection(torch.tensor(indices), torch.tensor(counts))
    with pytest.raises(ContractError, match=message):
        check_selection(sel, ctx)


def test_check_selection_checks_padding_and_quotas():
    ctx = PruneContext.create(torch.randn(2, 6, 2), grid=(2, 3), keep=torch.tensor([2, 1]))
    with pytest.raises(ContractError, match="padding past a sample's count must be -1"):
        check_selection(Selection(torch.tensor([[0, 1], [3, 4]]), torch.tensor([2, 1])), ctx)
    regions = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    alloc = Allocation(torch.tensor([2, 1]), regions, torch.tensor([[1, 1], [0, 1]]))
    good = Selection(torch.tensor([[0, 3], [5, -1]]), torch.tensor([2, 1]))
    assert check_selection(good, ctx, alloc) is good
    bad = Selection(torch.tensor([[0, 1], [5, -1]]), torch.tensor([2, 1]))
    with pytest.raises(ContractError, match="sample 0 kept 2 tokens in region 0 but its quota is 1"):
        check_selection(bad, ctx, alloc)
    wrong_dtype = Selection(good.indices, good.counts, torch.zeros(2, 2, 2, dtype=torch.float64))
    with pytest.raises(ContractError, match="selection.features must be"):
        check_selection(wrong_dtype, ctx)


def test_context_to_moves_every_signal_and_keeps_the_budget_on_the_host():
    ctx = PruneContext.create(
        torch.randn(2, 4, 3), grid=(2, 2), keep=2,
        image=torch.rand(2, 3, 8, 8), text_features=torch.randn(2, 5, 7),
    )
    moved = ctx.to("meta")
    assert {t.device.type for t in (moved.features, moved.image, moved.text_features)} == {"meta"}
    assert moved.budget.device.type == "cpu" and moved.cls_attention is None
    assert ctx.features.device.type == "cpu"  # the original is untouched
