"""Exactness tests of the Qwen3-VL adapter (Qwen3-VL and Qwen3-VL-MoE, tiny random models).

The Qwen2.5-VL suite runs here unchanged on the new families (its tests are imported, and
pytest resolves their ``model`` / ``images`` fixtures from this module): keep 1.0 = unpruned
for every registered strategy, a left-padded batch of prompts with 1, 2 and 1 images of
different sizes = each alone, cached = uncached generation, compact positions, right padding,
pre-LLM pruning = the unpruned model with the dropped tokens masked, detach, round trip,
records, refusals, beams, a text-only prompt beside an image prompt. Added here: what
Qwen3-VL brings — DeepStack features (vision states added after LLM layers 0-2 at the visual
positions) reaching exactly the kept tokens, attention rows recomputed through per-head q/k
norms and interleaved M-RoPE, the MoE router logits, and the refusal of Qwen3.5.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from test_backbone_qwen2_vl import (  # noqa: F401  (collected here, on this module's fixtures)
    _threads,
    grid_images,
    inputs,
    logits,
    test_a_text_only_prompt_beside_an_image_prompt,
    test_beam_search_expands_each_prompts_images,
    test_cached_generate_equals_no_cache_recompute,
    test_compact_positions_batch_equals_alone,
    test_detach_restores_the_model_exactly,
    test_from_pretrained_round_trip_then_attach,
    test_generated_special_ids_are_text,
    test_keep_one_is_unpruned_for_every_registered_strategy,
    test_left_padded_batch_of_mixed_sizes_generates_what_each_sample_does_alone,
    test_pre_llm_pruning_equals_masking_the_dropped_tokens,
    test_records_index_each_image_in_its_own_grid,
    test_right_padded_forward_matches_each_sample_alone,
    test_text_only_batch_is_unchanged,
    test_what_the_adapter_cannot_run_is_refused_clearly,
    unpruned_position_ids,
)

from vtprune import ContractError, PrunePoint, Schedule
from vtprune.backbones import UnsupportedModelError, attach, find_adapter
from vtprune.backbones.attention import query_attention, rows_attention
from vtprune.backbones.qwen3_vl import Qwen3VLAdapter
from vtprune.models import IMAGE_ID, QWEN3_FAMILIES, build_tiny_qwen

DEEPSTACK_LAYERS = 3  # the tiny models add DeepStack features after LLM layers 0, 1, 2


@pytest.fixture(scope="module", params=QWEN3_FAMILIES)
def model(request):
    return build_tiny_qwen(request.param)


@pytest.fixture(scope="module")
def images():
    """The Qwen2-VL suite's token grids (4x3; 2x2 + 3x4; 6x6) at Qwen3-VL's 32 px a token."""
    return grid_images(32)


def test_the_tiny_models_have_what_qwen3_vl_brings(model):
    lm = model.model.language_model
    attn = lm.layers[0].self_attn
    assert attn.q_norm.weight.numel() == attn.head_dim == attn.k_norm.weight.numel()
    assert list(model.config.vision_config.deepstack_visual_indexes) == [0, 1, 2]
    assert find_adapter(model) is Qwen3VLAdapter
    assert sorted(Qwen3VLAdapter(model).layer_hooks()) == list(range(DEEPSTACK_LAYERS))
    if model.config.model_type == "qwen3_vl_moe":
        assert type(lm.layers[0].mlp).__name__.endswith("SparseMoeBlock")


# ---------------------------------------------------------------- DeepStack


def deepstack_row(batch, b, position):
    """Row of DeepStack's feature tables for the visual token at ``position`` of sample ``b``:
    the model numbers ``visual_pos_masks`` in row-major order."""
    visual = batch["input_ids"] == IMAGE_ID
    return int(visual[:b].sum()) + int(visual[b, :position].sum())


@contextmanager
def zeroed_deepstack(model, layer: int, row: int) -> Iterator[None]:
    """The DeepStack feature ``row`` added after LLM ``layer`` is zero in the calls inside."""

    def edit(module, args, kwargs):
        embeds = kwargs.get("deepstack_visual_embeds")
        if not embeds:
            return None
        embeds = list(embeds)
        embeds[layer] = embeds[layer].clone()
        embeds[layer][row] = 0
        return args, {**kwargs, "deepstack_visual_embeds": embeds}

    lm = model.model.language_model
    hook = lm.register_forward_pre_hook(edit, with_kwargs=True, prepend=True)  # before the adapter's
    try:
        yield
    finally:
        hook.remove()


def kept_and_dropped(batch, record, b):
    """One kept and one dropped visual position of sample ``b`` at a prune point."""
    visual = (batch["input_ids"][b] == IMAGE_ID).nonzero().flatten()
    kept = set(record.kept_positions[b][record.kept_positions[b] >= 0].tolist())
    return next(int(p) for p in visual if int(p) in kept), next(int(p) for p in visual if int(p) not in kept)


@pytest.mark.parametrize("where", [None, 2])
def test_deepstack_features_reach_exactly_the_kept_tokens(model, images, where):
    """Pruning before the LLM or before layer 2 (a DeepStack layer): zeroing a kept token's
    feature of a later DeepStack layer changes its own sample only; zeroing a dropped token's
    changes nothing at all (bit for bit) — it is not in the layout there; zeroing the dropped
    token's feature of layer 0, where it was still present before an in-LLM point, counts."""
    schedule = Schedule((PrunePoint(where, 0.25),))
    batch = inputs(model, images)
    with attach(model, "uniform" if where is None else "fastv", schedule=schedule) as handle:
        base = logits(model, batch)
        record = handle.records[0]
        kept, dropped = kept_and_dropped(batch, record, 1)
        later = DEEPSTACK_LAYERS - 1
        with zeroed_deepstack(model, later, deepstack_row(batch, 1, kept)):
            changed = logits(model, batch)
        with zeroed_deepstack(model, later, deepstack_row(batch, 1, dropped)):
            assert torch.equal(logits(model, batch), base)
        with zeroed_deepstack(model, 0, deepstack_row(batch, 1, dropped)):
            early = logits(model, batch)
    for b in (0, 2):
        torch.testing.assert_close(changed[b], base[b], atol=1e-6, rtol=0)
    assert (changed[1] - base[1]).abs().max() > 1e-3
    assert torch.equal(early, base) == (where is None)


