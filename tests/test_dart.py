"""DART: pivot tokens by L1 norm (image tokens and instruction tokens), then per pivot the visual
tokens least similar to it. ``dart_visual`` is the same with image pivots only."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import ContractError, PruneContext
from vtprune.backbones import attach
from vtprune.conformance_tests import check_strategy
from vtprune.models import build_tiny_llava, make_inputs


def run(ctx: PruneContext, name: str = "dart_visual", **params) -> vtprune.Selection:
    return vtprune.get_strategy(name, **params)(ctx)


def reference(features, valid, k, pivots=4, text=None, text_valid=None, text_pivots=0):
    """One sample, written out plainly (sets and loops, as the authors' code reads)."""
    ids = [i for i in range(features.shape[0]) if valid[i]]
    norms = features.float().abs().sum(dim=-1)
    p = min(pivots, k)
    pivot_ids = sorted(sorted(ids, key=lambda i: (-float(norms[i]), i))[:p])
    pivot_vecs = [features[i] for i in pivot_ids]
    if text is not None and k > 0:
        rows = [r for r in range(text.shape[0]) if text_valid is None or text_valid[r]]
        t_norms = text.float().abs().sum(dim=-1)
        t_ids = sorted(sorted(rows, key=lambda r: (-float(t_norms[r]), r))[:text_pivots])
        pivot_vecs += [text[r] for r in t_ids]
    kept = set(pivot_ids)
    pool = [i for i in ids if i not in kept]
    extra, m = k - p, max(len(pivot_vecs), 1)
    for j, piv in enumerate(pivot_vecs):
        quota = extra // m + (1 if j < extra % m else 0)
        cos = {i: float(torch.nn.functional.cosine_similarity(features[i].float(), piv.float(), dim=0)) for i in pool}
        take = sorted(pool, key=lambda i: (cos[i], i))[:quota]  # least similar first
        kept.update(take)
        pool = [i for i in pool if i not in take]
    return sorted(kept)


def test_pivots_are_the_top_l1_norm_tokens_and_always_kept():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 49, 8, generator=g)
    feats[0, [3, 17, 30, 44]] *= 10  # the four largest L1 norms of sample 0
    ctx = PruneContext.create(feats, keep=4)
    sel = run(ctx)
    assert sel.indices[0].tolist() == [3, 17, 30, 44]
    assert torch.equal(sel.indices[1], feats[1].abs().sum(-1).topk(4).indices.sort().values)
    ctx = PruneContext.create(feats, keep=20)
    assert {3, 17, 30, 44} <= set(run(ctx).indices[0].tolist())


def test_exact_duplicates_of_the_pivot_are_dropped_first():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 36, 8, generator=g)
    feats[0, 5] *= 20  # the pivot
    dups = [0, 9, 12, 20, 33]
    feats[0, dups] = feats[0, 5] / 20  # same direction, smaller norm: cosine 1
    ctx = PruneContext.create(feats, keep=36 - len(dups))
    kept = set(run(ctx, pivots=1).indices[0].tolist())
    assert kept == set(range(36)) - set(dups)
    # one more token: the one duplicate taken is the lowest index (ties to the lower index)
    kept = set(run(ctx.with_budget(36 - len(dups) + 1), pivots=1).indices[0].tolist())
    assert kept == set(range(36)) - set(dups[1:])


def test_duplicates_are_dropped_first_with_several_pivots():
    # pivots along e0 and e1; duplicates of the e0 pivot are orthogonal to e1, the other tokens
    # point away from both pivots, so neither pivot takes a duplicate while others remain
    g = torch.Generator().manual_seed(2)
    feats = torch.zeros(1, 25, 4)
    feats[0, 7, 0] = feats[0, 19, 1] = 10.0
    dups = [1, 2, 11, 23]
    feats[0, dups, 0] = 1.0
    others = [i for i in range(25) if i not in (7, 19, *dups)]
    feats[0, others] = torch.tensor([-1.0, -1.0, 0.0, 0.0]) + 0.1 * torch.rand(len(others), 4, generator=g)
    ctx = PruneContext.create(feats, keep=2 + len(others))
    assert run(ctx, pivots=2).indices[0].tolist() == sorted([7, 19, *others])


