"""VisionZip: dominant tokens by [CLS] attention, contextual tokens merged by similarity."""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import ContractError, PruneContext
from vtprune.backbones import attach
from vtprune.conformance_tests import check_strategy
from vtprune.models import build_tiny_llava, make_inputs
from vtprune.strategies.visionzip import split_budget


def run(ctx: PruneContext, **params) -> vtprune.Selection:
    return vtprune.get_strategy("visionzip", **params)(ctx)


def reference(features, cls, valid, k, ratio=10 / 64, merge="mean"):
    """One sample, written out plainly (lists and loops): (kept indices, their features)."""
    n = features.shape[0]
    c = int(k * ratio + 0.5)
    dom_n = k - c
    ids = [i for i in range(n) if valid[i]]
    ids_by_score = sorted(ids, key=lambda i: (-float(cls[i]), i))
    dominant = sorted(ids_by_score[:dom_n])
    rest = [i for i in ids if i not in dominant]
    out = {i: features[i] for i in dominant}
    if c:
        step = max(1, len(rest) // c)
        targets = rest[::step][:c]
        groups = {t: [] for t in targets}
        unit = torch.nn.functional.normalize(features.float(), dim=-1)
        for i in rest:
            if i in targets:
                continue
            sims = [float(unit[i] @ unit[t]) for t in targets]
            groups[targets[sims.index(max(sims))]].append(i)
        for t, members in groups.items():
            if not members:
                out[t] = features[t]
            elif merge == "mean":
                out[t] = features[[t, *members]].float().mean(dim=0).to(features.dtype)
            else:
                out[t] = (features[t].float() + features[members].float().mean(dim=0)).to(features.dtype)
    kept = sorted(out)
    return torch.tensor(kept, dtype=torch.long), torch.stack([out[i] for i in kept]) if kept else None


def test_split_is_the_authors_llava_setting():
    dom, ctx = split_budget(torch.tensor([64, 128, 192, 576, 1, 0]), 10 / 64)
    assert dom.tolist() == [54, 108, 162, 486, 1, 0]
    assert ctx.tolist() == [10, 20, 30, 90, 0, 0]


def test_dominant_tokens_are_exactly_the_top_cls_attention_tokens():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 64, 8, generator=g)
    cls = torch.rand(2, 3, 64, generator=g)
    ctx = PruneContext.create(feats, keep=32, cls_attention=cls)
    sel = run(ctx, contextual_ratio=0.0)  # dominant tokens only: 32 of them
    top = cls.mean(dim=1).topk(32, dim=1).indices.sort(dim=1).values
    assert torch.equal(sel.indices, top)
    assert torch.equal(sel.features, feats.gather(1, top[..., None].expand(-1, -1, 8)))
    # with the default split the 27 dominant tokens are the top 27 and keep their features
    sel = run(ctx)
    top27 = cls.mean(dim=1).topk(27, dim=1).indices
    for b in range(2):
        kept = sel.indices[b].tolist()
        assert set(top27[b].tolist()) <= set(kept)
        for i in top27[b].tolist():
            assert torch.equal(sel.features[b, kept.index(i)], feats[b, i])


def test_merged_features_are_the_mean_of_their_group_hand_computed():
    feats = torch.tensor(
        [[[9.0, 0.0], [1.0, 0.0], [3.0, 1.0], [2.0, 2.0], [0.0, 5.0], [7.0, 7.0]]]
    )
    cls = torch.tensor([[0.9, 0.1, 0.1, 0.1, 0.1, 0.8]])
    ctx = PruneContext.create(feats, grid=(2, 3), keep=3, cls_attention=cls)
    sel = run(ctx, contextual_ratio=0.5)
    # contextual = floor(3 * 0.5 + 0.5) = 2, dominant = 1 (token 0); remaining 1..5, step 2,
    # targets 1 and 3; token 2 [3, 1] is nearest (cosine) to target 1 [1, 0] (0.949 vs 0.894),
    # token 4 [0, 5] to target 3 [2, 2], token 5 [7, 7] to target 3 (cosine 1).
    assert sel.indices.tolist() == [[0, 1, 3]]
    want = torch.tensor([[9.0, 0.0], [(1 + 3) / 2, (0 + 1) / 2], [(2 + 0 + 7) / 3, (2 + 5 + 7) / 3]])
    torch.testing.assert_close(sel.features[0], want)
    authors = run(ctx, contextual_ratio=0.5, merge="target_plus_mean")
    want_code = torch.tensor([[9.0, 0.0], [1 + 3, 0 + 1], [2 + (0 + 7) / 2, 2 + (5 + 7) / 2]])
    torch.testing.assert_close(authors.features[0], want_code)