def test_deepstack_is_what_the_unpruned_model_adds(model, images):
    """Keep 1.0: the hook's sum equals the model's own (every DeepStack layer zeroed in turn
    moves both the same way), so keep-all stays bit-identical with DeepStack on."""
    batch = inputs(model, images)
    row = deepstack_row(batch, 2, int((batch["input_ids"][2] == IMAGE_ID).nonzero()[5]))
    for layer in range(DEEPSTACK_LAYERS):
        with zeroed_deepstack(model, layer, row):
            reference = logits(model, batch)
            with attach(model, "fastv", keep=1.0):
                assert torch.equal(logits(model, batch), reference), layer


# ---------------------------------------------------------------- attention rows


@pytest.fixture(scope="module", params=QWEN3_FAMILIES)
def eager_model(request):
    return build_tiny_qwen(request.param, attn_implementation="eager")


def layer_inputs(model, batch, layers):
    """The hidden states entering each of ``layers`` (DeepStack additions included) and the
    eager attention probabilities of every layer."""
    seen = {}
    hooks = [
        model.model.language_model.layers[i].register_forward_pre_hook(
            lambda module, args, kwargs, i=i: seen.__setitem__(i, args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True,
        )
        for i in layers
    ]
    try:
        with torch.no_grad():
            out = model(**batch, output_attentions=True)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, out.attentions


def test_recomputed_rows_through_qk_norms_and_interleaved_mrope_equal_eager(eager_model, images):
    """FastV's last-token row and SparseVLM's several rows, recomputed through the per-head
    q/k RMSNorm and interleaved M-RoPE, equal the eager model's probabilities — at layer 0
    and at layer 2, whose input carries DeepStack features."""
    net = eager_model
    batch = inputs(net, images)
    lm = net.model.language_model
    pos = unpruned_position_ids(net, batch)
    valid = batch["attention_mask"].bool()
    t = batch["input_ids"].shape[1]
    h_in, attentions = layer_inputs(net, batch, (0, 2))
    rows = torch.tensor([t - 5, t - 3, t - 2, t - 1]).expand(3, 4)
    for layer in (0, 2):
        pe = lm.rotary_emb(h_in[layer], position_ids=pos)
        with torch.no_grad():
            last = query_attention(lm.layers[layer], h_in[layer], pe, torch.full((3,), t - 1), valid)
            several = rows_attention(lm.layers[layer], h_in[layer], pe, rows, valid)
        eager = attentions[layer].float()
        torch.testing.assert_close(last, eager[:, :, -1, :], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(several, eager[:, :, t - 5 :][:, :, [0, 2, 3, 4]], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- refusals


def test_moe_router_logits_are_refused_while_pruning(model, images):
    if model.config.model_type != "qwen3_vl_moe":
        pytest.skip("router logits exist in the MoE text model only")
    with attach(model, "uniform", keep=0.25), pytest.raises(ContractError, match="output_router_logits"):
        logits(model, inputs(model, images), output_router_logits=True)


def test_qwen3_5_is_refused_with_the_reason():
    import transformers

    if not hasattr(transformers, "Qwen3_5ForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3.5")
    text = {
        "vocab_size": 272, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "linear_num_key_heads": 2, "linear_num_value_heads": 2, "linear_key_head_dim": 8, "linear_value_head_dim": 8,
    }
    vision = {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32}
    cfg = transformers.Qwen3_5Config(text_config=text, vision_config=vision)
    model = transformers.Qwen3_5ForConditionalGeneration(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="Qwen3.5 is not supported: three of every four"):
        attach(model, "uniform", keep=0.5)