def test_quota_per_pivot_hand_computed():
    # 2 pivots (tokens 0 and 3, largest norms), budget 5 -> 3 more: the first pivot in raster
    # order takes 2, the second 1. Pivot 0 = e0: least similar are 4 (-e0) then 2 (-e0 + e1)...
    feats = torch.tensor(
        [[[5.0, 0.0], [1.0, 0.1], [-1.0, 1.0], [0.0, 5.0], [-1.0, 0.0], [0.1, 1.0]]]
    )
    ctx = PruneContext.create(feats, grid=(2, 3), keep=5)
    # pivot 0 (e0): cosines 1: 0.995, 2: -0.707, 4: -1, 5: 0.0995 -> takes 4, 2
    # pivot 3 (e1): of 1 and 5, cosines 0.0995 and 0.995 -> takes 1
    assert run(ctx, pivots=2).indices.tolist() == [[0, 1, 2, 3, 4]]


def test_matches_a_plain_per_sample_reference_on_ragged_batches():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 81, 5, generator=g)
    valid = torch.rand(3, 81, generator=g) > torch.tensor([0.0, 0.4, 0.8])[:, None]
    ctx = PruneContext.create(feats, keep=torch.tensor([30, 17, 3]), valid=valid)
    for pivots in (1, 4, 7):
        sel = run(ctx, pivots=pivots)
        for b in range(3):
            want = reference(feats[b], valid[b], int(ctx.budget[b]), pivots)
            assert sel.indices[b, : int(sel.counts[b])].tolist() == want, (pivots, b)
            alone = run(ctx.sample(b), pivots=pivots)
            assert alone.indices[0].tolist() == want
    text = torch.randn(3, 7, 5, generator=g)
    text_valid = torch.rand(3, 7, generator=g) > 0.3
    ctx = PruneContext.create(feats, keep=torch.tensor([30, 17, 3]), valid=valid, text_features=text, text_valid=text_valid)
    for pivots, text_pivots in ((4, 4), (2, 6), (1, 0)):
        sel = run(ctx, "dart", pivots=pivots, text_pivots=text_pivots)
        for b in range(3):
            want = reference(feats[b], valid[b], int(ctx.budget[b]), pivots, text[b], text_valid[b], text_pivots)
            assert sel.indices[b, : int(sel.counts[b])].tolist() == want, (pivots, text_pivots, b)
            alone = run(ctx.sample(b), "dart", pivots=pivots, text_pivots=text_pivots)
            assert alone.indices[0].tolist() == want


def test_keep_all_and_keep_none():
    feats = torch.randn(2, 16, 4)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, :5] = False
    assert torch.equal(run(PruneContext.create(feats, keep=1.0, valid=valid)).token_mask(16), valid)
    assert run(PruneContext.create(feats, keep=0)).counts.tolist() == [0, 0]


def test_schedule_is_before_layer_two_by_default():
    dart = vtprune.get_strategy("dart")
    sched = dart.schedule(num_layers=32, keep=0.222)
    assert [(p.layer, p.keep) for p in sched.points] == [(2, 0.222)]
    assert [p.layer for p in vtprune.get_strategy("dart", layer=5).schedule(32, 0.5).points] == [5]
    with pytest.raises(ContractError, match="1 <= K < 4"):
        vtprune.get_strategy("dart", layer=4).schedule(4, 0.5)
    with pytest.raises(ContractError, match="pivots"):
        vtprune.get_strategy("dart", pivots=0)
    with pytest.raises(ContractError, match="text_pivots"):
        vtprune.get_strategy("dart", text_pivots=-1)
    assert vtprune.get_strategy("dart").needs == frozenset({"text_features"})
    assert vtprune.get_strategy("dart_visual").needs == frozenset()


@pytest.mark.parametrize("name", ["dart", "dart_visual"])
def test_conformance_kit(name):
    results = check_strategy(name, max_examples=40)
    assert all(r.status != "failed" for r in results), [r.message for r in results if r.status == "failed"]