@pytest.mark.parametrize("merge", ["mean", "target_plus_mean"])
def test_matches_a_plain_per_sample_reference(merge):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 100, 6, generator=g)
    cls = torch.rand(3, 100, generator=g)
    valid = torch.rand(3, 100, generator=g) > 0.3
    ctx = PruneContext.create(feats, keep=0.4, valid=valid, cls_attention=cls)
    sel = run(ctx, contextual_ratio=0.3, merge=merge)
    for b in range(3):
        kept, want = reference(feats[b], cls[b], valid[b], int(ctx.budget[b]), 0.3, merge)
        k = int(sel.counts[b])
        assert torch.equal(sel.indices[b, :k], kept)
        torch.testing.assert_close(sel.features[b, :k], want)


def test_ragged_batch_equals_each_sample_alone_and_never_touches_padding():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(4, 144, 16, generator=g)
    cls = torch.rand(4, 2, 144, generator=g)
    valid = torch.rand(4, 144, generator=g) > torch.tensor([0.0, 0.3, 0.6, 0.9])[:, None]
    feats_poisoned = torch.where(valid[..., None], feats, torch.full_like(feats, 1e6))
    ctx = PruneContext.create(feats_poisoned, keep=torch.tensor([30, 40, 20, 5]), valid=valid, cls_attention=cls)
    sel = run(ctx)
    kept = sel.token_mask(144)
    assert not (kept & ~valid).any()
    assert sel.features[sel.kept_mask].abs().max() < 1e3  # padding was never merged in
    for b in range(4):
        alone = run(ctx.sample(b))
        assert torch.equal(alone.indices[0], sel.indices[b, : int(sel.counts[b])])
        torch.testing.assert_close(alone.features[0], sel.features[b, : int(sel.counts[b])])


def test_keep_all_is_the_identity():
    feats = torch.randn(2, 36, 4)
    ctx = PruneContext.create(feats, keep=1.0, cls_attention=torch.rand(2, 36))
    sel = run(ctx)
    assert torch.equal(sel.indices, torch.arange(36).expand(2, 36))
    assert torch.equal(sel.features, feats)


def test_bad_parameters_are_refused():
    with pytest.raises(ContractError, match="contextual_ratio"):
        vtprune.get_strategy("visionzip", contextual_ratio=1.5)
    with pytest.raises(ContractError, match="merge"):
        vtprune.get_strategy("visionzip", merge="median")


def test_needs_cls_attention():
    ctx = PruneContext.create(torch.randn(1, 16, 4), keep=0.5)
    with pytest.raises(vtprune.core.MissingSignalError, match="cls_attention"):
        run(ctx)


def test_conformance_kit():
    results = check_strategy("visionzip", max_examples=40)
    assert all(r.status != "failed" for r in results), [r.message for r in results if r.status == "failed"]


# ---------------------------------------------------------------- through the LLaVA adapter


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return build_tiny_llava()


def test_llava_generate_batch_of_two_left_padded_equals_each_alone(model):
    images = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(3))
    prompts = ["what is in the picture?", "is there a red square on the left side of it?"]
    batch = make_inputs(model, images, prompts)
    assert (batch["attention_mask"][0] == 0).any()  # the short prompt is left-padded
    with attach(model, "visionzip", keep=0.25) as handle:
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
        together, scores = out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, dim=1)
        rec = handle.records[0]
        assert rec.layer is None and rec.counts.tolist() == [144, 144]
        for b in range(2):
            alone_in = make_inputs(model, images[b : b + 1], prompts[b : b + 1])
            with torch.no_grad():
                alone = model.generate(**alone_in, max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)
            assert torch.equal(alone.sequences[0, alone_in["input_ids"].shape[1]:], together[b])
            torch.testing.assert_close(torch.stack(alone.logits, dim=1)[0], scores[b], atol=1e-4, rtol=1e-4)
            assert torch.equal(handle.records[-1].indices[0], rec.indices[b])


@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_alone_on_tied_features(seed):
    """Regression: the assignment to targets must not flip exact ties between a sample alone
    and in a batch (bmm rounds differently for a batch of one; found by the kit)."""
    from vtprune.conformance_tests import build_context
    from vtprune.conformance_tests.generators import ContextSpec

    spec = ContextSpec(batch=4, grid=(5, 10), dim=16, budgets=(31, 0, 7, 48), features="ties", seed=seed,
                       signals=("cls_attention",), heads=2)
    ctx = build_context(spec)
    sel = run(ctx)
    for b in range(4):
        alone = run(ctx.sample(b))
        k = int(sel.counts[b])
        assert torch.equal(alone.indices[0], sel.indices[b, :k]), b
        torch.testing.assert_close(alone.features[0], sel.features[b, :k], atol=1e-5, rtol=1e-5)
