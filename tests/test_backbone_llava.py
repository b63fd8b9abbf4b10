"""Exactness tests of the LLaVA backbone adapter against plain references (tiny random models).

References are written out plainly here: a physically shortened input for pre-LLM pruning, and
a manual loop over the decoder layers that drops tokens at the prune layers for in-LLM pruning.
"""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import ContractError, MissingSignalError, Schedule, keep_count
from vtprune.backbones import UnsupportedModelError, attach
from vtprune.core import Allocation, Capabilities, PruneContext, Strategy
from vtprune.models import IMAGE_ID, build_tiny_llava, make_inputs

PROMPTS = ["what is in the picture?", "count", "is there a red square on the left side?"]
STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return build_tiny_llava()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 336, 336, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def batch(model, images):
    return make_inputs(model, images, PROMPTS)


def greedy(model, inputs, steps=STEPS, **kw):
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, do_sample=False, **kw)
    return out[:, inputs["input_ids"].shape[1]:]


def greedy_with_logits(model, inputs, steps=3):
    """Generated tokens [B, steps] and the logits of every step [B, steps, V]."""
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    return out.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(out.logits, dim=1)


def logits(model, inputs, **kw):
    with torch.no_grad():
        return model(**inputs, **kw).logits


# ---------------------------------------------------------------- plain references


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def last_token_attention(layer, h_in, cos, sin):
    """[T] mean-over-heads attention of the last token at ``layer`` (batch of one, no padding)."""
    attn = layer.self_attn
    x = layer.input_layernorm(h_in)[0]  # [T, D]
    hd = attn.head_dim
    q = attn.q_proj(x[-1:]).view(1, -1, hd).transpose(0, 1)  # [H, 1, hd]
    k = attn.k_proj(x).view(x.shape[0], -1, hd).transpose(0, 1)  # [Hkv, T, hd]
    q = rotate(q, cos[0, -1:], sin[0, -1:])
    k = rotate(k, cos[0], sin[0])
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    probs = torch.softmax((q @ k.transpose(1, 2)).float() * attn.scaling, dim=-1)  # [H, 1, T]
    return probs[:, 0].mean(dim=0)


def reference_logits(model, input_ids, pixel_values, points, positions="original", kept=None, source="previous"):
    """Manual decoder loop for ONE unpadded sample; drops visual tokens before each point's layer.

    ``kept`` maps a layer to fixed kept visual indices; otherwise FastV-style top attention
    of the last token at the previous layer decides. Returns (logits [1, T', V], kept dict).
    """
    lm = model.model.language_model
    layers = lm.layers
    with torch.no_grad():
        h = lm.embed_tokens(input_ids).clone()
        feats = model.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output[0]
        vis = input_ids[0] == IMAGE_ID
        h[0, vis] = feats
        orig = torch.arange(h.shape[1])
        vrank = torch.full_like(orig, -1)
        vrank[vis] = torch.arange(int(vis.sum()))
        n = int(vis.sum())
        chosen = {}
        saved = None
        schedule = dict(points)
        for i in [None, *range(len(layers))]:
            if i in schedule:
                budget = keep_count(schedule[i], n)
                if kept is not None:
                    keep_vis = kept[i]
                elif source == "previous":
                    h_prev, cos_prev, sin_prev = saved
                    att = last_token_attention(layers[i - 1], h_prev, cos_prev, sin_prev)
                else:  # layer i's own attention on its (unpruned) input
                    pos = orig if positions == "original" else torch.arange(h.shape[1])
                    cos_now, sin_now = lm.rotary_emb(h, pos[None])
                    att = last_token_attention(layers[i], h, cos_now, sin_now)
                if kept is None:
                    cur = (vrank >= 0).nonzero()[:, 0]
                    order = torch.sort(att[cur], descending=True, stable=True).indices[:budget]
                    keep_vis = vrank[cur[order]].sort().values
                chosen[i] = keep_vis
                keep = (vrank < 0) | torch.isin(vrank, keep_vis)
                h, orig, vrank = h[:, keep], orig[keep], vrank[keep]
            if i is None:
                continue
            pos = orig if positions == "original" else torch.arange(h.shape[1])
            cos, sin = lm.rotary_emb(h, pos[None])
            saved = (h, cos, sin)
            h = layers[i](h, attention_mask=None, position_ids=pos[None], position_embeddings=(cos, sin))
        return model.lm_head(lm.norm(h)), chosen