def test_instruction_pivots_take_their_share_but_are_not_kept():
    # one image pivot (token 0, e0) and one instruction pivot (e1); budget 5 -> 4 more tokens,
    # 2 per pivot: the image pivot takes the two most opposed to e0 (4, then 2), the
    # instruction pivot the two most opposed to e1 among the rest (5, then 1)
    feats = torch.tensor([[[5.0, 0.0], [1.0, -0.1], [-1.0, 1.0], [0.3, 0.9], [-1.0, 0.0], [0.5, -1.0]]])
    text = torch.tensor([[[0.0, 2.0], [0.1, 0.1]]])
    ctx = PruneContext.create(feats, grid=(2, 3), keep=5, text_features=text)
    assert run(ctx, "dart", pivots=1, text_pivots=1).indices.tolist() == [[0, 1, 2, 4, 5]]
    # without the instruction the image pivot takes all four, least similar to e0 first:
    # 4 (cosine -1), 2 (-0.71), 3 (0.32), 5 (0.45); token 1 (0.995) is dropped
    assert run(ctx, "dart_visual", pivots=1).indices.tolist() == [[0, 2, 3, 4, 5]]


def test_instruction_of_another_width_or_padding_is_handled():
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(2, 36, 8, generator=g)
    ctx = PruneContext.create(feats, keep=10, text_features=torch.randn(2, 3, 5, generator=g))
    with pytest.raises(ContractError, match="D_text=5"):  # width 5 != 8: not one space
        run(ctx, "dart")
    assert run(ctx, "dart", text_pivots=0).counts.tolist() == [10, 10]
    text = torch.randn(2, 4, 8, generator=g)
    text_valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    poisoned = torch.where(text_valid[..., None], text, torch.full_like(text, 1e3))
    ctx = PruneContext.create(feats, keep=10, text_features=poisoned, text_valid=text_valid)
    sel = run(ctx, "dart")
    for b in range(2):
        want = reference(feats[b], torch.ones(36, dtype=torch.bool), 10, 4, poisoned[b], text_valid[b], 4)
        assert sel.indices[b].tolist() == want, b


# ---------------------------------------------------------------- through the LLaVA adapter


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_tiny_llava()


def test_llava_generate_batch_of_two_left_padded_equals_each_alone(model):
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(4))
    prompts = ["what is in the picture?", "is there a red square on the left side of it?"]
    batch = make_inputs(model, images, prompts)
    assert (batch["attention_mask"][0] == 0).any()  # the short prompt is left-padded
    with attach(model, "dart", keep=0.25) as handle:  # image + instruction pivots
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
        together, scores = out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, dim=1)
        rec = handle.records[0]
        assert rec.layer == 2 and rec.counts.tolist() == [144, 144]
        for b in range(2):
            alone_in = make_inputs(model, images[b : b + 1], prompts[b : b + 1])
            with torch.no_grad():
                alone = model.generate(**alone_in, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
            assert torch.equal(alone.sequences[0, alone_in["input_ids"].shape[1]:], together[b])
            torch.testing.assert_close(torch.stack(alone.logits, dim=1)[0], scores[b], atol=1e-4, rtol=1e-4)
            assert torch.equal(handle.records[-1].indices[0], rec.indices[b])


def test_llava_keep_one_is_unpruned(model):
    batch = make_inputs(model, torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(5)), ["a", "b c d"])
    with torch.no_grad():
        ref = model(**batch).logits
        with attach(model, "dart", keep=1.0):
            got = model(**batch).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_alone_on_tied_features(seed):
    """Regression: with bmm cosines a batch of one rounded differently from a batch of two,
    which flipped exact ties (found by the kit: grid 1x11, D=10, tied features)."""
    from vtprune.conformance_tests import build_context
    from vtprune.conformance_tests.generators import ContextSpec

    ctx = build_context(ContextSpec(batch=2, grid=(1, 11), dim=10, budgets=(6, 6), features="ties", seed=seed))
    sel = run(ctx)
    for b in range(2):
        assert torch.equal(run(ctx.sample(b)).indices[0], sel.indices[b, : int(sel.counts[b])]), b
