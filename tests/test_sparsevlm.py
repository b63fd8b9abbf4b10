"""SparseVLM: instruction raters' attention (text_attention), top tokens plus recycled clusters
of deleted tokens, exact budgets after layers 2/6/15 of 32; the text_attention signal itself."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from vtprune import ContractError, PruneContext, Schedule
from vtprune.backbones import attach
from vtprune.conformance_tests import check_stage, check_strategy
from vtprune.core import Allocation, Capabilities, Selection, Strategy
from vtprune.models import IMAGE_ID, build_tiny_llava, make_inputs
from vtprune.strategies.sparsevlm import (
    authors_counts,
    cluster_merge,
    max_average_keep,
    rater_scores,
    recycled_count,
    sparsevlm_layers,
    split_budget,
)

PROMPTS = ["what is in the picture?", "is there a red square on the left side of it?"]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return build_tiny_llava()


# -- plain references (loops, as the paper and the authors' code read) ----------------------------


def reference_scores(att, text_valid, valid):
    """One sample: att [H, T, N], text_valid [T], valid [N] -> scores [N] (float64)."""
    a = att.double().mean(dim=0)
    rows = [j for j in range(a.shape[0]) if text_valid[j]]
    toks = [v for v in range(a.shape[1]) if valid[v]]
    if not rows:
        return torch.zeros(a.shape[1], dtype=torch.float64)
    rel = {}
    for j in rows:
        total = 0.0
        for v in toks:
            column = sum(float(a[i, v]) for i in rows)
            total += float(a[j, v]) / column if column > 0 else 0.0
        rel[j] = total / max(len(toks), 1)
    mean = sum(rel.values()) / len(rows)
    raters = [j for j in rows if rel[j] > mean] or rows
    out = torch.zeros(a.shape[1], dtype=torch.float64)
    for v in toks:
        out[v] = sum(float(a[j, v]) for j in raters) / len(raters)
    return out


def reference_clusters(x, c):
    """DPC-kNN of one sample's candidates x [M, D] into c clusters: (centres, members) lists."""
    m, d = x.shape
    dist = [[0.0 if i == j else float((x[i].double() - x[j].double()).norm()) / math.sqrt(d) for j in range(m)] for i in range(m)]
    density = [math.exp(-sum(v * v for v in sorted(dist[i])[:c]) / c) for i in range(m)]
    far = max(max(row) for row in dist)
    delta = []
    for i in range(m):
        denser = [dist[i][j] for j in range(m) if density[j] > density[i] or (density[j] == density[i] and j < i)]
        delta.append(min(denser) if denser else far)
    centres = sorted(range(m), key=lambda i: (-delta[i] * density[i], i))[:c]
    members = {k: [] for k in range(c)}
    for i in range(m):
        k = centres.index(i) if i in centres else min(range(c), key=lambda k: (dist[i][centres[k]], k))
        members[k].append(i)
    return centres, members


# -- the signal: recomputed rows equal eager attention ---------------------------------------------