# ---------------------------------------------------------------- keep-all is the identity


KEEP_ALL = {
    "pre-llm": ("random", Schedule.pre_llm(1.0)),
    "layer-2": ("fastv", Schedule.at_layers([(2, 1.0)])),
    "layers-1-3": ("fastv", Schedule.at_layers([(1, 1.0), (3, 1.0)])),
}


@pytest.mark.parametrize("case", sorted(KEEP_ALL))
def test_keep_all_reproduces_unpruned_logits_and_tokens(model, batch, case):
    ref_logits = logits(model, batch)
    ref_cached = greedy(model, batch)
    ref_uncached = greedy(model, batch, use_cache=False)
    name, schedule = KEEP_ALL[case]
    with attach(model, name, schedule=schedule) as handle:
        got = logits(model, batch)
        valid = batch["attention_mask"].bool()
        torch.testing.assert_close(got[valid], ref_logits[valid], atol=1e-5, rtol=1e-5)
        assert torch.equal(greedy(model, batch), ref_cached)
        assert torch.equal(greedy(model, batch, use_cache=False), ref_uncached)
        assert [r.layer for r in handle.records] == [p.layer for p in schedule.points]
        assert all(r.counts.tolist() == [576] * 3 for r in handle.records)


def test_keep_one_is_unpruned_for_every_registered_strategy(model, batch):
    """keep=1.0 through attach, with each strategy's own schedule, reproduces the unpruned
    logits for every registered strategy; none is skipped."""
    ref = logits(model, batch)
    valid = batch["attention_mask"].bool()
    names = vtprune.list_strategies()
    assert {"altp", "fastv", "pyramiddrop", "altp_pdrop", "divprune", "pool"} <= set(names)
    for name in names:
        with attach(model, name, keep=1.0) as handle:
            got = logits(model, batch)
            assert handle.records, name
            assert all(r.counts.tolist() == [576] * 3 for r in handle.records), name
        torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5, msg=name)


# ---------------------------------------------------------------- pre-LLM pruning


@pytest.mark.parametrize("keep", [0.25, 0])
@pytest.mark.parametrize("positions", ["original", "compact"])
def test_pre_llm_equals_physically_shortened_input(model, images, positions, keep):
    inputs = make_inputs(model, images[:1], PROMPTS[:1])
    with attach(model, "uniform", keep=keep, positions=positions) as handle:
        # no attention mask: gapped position ids must not be read as packed sequences
        got = logits(model, {k: v for k, v in inputs.items() if k != "attention_mask"}, use_cache=False)
        rec = handle.records[0]
    assert rec.layer is None and rec.counts.tolist() == [keep_count(keep, 576)]
    kept_ids = inputs["input_ids"].gather(1, rec.kept_positions)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output[0]
        embeds = model.model.language_model.embed_tokens(kept_ids).clone()
        embeds[kept_ids == IMAGE_ID] = feats[rec.indices[0]]
        if positions == "original":
            pos = rec.kept_positions
            assert (pos.diff(dim=1) > 1).any()  # there are gaps
        else:
            pos = torch.arange(kept_ids.shape[1])[None]
        assert torch.equal(rec.position_ids, pos)
        ref = model(inputs_embeds=embeds, position_ids=pos, attention_mask=torch.ones_like(kept_ids)).logits
        if positions == "original":  # the pitfall avoided: without a mask, gaps read as packed sequences
            naive = model(inputs_embeds=embeds, position_ids=pos, use_cache=False).logits
            assert (naive - ref).abs().max() > 1e-2
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_merging_strategy_features_replace_kept_tokens(model, images):
    """A selection with replacement features feeds those features to the LLM."""
    inputs = make_inputs(model, images[:1], PROMPTS[:1])
    base = vtprune.get_strategy("uniform")

    def select(ctx, scores, alloc):
        sel = base.selector(ctx, scores, alloc)
        feats = ctx.features.gather(1, sel.indices[..., None].expand(-1, -1, ctx.features.shape[-1]))
        return type(sel)(indices=sel.indices, counts=sel.counts, features=feats * 0 + 1.0)

    strategy = Strategy("ones", base.scorer, base.allocator, select, Capabilities(merges=True))
    with attach(model, strategy, keep=0.25) as handle:
        got = logits(model, inputs)
        rec = handle.records[0]
    kept_ids = inputs["input_ids"].gather(1, rec.kept_positions)
    with torch.no_grad():
        embeds = model.model.language_model.embed_tokens(kept_ids).clone()
        embeds[kept_ids == IMAGE_ID] = 1.0
        ref = model(inputs_embeds=embeds, position_ids=rec.kept_positions, attention_mask=torch.ones_like(kept_ids)).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- in-LLM pruning


