"""Exactness tests of the Qwen2-VL adapter (Qwen2.5-VL and Qwen2-VL, tiny random models).

Dynamic resolution throughout: a left-padded batch whose prompts hold one or two images of
different, non-square sizes. References: the unpruned model (keep 1.0), each sample alone,
generation without the KV cache, eager attention, and for pre-LLM pruning the unpruned model
with the dropped image tokens masked out as keys under the unpruned M-RoPE position ids.
"""

from __future__ import annotations

import pytest
import torch

import vtprune
from vtprune import ContractError, MissingSignalError, keep_count
from vtprune.backbones import attach
from vtprune.backbones.attention import query_attention
from vtprune.models import (
    IMAGE_ID,
    QWEN_FAMILIES,
    VIDEO_ID,
    VISION_END_ID,
    VISION_START_ID,
    build_tiny_qwen,
    make_qwen_inputs,
)

SPECIAL_IDS = [IMAGE_ID, VIDEO_ID, VISION_START_ID, VISION_END_ID]

PROMPTS = ["what is it?", "<image>left or <image> right?", "count them"]
STEPS = 4


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=QWEN_FAMILIES)
def model(request):
    return build_tiny_qwen(request.param)


def grid_images(side: int) -> list[list[torch.Tensor]]:
    """Per prompt: one 4x3 image; a 2x2 and a 3x4 one; one 6x6 (token grids after merging),
    at ``side`` pixels a token (28 for Qwen2-VL, 32 for Qwen3-VL)."""
    g = torch.Generator().manual_seed(0)
    return [
        [torch.rand(3, 4 * side, 3 * side, generator=g)],
        [torch.rand(3, 2 * side, 2 * side, generator=g), torch.rand(3, 3 * side, 4 * side, generator=g)],
        [torch.rand(3, 6 * side, 6 * side, generator=g)],
    ]


@pytest.fixture(scope="module")
def images():
    return grid_images(28)


AREAS = [12, 4, 12, 36]  # tokens of each image, in batch order
SAMPLE_OF_IMAGE = [0, 1, 1, 2]


def inputs(model, images, rows=None, padding_side="left"):
    rows = range(len(PROMPTS)) if rows is None else rows
    return make_qwen_inputs(model, [images[i] for i in rows], [PROMPTS[i] for i in rows], padding_side)


def greedy(model, batch, steps=STEPS, **kw):
    """Tokens [B, steps] and per-step logits [B, steps, V]; no early stop at EOS. A random
    model could generate an image pad id, which fed back without the cache is an image
    placeholder without an image (the model itself raises): special ids are suppressed."""
    kw.setdefault("suppress_tokens", SPECIAL_IDS)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            output_logits=True, return_dict_in_generate=True, **kw,
        )
    return out.sequences[:, batch["input_ids"].shape[1]:], torch.stack(out.logits, dim=1)


def logits(model, batch, **kw):
    with torch.no_grad():
        return model(**batch, **kw).logits


def attach_or_skip(model, name, **kw):
    try:
        return attach(model, name, **kw)
    except MissingSignalError as err:
        assert "cls_attention" in str(err) and "[CLS]" in str(err), err
        pytest.skip(f"{name} needs the vision [CLS] attention, which {type(model).__name__} has not")


def _strategies():
    return vtprune.list_strategies()


# ---------------------------------------------------------------- identity and batches