def test_text_attention_matches_eager_probabilities():
    eager = build_tiny_llava(attn_implementation="eager")
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    seen = {}

    def spy(ctx: PruneContext):
        seen[ctx.layer] = (ctx.text_attention.clone(), ctx.text_valid.clone())
        return torch.zeros(ctx.features.shape[:2])

    def allocate(ctx, scores):
        return Allocation(budget=ctx.budget.clone())

    topk = vtprune.get_strategy("fastv").selector
    strategy = Strategy("spy", spy, allocate, topk, Capabilities(needs=frozenset({"text_attention"})))
    # "current": a point before layer K is scored by layer K; "previous": by layer K - 1
    sources = {"current": {0: 0, 2: 2}, "previous": {1: 0, 3: 2}}  # point layer -> scoring layer
    for side, source in (("left", "current"), ("right", "current"), ("left", "previous"), ("right", "previous")):
        inputs = make_inputs(eager, images, PROMPTS, padding_side=side)
        with torch.no_grad():
            ref = eager(**inputs, output_attentions=True).attentions
        points = [(k, 1.0) for k in sources[source]]
        seen.clear()
        with attach(eager, strategy, schedule=Schedule.at_layers(points, attention=source)):
            with torch.no_grad():
                eager(**inputs)
        assert sorted(seen) == sorted(sources[source])
        mask, ids = inputs["attention_mask"].bool(), inputs["input_ids"]
        for point, layer in sources[source].items():
            got, real = seen[point]
            for b in range(2):
                vis = ids[b] == IMAGE_ID
                last = int(vis.nonzero().max())
                rows = [t for t in range(ids.shape[1]) if t > last and mask[b, t]]
                assert real[b].tolist() == [True] * len(rows) + [False] * (real.shape[1] - len(rows))
                want = ref[layer][b][:, rows][:, :, vis]  # [H, W_b, 576]
                torch.testing.assert_close(got[b, :, : len(rows)], want, atol=1e-6, rtol=1e-5)
                assert not got[b, :, len(rows):].any()
                assert got.shape[1] == 4 and got.shape[3] == 576 and got.dtype == torch.float32


def test_text_attention_is_zero_on_pruned_tokens_and_keeps_the_rows(model):
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(1))
    inputs = make_inputs(model, images, PROMPTS)
    seen = []
    inner = vtprune.get_strategy("sparsevlm")

    def spy(ctx):
        seen.append(ctx)
        return inner.scorer(ctx)

    strategy = Strategy("spy", spy, inner.allocator, inner.selector, inner.capabilities, schedule_factory=inner.schedule_factory)
    with attach(model, strategy, keep=0.25):
        with torch.no_grad():
            model(**inputs)
    assert [c.layer for c in seen] == [1, 2, 3]
    for ctx in seen[1:]:
        dead = ~ctx.valid
        assert dead.any() and not ctx.text_attention[dead[:, None, None, :].expand_as(ctx.text_attention)].any()
        assert torch.equal(ctx.text_valid, seen[0].text_valid)


def test_context_checks_text_attention_shapes():
    f = torch.randn(2, 16, 4)
    with pytest.raises(ContractError, match="text_attention"):
        PruneContext.create(f, keep=0.5, text_attention=torch.rand(2, 16))
    with pytest.raises(ContractError, match="T=3"):
        PruneContext.create(f, keep=0.5, text_features=torch.randn(2, 3, 4), text_attention=torch.rand(2, 1, 5, 16))
    bad = torch.rand(2, 1, 3, 16)
    bad[0, 0, 2, 0] = torch.nan
    with pytest.raises(ContractError, match="NaN"):
        PruneContext.create(f, keep=0.5, text_attention=bad)
    ok = PruneContext.create(f, keep=0.5, text_attention=bad, text_valid=torch.tensor([[1, 1, 0], [1, 1, 1]]).bool())
    assert ok.sample(1).text_attention.shape == (1, 1, 3, 16)


# -- scorer: raters chosen as the paper says ----------------------------------------------------------


def test_raters_by_hand():
    att = torch.tensor([[0.4, 0.4, 0.0, 0.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.05, 0.05]])[None, None]
    # column sums 0.5 0.5 0.15 0.15; relevance (mean share over the 4 tokens): 0.4, 0.433, 0.167;
    # mean 1/3, so raters = rows 0 and 1, and the score is their mean attention
    got = rater_scores(att, None, torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(got, torch.tensor([[0.25, 0.25, 0.05, 0.05]]))
    every = rater_scores(att, None, torch.ones(1, 4, dtype=torch.bool), raters="all")
    torch.testing.assert_close(every, att[0, 0].mean(dim=0, keepdim=True))
    one_row = rater_scores(att[:, :, 2:], None, torch.ones(1, 4, dtype=torch.bool))  # nobody above: all rows
    torch.testing.assert_close(one_row, att[0, :, 2])


def test_raters_match_the_plain_reference_with_padding_rows_and_pruned_tokens():
    g = torch.Generator().manual_seed(3)
    att = torch.rand(3, 4, 6, 20, generator=g).softmax(dim=-1) * 0.6
    text_valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]).bool()
    att = torch.where(text_valid[:, None, :, None], att, torch.nan)
    valid = torch.rand(3, 20, generator=g) > 0.3
    att = torch.where(valid[:, None, None, :], att, 0.0)
    ctx = PruneContext.create(torch.randn(3, 20, 4), grid=(4, 5), keep=0.5, valid=valid, text_attention=att, text_valid=text_valid)
    got = vtprune.get_strategy("sparsevlm").scorer(ctx)
    for b in range(3):
        want = reference_scores(att[b], text_valid[b], valid[b]).float()
        torch.testing.assert_close(got[b][valid[b]], want[valid[b]], atol=1e-7, rtol=1e-5)
    assert not got[2].any()  # no instruction: nothing rates