IN_LLM = {
    "fastv-k2": [(2, 0.5)],
    "pyramid-1-3": [(1, 0.5), (3, 0.25)],
}


@pytest.mark.parametrize(
    "case,positions,source",
    [
        ("fastv-k2", "original", "previous"),
        ("fastv-k2", "compact", "previous"),
        ("pyramid-1-3", "original", "previous"),
        ("pyramid-1-3", "compact", "previous"),
        ("pyramid-1-3", "original", "current"),
    ],
)
def test_in_llm_matches_manual_layer_loop(model, images, case, positions, source):
    points = IN_LLM[case]
    for b in (0, 2):
        inputs = make_inputs(model, images[b : b + 1], PROMPTS[b : b + 1])
        schedule = Schedule.at_layers(points)
        with attach(model, "fastv", schedule=schedule, positions=positions, attention_source=source) as handle:
            got = logits(model, inputs)
            records = handle.records
        ref, chosen = reference_logits(
            model, inputs["input_ids"], inputs["pixel_values"], points, positions, source=source
        )
        for rec in records:
            assert torch.equal(rec.indices[0], chosen[rec.layer]), (case, b, rec.layer)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("positions", ["original", "compact"])
@pytest.mark.parametrize("case", ["pre-llm", "pyramid-1-3"])
def test_cached_generate_matches_no_cache_recompute(model, images, case, positions):
    """Greedy decoding with the pruned KV cache equals recomputing the pruned sequence each step."""
    if case == "pre-llm":
        name, points = "uniform", [(None, 0.25)]
        schedule = Schedule.pre_llm(0.25, positions)
    else:
        name, points = "fastv", IN_LLM[case]
        schedule = Schedule.at_layers(points, positions)
    inputs = make_inputs(model, images[1:2], PROMPTS[1:2])
    with attach(model, name, schedule=schedule) as handle:
        tokens = greedy(model, inputs, steps=5)
        kept = {r.layer: r.indices[0] for r in handle.records}
    ids = inputs["input_ids"]
    expected = []
    for _ in range(5):
        ref, _ = reference_logits(model, ids, inputs["pixel_values"], points, positions, kept=kept)
        nxt = ref[:, -1].argmax(dim=-1, keepdim=True)
        expected.append(int(nxt))
        ids = torch.cat([ids, nxt], dim=1)
    assert tokens[0].tolist() == expected


def test_no_cache_reprunes_deterministically(model, batch):
    """use_cache=False: every forward prunes again and makes the same choice."""
    with attach(model, "pyramiddrop", keep=0.5) as handle:
        first = logits(model, batch, use_cache=False)
        kept = [r.indices for r in handle.records]
        second = logits(model, batch, use_cache=False)
        assert torch.equal(first, second)
        assert all(torch.equal(a, r.indices) for a, r in zip(kept, handle.records))
    with attach(model, "uniform", keep=0.25):  # query-independent: cache on == cache off
        assert torch.equal(greedy(model, batch), greedy(model, batch, use_cache=False))


