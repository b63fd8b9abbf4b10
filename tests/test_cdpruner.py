"""CDPruner (arXiv 2506.10967): the conditional DPP's greedy MAP against its definition, the
instruction relevance against a plain computation, quotas, and the LLaVA adapter."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune.backbones import attach
from vtprune.core import Allocation, ContractError, PruneContext
from vtprune.models import build_tiny_llava, make_inputs
from vtprune.strategies.cdpruner import greedy_dpp, make_dpp, make_instruction_relevance, quality


def greedy_by_determinant(unit: torch.Tensor, q: torch.Tensor, k: int) -> list[int]:
    """The definition: each step adds the token that maximises det(L_S) (float64, brute force)."""
    kernel = (q[:, None] * (unit @ unit.T) * q[None, :]).double()
    chosen: list[int] = []
    for _ in range(k):
        best, best_det = -1, -float("inf")
        for i in range(unit.shape[0]):
            if i in chosen:
                continue
            idx = chosen + [i]
            det = float(torch.linalg.det(kernel[idx][:, idx]))
            if det > best_det + 1e-12:
                best, best_det = i, det
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_greedy_map_picks_what_the_determinant_picks(seed):
    g = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize(torch.randn(3, 10, 8, generator=g), dim=-1)
    q = torch.rand(3, 10, generator=g) + 0.1
    budget = torch.tensor([5, 3, 0])
    picks = greedy_dpp(unit, q, budget, steps=5)
    for b in range(3):
        k = int(budget[b])
        assert picks[b, :k].tolist() == greedy_by_determinant(unit[b], q[b], k)
        assert (picks[b, k:] == -1).all()


def test_beyond_the_rank_the_rest_is_filled_by_quality():
    unit = torch.nn.functional.normalize(torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(0)), dim=-1)
    q = torch.tensor([[0.2, 0.9, 0.5, 0.7, 0.1, 0.3]])
    picks = greedy_dpp(unit, q, torch.tensor([5]), steps=5)[0].tolist()
    assert len(set(picks)) == 5  # two directions span the features: 3 picks by quality after them
    rest = picks[2:]
    assert rest == sorted(rest, key=lambda i: -float(q[0, i]))


def test_instruction_relevance_is_the_mean_cosine_over_real_instruction_tokens():
    g = torch.Generator().manual_seed(1)
    feats, text = torch.randn(2, 9, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    real = torch.tensor([[True, True, True, False], [True, False, False, False]])
    text = torch.where(real[..., None], text, torch.nan)  # padding rows may hold anything
    ctx = PruneContext.create(feats, keep=3, text_features=text, text_valid=real)
    got = make_instruction_relevance()(ctx)
    cos = torch.nn.functional.cosine_similarity(feats[:, :, None, :], text[:, None, :, :], dim=-1)  # [B, N, T]
    want = torch.stack([cos[b][:, real[b]].mean(dim=-1) for b in range(2)])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(make_instruction_relevance(negate=True)(ctx), -want, atol=1e-6, rtol=1e-5)


def test_relevance_refuses_text_in_another_space():
    ctx = PruneContext.create(torch.randn(1, 4, 6), keep=2, text_features=torch.randn(1, 3, 5))
    with pytest.raises(ContractError, match=r"D=6.*D_text=5.*one space"):
        make_instruction_relevance()(ctx)


def test_quality_is_the_references_min_max_per_sample():
    scores = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    valid = torch.ones(2, 3, dtype=torch.bool)
    torch.testing.assert_close(quality(scores, valid, None), torch.tensor([[1e-6 / 2, 1 + 1e-6 / 2, 0.5 + 1e-6 / 2], [1.0, 1.0, 1.0]]))


def test_quotas_are_honoured_region_by_region():
    g = torch.Generator().manual_seed(2)
    ctx = PruneContext.create(torch.randn(2, 12, 8, generator=g), grid=(3, 4), keep=5)
    regions = torch.tensor([[0] * 4 + [1] * 4 + [2] * 4] * 2)
    quotas = torch.tensor([[3, 0, 2], [1, 2, 2]])
    sel = make_dpp()(ctx, torch.rand(2, 12, generator=g), Allocation(ctx.budget.clone(), regions, quotas))
    kept = sel.token_mask(12)
    got = torch.stack([kept[:, regions[0] == r].sum(dim=1) for r in range(3)], dim=1)
    assert got.tolist() == quotas.tolist()


def test_theta_must_lie_in_the_open_unit_interval():
    with pytest.raises(ContractError, match=r"theta must be None or a number in \(0, 1\)"):
        make_dpp(theta=1.0)


def test_cdpruner_in_llava_batch_equals_alone_with_the_cache():
    """Left-padded prompts of different lengths: each sample generates what it does alone."""
    torch.manual_seed(0)
    model = build_tiny_llava()
    images = torch.rand(3, 3, 336, 336, generator=torch.Generator().manual_seed(3))
    prompts = ["what is in the picture?", "count", "is there a red square on the left side?"]
    batch = make_inputs(model, images, prompts)
    with attach(model, "cdpruner", keep=0.1) as handle, torch.no_grad():
        together = model.generate(**batch, max_new_tokens=3, do_sample=False)[:, -3:]
        counts = handle.records[-1].counts.tolist()
        for b in range(3):
            one = make_inputs(model, images[b : b + 1], prompts[b : b + 1])
            alone = model.generate(**one, max_new_tokens=3, do_sample=False)[:, -3:]
            assert together[b].tolist() == alone[0].tolist()
    assert counts == [vtprune.keep_count(0.1, 576)] * 3


def test_duplicates_are_kept_once_where_top_k_would_keep_them_all():
    """Not top-k in disguise: with duplicated tokens, the DPP keeps one copy of each vector."""
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    copies = [0, 0, 0, 1, 1, 2, 3]  # token -> which base vector it copies
    ctx = PruneContext.create(base[copies][None], grid=(1, 7), keep=3)
    scores = torch.tensor([[3.0, 3.0, 3.0, 2.0, 2.0, 1.5, 0.0]])
    kept = make_dpp()(ctx, scores, Allocation(ctx.budget.clone())).indices[0].tolist()
    assert kept == [0, 3, 5]  # the first copy of each of the three best vectors
    top = torch.topk(scores, 3).indices[0].sort().values.tolist()
    assert top == [0, 1, 2]  # what relevance alone would keep: three copies of one vector