# -- selector: the recycling rule, clusters and merges ----------------------------------------------


def test_recycling_counts_are_the_authors():
    # retain 192 of 576: top 300, 276 deleted, the top 30% (83) of them make 9 clusters
    assert recycled_count(torch.tensor([276, 109, 94, 1, 0])).tolist() == [9, 4, 3, 1, 0]
    assert authors_counts(192) == [309, 204, 113]
    top, rec = split_budget(torch.tensor([576, 309, 204, 576, 576, 40]), torch.tensor([309, 204, 113, 5, 576, 0]))
    assert top.tolist() == [300, 200, 110, 0, 576, 0] and rec.tolist() == [9, 4, 3, 5, 0, 0]
    alive = torch.arange(1, 80)
    for k in range(0, 79):
        budget = torch.minimum(torch.full_like(alive, k), alive)
        top, rec = split_budget(alive, budget)
        assert torch.equal(top + rec, budget)
        full = budget >= recycled_count(alive)  # the budget allows the authors' count
        assert torch.equal(rec[full & (top < budget)], recycled_count(alive - top)[full & (top < budget)])
    top, rec = split_budget(torch.tensor([576]), torch.tensor([300]), recycle=False)
    assert (top.item(), rec.item()) == (300, 0)


def test_two_groups_recycle_into_their_means():
    """64 tokens, budget 32: top 30 by score, 34 deleted, the 11 best of them clustered into
    2 recycled tokens. Those 11 lie in two tight groups: each group merges into one slot."""
    g = torch.Generator().manual_seed(0)
    n, d = 64, 2
    scores = torch.linspace(1.0, 0.0, n)[None]  # token i has rank i
    feats = 50.0 * torch.randn(1, n, d, generator=g)
    group_a, group_b = list(range(30, 36)), list(range(36, 41))  # ranks 30..40: the candidates
    feats[0, group_a] = torch.tensor([10.0, 0.0]) + 0.1 * torch.randn(6, d, generator=g)
    feats[0, group_b] = torch.tensor([-10.0, 0.0]) + 0.1 * torch.randn(5, d, generator=g)
    ctx = PruneContext.create(feats, grid=(8, 8), keep=32)
    sel = vtprune.get_strategy("sparsevlm").selector(ctx, scores, Allocation(ctx.budget.clone()))
    kept = sel.indices[0].tolist()
    assert kept[:30] == list(range(30)) and len(kept) == 32
    assert torch.equal(sel.features[0, :30], feats[0, :30])
    (ia, ib) = kept[30:]
    assert ia in group_a and ib in group_b
    torch.testing.assert_close(sel.features[0, 30], feats[0, group_a].mean(dim=0))
    torch.testing.assert_close(sel.features[0, 31], feats[0, group_b].mean(dim=0))