def test_recomputed_attention_matches_eager_probabilities(images):
    eager = build_tiny_llava(attn_implementation="eager")
    seen = {}

    def spy(ctx: PruneContext):
        seen[ctx.layer] = ctx.attention.clone()
        return ctx.attention.mean(dim=1)

    def allocate(ctx, scores):
        return Allocation(budget=ctx.budget.clone())

    topk = vtprune.get_strategy("fastv").selector
    strategy = Strategy("spy", spy, allocate, topk, Capabilities(needs=frozenset({"attention"})))
    for side in ("left", "right"):
        inputs = make_inputs(eager, images, PROMPTS, padding_side=side)
        with torch.no_grad():
            ref = eager(**inputs, output_attentions=True).attentions
        with attach(eager, strategy, schedule=Schedule.at_layers([(2, 1.0)])):
            logits(eager, inputs)
        mask = inputs["attention_mask"]
        last = (mask * torch.arange(mask.shape[1])).argmax(dim=1)
        vis = inputs["input_ids"] == IMAGE_ID
        for b in range(3):
            row = ref[1][b, :, last[b]]  # [H, T] at layer K-1 = 1
            torch.testing.assert_close(seen[2][b], row[:, vis[b]], atol=1e-6, rtol=1e-5)
            assert seen[2][b].shape == (4, 576)