@pytest.mark.parametrize("name", _strategies())
def test_keep_one_is_unpruned_for_every_registered_strategy(model, images, name):
    batch = inputs(model, images)
    tokens, scores = greedy(model, batch)
    with attach_or_skip(model, name, keep=1.0) as handle:
        pruned_tokens, pruned_scores = greedy(model, batch)
        assert handle.records, name
    assert torch.equal(pruned_tokens, tokens), name
    torch.testing.assert_close(pruned_scores, scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", _strategies())
def test_left_padded_batch_of_mixed_sizes_generates_what_each_sample_does_alone(model, images, name):
    strategy = vtprune.get_strategy(name)
    if not strategy.capabilities.batch_consistent:
        pytest.skip(f"{name} declares batch_consistent=False")
    with attach_or_skip(model, strategy, keep=0.25) as handle:
        together, scores = greedy(model, inputs(model, images))
        records = handle.records
        for point in records:  # one budget per image, from its own token count
            assert point.counts.tolist() == [keep_count(point_keep(handle, point), n) for n in AREAS]
            assert point.image_sample.tolist() == SAMPLE_OF_IMAGE
        for b in range(3):
            tokens, alone_scores = greedy(model, inputs(model, images, [b]))
            assert torch.equal(tokens[0], together[b]), (name, b)
            torch.testing.assert_close(alone_scores[0], scores[b], atol=1e-4, rtol=1e-4)
            mine = [i for i, s in enumerate(SAMPLE_OF_IMAGE) if s == b]
            for rb, ra in zip(records, handle.records):
                for j, m in enumerate(mine):
                    k = int(rb.counts[m])
                    assert torch.equal(rb.indices[m, :k], ra.indices[j, :k]), (name, b, rb.layer)


def point_keep(handle, record):
    return next(p.keep for p in handle.schedule.points if p.layer == record.layer)


def _query_free(schedule):
    """In-LLM pruning whose choice does not depend on the newest token (feature norms of the
    visual states), so recomputing without the cache prunes the same tokens every step."""
    return vtprune.compose(scorer="feature_norm", allocator="global", selector="topk", schedule=schedule)


@pytest.mark.parametrize("name,positions", [
    ("altp", "original"), ("uniform", "compact"), ("fastv-norm", "original"), ("fastv-norm", "compact"),
    ("pdrop-norm", "original"), ("pdrop-norm", "compact"),
])
def test_cached_generate_equals_no_cache_recompute(model, images, name, positions):
    batch = inputs(model, images)
    strategy = {"fastv-norm": _query_free("fastv"), "pdrop-norm": _query_free("pyramiddrop")}.get(name, name)
    with attach(model, strategy, keep=0.25, positions=positions):
        cached, cached_scores = greedy(model, batch)
        fresh, fresh_scores = greedy(model, batch, use_cache=False)
    assert torch.equal(cached, fresh)
    torch.testing.assert_close(cached_scores, fresh_scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["fastv", "uniform"])
def test_compact_positions_batch_equals_alone(model, images, name):
    with attach(model, name, keep=0.25, positions="compact") as handle:
        together, _ = greedy(model, inputs(model, images))
        record = handle.records[-1]
        ids = record.position_ids  # [3, B, T']
        for b in range(3):
            tokens, _ = greedy(model, inputs(model, images, [b]))
            assert torch.equal(tokens[0], together[b]), b
    assert ids.shape[0] == 3 and torch.equal(ids[0], ids[1]) and torch.equal(ids[1], ids[2])
    mask = inputs(model, images)["attention_mask"]
    for b in range(3):  # real survivors numbered contiguously from 0 (padding, fillers skipped)
        kept = record.kept_positions[b]
        real = (kept >= 0) & mask[b, kept.clamp(min=0)].bool()
        assert torch.equal(ids[0, b][real], torch.arange(int(real.sum())))


def test_right_padded_forward_matches_each_sample_alone(model, images):
    batch = inputs(model, images, padding_side="right")
    with attach(model, "altp", keep=0.25) as handle:
        out = logits(model, batch)
        together = handle.records[0].new_index
        for b in range(3):
            alone = logits(model, inputs(model, images, [b]))[0]
            mine = handle.records[0].new_index[0]  # the same original positions: no padding before
            kept = (mine >= 0).nonzero().flatten()
            assert torch.equal(together[b, kept] >= 0, torch.ones_like(kept, dtype=torch.bool))
            torch.testing.assert_close(out[b, together[b, kept]], alone[mine[kept]], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- references


def unpruned_position_ids(model, batch):
    """The M-RoPE ids [3, B, T] the unpruned model hands its language model."""
    seen = {}
    lm = model.model.language_model

    def grab(module, args, kwargs):
        pos = kwargs["position_ids"]
        seen["pos"] = pos[1:] if pos.shape[0] == 4 else pos

    hook = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        logits(model, batch)
    finally:
        hook.remove()
    return seen["pos"]


@pytest.mark.parametrize("name", ["altp", "uniform", "random"])
def test_pre_llm_pruning_equals_masking_the_dropped_tokens(model, images, name):
    """Original positions: dropping tokens = the unpruned model with the dropped image tokens
    masked out as keys, every token keeping its unpruned (t, h, w) ids."""
    batch = inputs(model, images)
    pos = unpruned_position_ids(model, batch)
    with attach(model, name, keep=0.25) as handle:
        pruned = logits(model, batch)
        record = handle.records[0]
    dropped = record.new_index < 0  # [B, T]
    masked = dict(batch, attention_mask=batch["attention_mask"] * (~dropped).long(), position_ids=pos)
    reference = logits(model, masked)
    for b in range(3):
        kept = (~dropped[b] & batch["attention_mask"][b].bool()).nonzero().flatten()
        torch.testing.assert_close(pruned[b, record.new_index[b, kept]], reference[b, kept], atol=1e-4, rtol=1e-4)
    slots = record.kept_positions  # survivors keep their unpruned (t, h, w) ids; -1: filler
    expected = pos.gather(2, slots.clamp(min=0)[None].expand(3, -1, -1))
    assert torch.equal(record.position_ids[:, slots >= 0], expected[:, slots >= 0])


def test_recomputed_attention_rows_equal_eager_probabilities(images):
    """FastV's signal under M-RoPE: the last token's attention row recomputed at layer K-1
    equals the eager model's own attention probabilities."""
    net = build_tiny_qwen(attn_implementation="eager")
    batch = inputs(net, images)
    with torch.no_grad():
        out = net(**batch, output_attentions=True, output_hidden_states=True)
    lm = net.model.language_model
    pos = unpruned_position_ids(net, batch)
    for layer in (0, 2):
        h_in = out.hidden_states[layer]
        pe = lm.rotary_emb(h_in, position_ids=pos)
        valid = batch["attention_mask"].bool()
        query = torch.full((3,), h_in.shape[1] - 1)
        with torch.no_grad():
            mine = query_attention(lm.layers[layer], h_in, pe, query, valid)
        torch.testing.assert_close(mine, out.attentions[layer][:, :, -1, :].float(), atol=1e-5, rtol=1e-4)


def test_recomputed_text_rows_equal_eager_probabilities(images):
    """SparseVLM's signal under M-RoPE: several query rows at once (rows_attention) equal the
    eager model's attention probabilities of those rows."""
    from vtprune.backbones.attention import rows_attention

    net = build_tiny_qwen(attn_implementation="eager")
    batch = inputs(net, images)
    with torch.no_grad():
        out = net(**batch, output_attentions=True, output_hidden_states=True)
    lm = net.model.language_model
    pos = unpruned_position_ids(net, batch)
    t = batch["input_ids"].shape[1]
    rows = torch.tensor([t - 5, t - 3, t - 2, t - 1]).expand(3, 4)
    valid = batch["attention_mask"].bool()
    for layer in (0, 2):
        h_in = out.hidden_states[layer]
        pe = lm.rotary_emb(h_in, position_ids=pos)
        with torch.no_grad():
            mine = rows_attention(lm.layers[layer], h_in, pe, rows, valid)
        torch.testing.assert_close(mine, out.attentions[layer][:, :, t - 5 :, :][:, :, [0, 2, 3, 4]].float(), atol=1e-5, rtol=1e-4)


def test_detach_restores_the_model_exactly(model, images):
    batch = inputs(model, images)
    before = logits(model, batch)
    handle = attach(model, "fastv", keep=0.25)
    assert not torch.equal(logits(model, batch)[:, -1], before[:, -1])
    handle.detach()
    assert torch.equal(logits(model, batch), before)


def test_from_pretrained_round_trip_then_attach(model, images, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    batch = inputs(model, images)
    with attach(model, "altp", keep=0.25), attach(loaded, "altp", keep=0.25):
        torch.testing.assert_close(logits(loaded, batch), logits(model, batch))


def test_records_index_each_image_in_its_own_grid(model, images):
    with attach(model, "uniform", keep=0.25) as handle:
        logits(model, inputs(model, images))
    record = handle.records[0]
    assert record.grids.tolist() == [[4, 3], [2, 2], [3, 4], [6, 6]]
    for m, n in enumerate(AREAS):
        kept = record.indices[m, : record.counts[m]]
        assert int(kept.max()) < n and torch.equal(kept, kept.sort().values)


# ---------------------------------------------------------------- refusals


def test_what_the_adapter_cannot_run_is_refused_clearly(model, images):
    with pytest.raises(MissingSignalError, match=r"\[CLS\]"):
        attach(model, "visionzip", keep=0.25)
    batch = inputs(model, images)
    with attach(model, "uniform", keep=5):
        with pytest.raises(ContractError, match="out of range for 4 tokens"):
            logits(model, batch)  # the 2x2 image has only 4 tokens
    video = dict(batch, video_grid_thw=torch.tensor([[2, 4, 4]]), pixel_values_videos=torch.zeros(32, 1176))
    with attach(model, "uniform", keep=0.25):
        with pytest.raises(ContractError, match="videos are not supported"):
            logits(model, video)
        with pytest.raises(ContractError, match="labels are not supported"):
            logits(model, batch, labels=batch["input_ids"])
        no_pixels = {k: v for k, v in batch.items() if k != "pixel_values"}
        with pytest.raises((ContractError, ValueError)):
            logits(model, no_pixels)


def test_text_only_batch_is_unchanged(model):
    batch = make_qwen_inputs(model, [[], []], ["hello", "two words"])
    assert "pixel_values" not in batch
    before = logits(model, batch)
    with attach(model, "altp", keep=0.1) as handle:
        assert torch.equal(logits(model, batch), before)
        assert handle.records == []


@pytest.mark.parametrize("name", ["altp", "fastv"])
def test_beam_search_expands_each_prompts_images(model, images, name):
    """num_beams repeats every prompt inside generate while image_grid_thw lists each image
    once: the adapter repeats the images with their prompts, and beams stay per sample."""
    with attach(model, name, keep=0.25) as handle:
        with torch.no_grad():
            together = model.generate(**inputs(model, images), max_new_tokens=3, min_new_tokens=3, num_beams=2)
        assert handle.records[0].image_sample.tolist() == [0, 1, 2, 2, 3, 3, 4, 5]  # 2 beams a prompt
        for b in range(3):
            alone = inputs(model, images, [b])
            with torch.no_grad():
                out = model.generate(**alone, max_new_tokens=3, min_new_tokens=3, num_beams=2)
            assert torch.equal(out[0, alone["input_ids"].shape[1]:], together[b, -3:]), b


@pytest.mark.parametrize("name,keep", [("altp", 0.5), ("fastv", 0.5), ("uniform", 0)])
def test_a_text_only_prompt_beside_an_image_prompt(model, name, keep):
    """A batch mixing a prompt without images and one with: each as alone (keep 0 included)."""
    side = 2 * int(model.config.vision_config.patch_size)  # pixels per visual token
    image = [torch.rand(3, 2 * side, 3 * side, generator=torch.Generator().manual_seed(1))]
    rows, prompts = [[], image], ["just text here", "<image> what is it?"]
    with attach(model, name, keep=keep) as handle:
        together, _ = greedy(model, make_qwen_inputs(model, rows, prompts))
        assert handle.records[0].image_sample.tolist() == [1]
        for b in range(2):
            alone, _ = greedy(model, make_qwen_inputs(model, rows[b : b + 1], prompts[b : b + 1]))
            assert torch.equal(alone[0], together[b]), b


def test_generated_special_ids_are_text(model, images):
    """A random model may generate the video pad id; without video inputs it is text (the
    bench once stopped on it), also when generate re-feeds it without the cache."""
    batch = inputs(model, images)
    ids = batch["input_ids"].clone()
    ids[:, -1] = VIDEO_ID
    batch = dict(batch, input_ids=ids)
    with attach(model, "pyramiddrop", keep=0.25):
        cached, _ = greedy(model, batch)
    assert cached.shape == (3, STEPS)