def test_clusters_match_the_plain_dpc_knn_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 23, 6, generator=g)
    x[1, 5] = x[1, 7]  # a duplicate: equal densities, ties broken by position
    member = torch.arange(23)[None, :] < torch.tensor([23, 15, 11])[:, None]
    clusters = torch.tensor([3, 2, 1])
    centres, merged, sizes = cluster_merge(x, member, clusters)
    for b in range(3):
        m, c = int(member[b].sum()), int(clusters[b])
        want_centres, want_members = reference_clusters(x[b, :m], c)
        assert centres[b, :c].tolist() == want_centres
        for k in range(c):
            assert int(sizes[b, k]) == len(want_members[k])
            torch.testing.assert_close(merged[b, k], x[b, want_members[k]].mean(dim=0))
        alone = cluster_merge(x[b : b + 1, :m], member[b : b + 1, :m], clusters[b : b + 1])
        assert torch.equal(alone[0][0, :c], centres[b, :c]) and torch.equal(alone[1][0, :c], merged[b, :c])


@pytest.mark.parametrize("keep", [0, 1, 3, 17, 40, 63, 64])
def test_budgets_are_exact_and_keep_all_is_the_identity(keep):
    g = torch.Generator().manual_seed(keep)
    feats = torch.randn(2, 64, 8, generator=g)
    valid = torch.ones(2, 64, dtype=torch.bool)
    valid[1, ::3] = False
    att = torch.rand(2, 2, 5, 64, generator=g).softmax(dim=-1) * valid[:, None, None, :]
    budget = torch.tensor([keep, min(keep, int(valid[1].sum()))])
    ctx = PruneContext.create(feats, keep=budget, valid=valid, text_attention=att)
    sel = vtprune.get_strategy("sparsevlm")(ctx)
    assert sel.counts.tolist() == budget.tolist()
    if keep == 64:
        assert torch.equal(sel.indices[0], torch.arange(64)) and torch.equal(sel.features[0], feats[0])


# -- schedule ----------------------------------------------------------------------------------------


def test_schedule_layers_and_budgets():
    assert sparsevlm_layers(32) == [2, 6, 15] and sparsevlm_layers(4) == [0, 1, 2]
    s = vtprune.get_strategy("sparsevlm")
    sched = s.schedule(32, 0.1)
    # the authors prune the outputs of layers 2 / 6 / 15 with the attention each computed
    assert [p.layer for p in sched.points] == [3, 7, 16] and sched.attention == "previous"
    counts = sched.counts(576)
    assert counts == [105, 70, 39]  # 300 : 200 : 110, mean over layers 3..31 ~ 58
    assert abs((4 * counts[0] + 9 * counts[1] + 16 * counts[2]) / 29 - 57.6) < 1
    assert abs(max_average_keep(32) - (4 + 9 * 2 / 3 + 16 * 11 / 30) / 29) < 1e-12
    before = vtprune.get_strategy("sparsevlm", placement="input").schedule(32, 0.1)
    assert [p.layer for p in before.points] == [2, 6, 15] and before.attention == "current"
    assert before.counts(576) == [106, 71, 39]  # mean over layers 2..31
    assert abs(max_average_keep(32, placement="input") - (4 + 9 * 2 / 3 + 17 * 11 / 30) / 30) < 1e-12
    assert [p.layer for p in s.schedule(4, 0.25).points] == [1, 2, 3]
    with pytest.raises(ContractError, match="last"):
        vtprune.get_strategy("sparsevlm", layers=[0, 1, 3]).schedule(4, 0.25)
    with pytest.raises(ContractError, match="placement"):
        vtprune.get_strategy("sparsevlm", placement="after").schedule(32, 0.1)
    with pytest.raises(ContractError, match="at most"):
        s.schedule(32, 0.6)
    assert s.schedule(32, 1.0).counts(576) == [576, 576, 576]
    authors = vtprune.get_strategy("sparsevlm", budget="authors")
    assert authors.schedule(32, 192).counts(576) == [309, 204, 113]
    with pytest.raises(ContractError, match="192"):
        authors.schedule(32, 100)
    with pytest.raises(ContractError, match="profile"):
        vtprune.get_strategy("sparsevlm", profile=(1, 2, 3)).schedule(32, 0.1)
    with pytest.raises(ContractError, match="collide"):
        sparsevlm_layers(2)


# -- kit ---------------------------------------------------------------------------------------------