def test_cls_attention_matches_eager_vision_tower(images):
    """The [CLS] -> patch attention of the projected vision layer, in forward and generate."""
    eager = build_tiny_llava(attn_implementation="eager")
    inputs = make_inputs(eager, images[:2], PROMPTS[:2])
    seen = []

    def spy(ctx: PruneContext):
        seen.append(ctx.cls_attention.clone())
        return ctx.cls_attention.mean(dim=1)

    base = vtprune.get_strategy("fastv")
    strategy = Strategy("cls-spy", spy, base.allocator, base.selector, Capabilities(needs=frozenset({"cls_attention"})))
    with torch.no_grad():
        ref = eager.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    with attach(eager, strategy, keep=0.25):
        logits(eager, inputs)
        greedy(eager, inputs, steps=1)
    assert len(seen) == 2
    for got in seen:  # vision_feature_layer=-2: the attention of the second-to-last layer
        torch.testing.assert_close(got, ref[-2][:, :, 0, 1:], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- batches


def _strategy_cases():
    return vtprune.list_strategies()


@pytest.mark.parametrize("name", _strategy_cases())
def test_batch_consistency_every_strategy(model, images, name):
    strategy = vtprune.get_strategy(name)
    if not strategy.capabilities.batch_consistent:
        pytest.skip(f"strategy {name!r} declares batch_consistent=False")
    batch = make_inputs(model, images, PROMPTS)
    try:
        handle = attach(model, strategy, keep=0.25)
    except MissingSignalError as err:
        pytest.skip(f"adapter cannot supply a signal {name!r} needs: {err}")
    with handle:
        together, scores = greedy_with_logits(model, batch)
        batch_records = handle.records
        for b in range(3):
            alone = make_inputs(model, images[b : b + 1], PROMPTS[b : b + 1])
            tokens, alone_scores = greedy_with_logits(model, alone)
            assert torch.equal(tokens[0], together[b]), (name, b)
            torch.testing.assert_close(alone_scores[0], scores[b], atol=1e-4, rtol=1e-4)
            for rb, ra in zip(batch_records, handle.records):
                assert torch.equal(rb.indices[b], ra.indices[0]), (name, b, rb.layer)


@pytest.mark.parametrize(
    "name,positions,eager",
    [("fastv", "compact", False), ("uniform", "compact", False), ("fastv", "original", True)],
)
def test_padded_batch_generate_compact_and_eager(model, images, name, positions, eager):
    """Left-padded batches under compact positions and under eager attention."""
    net = build_tiny_llava(attn_implementation="eager") if eager else model
    batch = make_inputs(net, images, PROMPTS)
    with attach(net, name, keep=0.25, positions=positions):
        together, scores = greedy_with_logits(net, batch, steps=STEPS)
        for b in range(3):
            alone = make_inputs(net, images[b : b + 1], PROMPTS[b : b + 1])
            tokens, alone_scores = greedy_with_logits(net, alone, steps=STEPS)
            assert torch.equal(tokens[0], together[b]), b
            torch.testing.assert_close(alone_scores[0], scores[b], atol=1e-4, rtol=1e-4)
        if eager:  # the eager model reproduces the SDPA model's pruned tokens
            with attach(model, name, keep=0.25, positions=positions):
                assert torch.equal(greedy(model, batch), together)


def test_beam_search_and_expanded_images(model, images):
    """num_beams / num_return_sequences expand the batch inside generate: still per sample."""
    batch = make_inputs(model, images, PROMPTS)
    with attach(model, "fastv", keep=0.25):
        beams = greedy(model, batch, steps=3, num_beams=2)
        for b in range(3):
            alone = make_inputs(model, images[b : b + 1], PROMPTS[b : b + 1])
            assert torch.equal(greedy(model, alone, steps=3, num_beams=2)[0], beams[b]), b
    with attach(model, "altp", keep=0.25) as handle:  # needs the image signal of every copy
        out = greedy(model, batch, steps=2, num_beams=2, num_return_sequences=2)
        assert out.shape[0] == 6
        kept = handle.records[0].indices
        assert torch.equal(kept[0], kept[1]) and torch.equal(kept[2], kept[3])


def test_base_llava_model_is_supported(model, batch):
    """attach also drives a bare LlavaModel (no LM head): last hidden states are pruned."""
    with torch.no_grad():
        full = model.model(**batch).last_hidden_state
        with attach(model.model, "uniform", keep=0.25) as handle:
            pruned = model.model(**batch).last_hidden_state
            assert pruned.shape[1] == full.shape[1] - 432
            assert handle.records[0].counts.tolist() == [144] * 3


def test_text_only_forward_is_unchanged(model):
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with attach(model, "fastv", keep=0.25) as handle:
            after = model(input_ids=ids).logits
            assert handle.records == []
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


def test_right_padded_batch_matches_each_sample_alone(model, images):
    batch = make_inputs(model, images, PROMPTS, padding_side="right")
    with attach(model, "pyramiddrop" if "pyramiddrop" in vtprune.list_strategies() else "fastv", keep=0.5) as handle:
        together = logits(model, batch)
        mapped = [handle.position_map(t) for t in range(batch["input_ids"].shape[1])]
        for b in range(3):
            alone = make_inputs(model, images[b : b + 1], PROMPTS[b : b + 1])
            single = logits(model, alone)
            n = int(batch["attention_mask"][b].sum())
            rows = torch.stack([m[b] for m in mapped[:n]])
            assert int(rows[-1]) == single.shape[1] - 1
            kept = rows >= 0
            torch.testing.assert_close(together[b, rows[kept]], single[0], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- records, detach, errors


def test_records_map_original_positions(model, batch):
    with attach(model, "fastv", keep=0.25) as handle:
        out = logits(model, batch, output_hidden_states=True)
        rec = handle.records[-1]
    t = batch["input_ids"].shape[1]
    assert out.shape[1] == t - (576 - 144)
    last = handle.position_map(t - 1)
    assert last.tolist() == [out.shape[1] - 1] * 3
    assert handle.position_map(t + 2).tolist() == [out.shape[1] + 2] * 3  # generated tokens
    dropped = rec.new_index == -1
    assert dropped.sum(dim=1).tolist() == [432] * 3
    first_image = int((batch["input_ids"][0] == IMAGE_ID).nonzero()[0])
    # GLaMM's hard-coded offset 575 becomes (kept visual tokens - 1)
    assert int(rec.counts[0]) - 1 == 143
    assert rec.seconds >= 0 and first_image >= 0


def test_hidden_states_follow_the_pruned_layout(model, batch):
    with attach(model, "pyramiddrop", keep=0.5) as handle, torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        lengths = [h.shape[1] for h in out.hidden_states]
        t = batch["input_ids"].shape[1]
        counts = [int(r.counts[0]) for r in handle.records]
        layers = [r.layer for r in handle.records]
        assert len(out.hidden_states) == 4 + 1
        expected = [t - 576 + ([576] + counts)[sum(1 for k in layers if k <= i)] for i in range(4)]
        assert lengths[:4] == expected and lengths[4] == expected[-1]
        gen = model.generate(
            **batch, max_new_tokens=2, do_sample=False, output_hidden_states=True, return_dict_in_generate=True
        )
        assert gen.hidden_states[0][-1].shape[1] == expected[-1]  # prefill, last layer
        assert gen.hidden_states[1][-1].shape[1] == 1  # one decode step


def test_pyramiddrop_budget_is_routed_through_attach(model, batch):
    """budget="average" (default) keeps keep as the mean over the pruned layers 1..3 of this
    4-layer model; budget="first" keeps keep after layer 1, then halves; too much is refused."""
    seen = {}
    for budget in ("average", "first"):
        with attach(model, "pyramiddrop", keep=0.1, budget=budget) as handle, torch.no_grad():
            model(**batch)
            seen[budget] = [(r.layer, r.counts.tolist()) for r in handle.records]
    assert seen["average"] == [(1, [99] * 3), (2, [49] * 3), (3, [25] * 3)]  # mean 57.7 ~ 58
    assert seen["first"] == [(1, [58] * 3), (2, [29] * 3), (3, [14] * 3)]
    with pytest.raises(ContractError, match="at most 58.3%"):
        attach(model, "pyramiddrop", keep=0.9)
    with pytest.raises(ContractError, match="'average'.*'first'"):
        attach(model, "altp_pdrop", keep=0.1, budget="both")
    for budget in ("average", "first"):  # keep=1.0 is the identity in both readings
        with attach(model, "pyramiddrop", keep=1.0, budget=budget) as handle, torch.no_grad():
            model(**batch)
            assert [r.counts.tolist() for r in handle.records] == [[576] * 3] * 3


def test_detach_restores_the_model_exactly(model, batch):
    before = logits(model, batch)
    lm = model.model.language_model
    handle = attach(model, "fastv", keep=0.25)
    assert logits(model, batch).shape[1] < before.shape[1]
    with pytest.raises(ContractError, match="already"):
        attach(model, "random")
    handle.detach()
    assert "forward" not in vars(lm)
    assert not model.model._forward_pre_hooks and not model.model._forward_hooks
    assert torch.equal(logits(model, batch), before)


def test_from_pretrained_round_trip_then_attach(model, batch, tmp_path):
    from transformers import LlavaForConditionalGeneration

    model.save_pretrained(tmp_path)
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    with attach(loaded, "uniform", keep=0.25), attach_restored(model, "uniform"):
        torch.testing.assert_close(logits(loaded, batch), logits(model, batch), atol=1e-5, rtol=1e-5)


def attach_restored(model, name):
    return attach(model, name, keep=0.25)


def test_unsupported_models_and_signals_raise(model):
    with pytest.raises(UnsupportedModelError, match="Linear"):
        attach(torch.nn.Linear(2, 2), "random")
    with pytest.raises(MissingSignalError, match="attention"):
        attach(model, "fastv", schedule=Schedule.pre_llm(0.5))
    with pytest.raises(ContractError, match="layers"):
        attach(model, "random", schedule=Schedule.at_layers([(7, 0.5)]))
    assert "forward" not in vars(model.model.language_model)
    inputs = make_inputs(model, torch.rand(1, 3, 336, 336), ["x"])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with attach(model, "uniform"), pytest.raises(ContractError, match="input_ids"):
        model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"])


def test_old_transformers_and_other_attention_kernels_are_refused(model, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.46.0")
    with pytest.raises(UnsupportedModelError, match="transformers >= 5.0"):
        attach(model, "random")
    monkeypatch.undo()
    monkeypatch.setattr(model.model.language_model.config, "_attn_implementation", "flex_attention")
    with pytest.raises(UnsupportedModelError, match="sdpa"):
        attach(model, "random")


def test_row_copy_helpers_equal_the_expanded_index_gather_and_scatter():
    from vtprune.backbones.decoder import _flat, _take_rows

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, 5, generator=gen)
    idx = torch.stack([torch.randperm(11, generator=gen)[:4].sort().values for _ in range(3)])
    want = x.gather(1, idx[..., None].expand(3, 4, 5))
    got = _take_rows(x, idx)
    assert torch.equal(got, want) and got.data_ptr() != x.data_ptr()
    full = torch.zeros(3, 11, 5)
    full.view(33, 5).index_copy_(0, _flat(idx, 11), got.view(12, 5))
    ref = torch.zeros(3, 11, 5).scatter_(1, idx[..., None].expand(3, 4, 5), want)
    assert torch.equal(full, ref)