def test_kit_clean():
    for results in (
        check_strategy("sparsevlm", 40),
        check_strategy("sparsevlm", 20, raters="all", recycle=False),
        check_stage("scorer", "text_raters", 30),
        check_stage("selector", "sparsevlm", 30),
    ):
        failures = [r.message for r in results if r.status == "failed"]
        assert not failures, "\n\n".join(failures)


# -- LLaVA ------------------------------------------------------------------------------------------


def test_llava_generate_batch_of_two_left_padded_equals_each_alone(model):
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(4))
    batch = make_inputs(model, images, PROMPTS)
    assert (batch["attention_mask"][0] == 0).any()  # the short prompt is left-padded
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with attach(model, "sparsevlm", keep=0.25) as handle:
        with torch.no_grad():
            out = model.generate(**batch, **kw)
        together, scores = out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, dim=1)
        recs = handle.records
        assert [r.layer for r in recs] == [1, 2, 3]
        assert [r.counts.tolist() for r in recs] == [[212, 212], [142, 142], [78, 78]]
        for b in range(2):
            alone_in = make_inputs(model, images[b : b + 1], PROMPTS[b : b + 1])
            with torch.no_grad():
                alone = model.generate(**alone_in, **kw)
            assert torch.equal(alone.sequences[0, alone_in["input_ids"].shape[1]:], together[b])
            torch.testing.assert_close(torch.stack(alone.logits, dim=1)[0], scores[b], atol=1e-4, rtol=1e-4)
            for rb, ra in zip(recs, handle.records):
                assert torch.equal(ra.indices[0], rb.indices[b])


def test_llava_keep_one_is_unpruned(model):
    batch = make_inputs(model, torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(5)), ["a", "b c d"])
    with torch.no_grad():
        ref = model(**batch).logits
        with attach(model, "sparsevlm", keep=1.0):
            got = model(**batch).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_cached_greedy_equals_no_cache_recompute(model):
    """Greedy decoding with the pruned KV cache equals recomputing the whole pruned sequence at
    every step (no cache) with the prefill's selections — indices and recycled states —
    replayed: visual states precede the instruction, so they are the same at every step."""
    images = torch.rand(1, 3, 336, 336, generator=torch.Generator().manual_seed(6))
    inputs = make_inputs(model, images, PROMPTS[1:])
    inner = vtprune.get_strategy("sparsevlm")
    chosen: dict[int, Selection] = {}

    def record(ctx, scores, alloc):
        sel = inner.selector(ctx, scores, alloc)
        chosen.setdefault(ctx.layer, sel)
        return sel

    spy = Strategy("spy", inner.scorer, inner.allocator, record, inner.capabilities, schedule_factory=inner.schedule_factory)
    # a random model may generate the image id as text; recomputing would then read it as a
    # 577th image token (transformers refuses), so both runs suppress it
    kw = dict(max_new_tokens=5, do_sample=False, suppress_tokens=[IMAGE_ID])
    with attach(model, spy, keep=0.25):
        with torch.no_grad():
            cached = model.generate(**inputs, **kw)
    assert sorted(chosen) == [1, 2, 3]

    def replay(ctx, scores, alloc):
        return chosen[ctx.layer]

    def zeros(ctx):
        return torch.zeros(ctx.features.shape[:2])

    replayed = Strategy("replay", zeros, inner.allocator, replay, Capabilities(merges=True), schedule_factory=inner.schedule_factory)
    with attach(model, replayed, keep=0.25):
        with torch.no_grad():
            recomputed = model.generate(**inputs, **kw, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_text_attention_before_layer_0_with_previous_attention_is_refused(model):
    """No layer has run before layer 0: a point there scored by "the previous layer" is refused
    at attach, naming the signal; "current" runs there."""
    with pytest.raises(vtprune.MissingSignalError, match="text_attention"):
        attach(model, "sparsevlm", schedule=Schedule.at_layers([(0, 0.5)], attention="previous"))
    with attach(model, "sparsevlm", schedule=Schedule.at_layers([(0, 0.5)], attention="current")):
        pass
