"""The decoder loop's per-layer hooks (issue #22 §1): a family's hook after layer k runs with
the token layout in force there, at batch > 1 with pruning, and can add its own per-token
tensors at exactly the kept tokens (what Qwen3-VL's DeepStack needs).

The hooks reach the loop the way a family's do: an adapter subclass overriding
``DecoderAdapter.layer_hooks``, registered in-process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from vtprune import ContractError, PrunePoint, Schedule
from vtprune.backbones import attach, register_adapter, unregister_adapter
from vtprune.backbones.llava import LlavaAdapter
from vtprune.backbones.qwen2_vl import Qwen2VLAdapter
from vtprune.models import (
    IMAGE_ID,
    build_tiny_llava,
    build_tiny_qwen,
    make_inputs,
    make_qwen_inputs,
)

FAMILIES = ("llava", "qwen2_5_vl")
D = 64  # hidden size of both tiny language models
LAYERS = 4


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model(family):
    return build_tiny_llava() if family == "llava" else build_tiny_qwen(family)


def batch_of(model, rows=(0, 1, 2)):
    """Three left-padded prompts; Qwen: 1, 2 and 1 images of different sizes (so samples keep
    different counts and the pruned layouts hold filler slots)."""
    g = torch.Generator().manual_seed(0)
    if model.config.model_type == "llava":
        pixels = torch.rand(3, 3, 336, 336, generator=g)
        prompts = ["what is in the picture?", "count", "is there a red square on the left side?"]
        return make_inputs(model, pixels[list(rows)], [prompts[r] for r in rows])
    images = [
        [torch.rand(3, 112, 84, generator=g)],
        [torch.rand(3, 56, 56, generator=g), torch.rand(3, 84, 112, generator=g)],
        [torch.rand(3, 168, 168, generator=g)],
    ]
    prompts = ["what is it?", "<image>left or <image> right?", "count them"]
    return make_qwen_inputs(model, [images[r] for r in rows], [prompts[r] for r in rows])


Hook = Callable[[int, torch.Tensor, Any, Any], torch.Tensor]


@pytest.fixture
def hooked(model) -> Iterator[Callable[[dict[int, list[Hook]]], None]]:
    """``hooked({layer: [hook, ...]})``: the next ``attach`` on this family uses an adapter
    whose ``layer_hooks`` are those."""
    base = LlavaAdapter if model.config.model_type == "llava" else Qwen2VLAdapter
    names = []

    def use(hooks: dict[int, list[Hook]]) -> None:
        class Hooked(base):  # type: ignore[misc, valid-type]
            name = f"hooked-{base.name}"

            def layer_hooks(self):
                return hooks

        names.append(register_adapter(Hooked).name)

    yield use
    for name in names:
        unregister_adapter(name)


def features(n: int = 64) -> torch.Tensor:
    """Per-visual-token vectors [n, D], indexed by a token's visual rank in its prompt (as
    DeepStack's features are, one row per visual token in order)."""
    return torch.randn(n, D, generator=torch.Generator().manual_seed(5)) * 0.5


def add_at_kept_visual(table: torch.Tensor) -> Hook:
    """A hook adding ``table[visual rank]`` at the visual tokens the layout holds."""

    def hook(layer, hidden, layout, signals):
        rank = layout.vis_rank.clamp(min=0) % table.shape[0]  # [B, T]
        add = table.to(hidden.dtype)[rank] * layout.visual[..., None].to(hidden.dtype)
        return hidden + add

    return hook


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# -- the layout in force --------------------------------------------------------------------------


def test_a_hook_after_layer_k_runs_with_the_layout_in_force_there(model, hooked):
    seen: dict[int, Any] = {}

    def record(layer, hidden, layout, signals):
        assert hidden.shape[:2] == layout.slots.shape
        seen[layer] = layout
        return hidden

    hooked({k: [record] for k in range(LAYERS)})
    schedule = Schedule((PrunePoint(None, 0.5), PrunePoint(2, 0.25)))
    batch = batch_of(model)
    ids = batch["input_ids"]
    visual = ids == IMAGE_ID
    rank = torch.where(visual, visual.long().cumsum(dim=1) - 1, -1)  # unpruned visual ranks
    with attach(model, "uniform", schedule=schedule) as handle:
        logits(model, batch)
    assert handle.adapter.name.startswith("hooked-")
    first, second = handle.records
    for k, layout in seen.items():
        record = first if k < 2 else second  # layers 0, 1 after the pre-LLM point; 2, 3 after layer 2's
        assert layout.stage == (1 if k < 2 else 2), k
        assert torch.equal(layout.slots, record.kept_positions), k
        real = layout.slots >= 0
        assert torch.equal(layout.vis_rank[real], rank.gather(1, layout.slots.clamp(min=0))[real]), k
        assert torch.equal(layout.vis_rank[~real], torch.full_like(layout.vis_rank[~real], -1)), k
    if model.config.model_type != "llava":
        assert bool((second.kept_positions == -1).any())  # ragged: filler slots in the layout


# -- per-token tensors added at the kept tokens ---------------------------------------------------


def unpruned_with_torch_hook(model, batch, layer, table):
    """The unpruned model with ``table[visual rank]`` added at its visual tokens after
    ``layer`` by a plain forward hook (the reference for keep-all)."""
    visual = batch["input_ids"] == IMAGE_ID
    rank = (visual.long().cumsum(dim=1) - 1).clamp(min=0) % table.shape[0]

    def add(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + table[rank] * visual[..., None]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    layers = (model.model.language_model if hasattr(model, "lm_head") else model).layers
    handle = layers[layer].register_forward_hook(add)
    try:
        return logits(model, batch)
    finally:
        handle.remove()


@pytest.mark.parametrize("layer", [0, 2])
def test_a_hook_adding_per_token_features_at_keep_one_is_the_unpruned_addition(model, hooked, layer):
    batch = batch_of(model)
    table = features()
    want = unpruned_with_torch_hook(model, batch, layer, table)
    assert not torch.allclose(want, logits(model, batch))  # the addition matters
    hooked({layer: [add_at_kept_visual(table)]})
    with attach(model, "fastv", keep=1.0):  # a point at layer 2: the hook runs before and after it
        got = logits(model, batch)
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(got[valid], want[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["uniform", "fastv"])
def test_a_hook_adding_per_token_features_in_a_pruned_batch_equals_each_sample_alone(model, hooked, strategy):
    table = features()
    hooked({1: [add_at_kept_visual(table)], 3: [add_at_kept_visual(table.flip(0))]})
    with attach(model, strategy, keep=0.25):
        together = logits(model, batch_of(model))[:, -1]
        for b in range(3):
            alone = logits(model, batch_of(model, (b,)))[0, -1]
            torch.testing.assert_close(alone, together[b], atol=1e-4, rtol=1e-4)


def test_a_hook_adding_per_token_features_after_pre_llm_pruning_equals_the_shortened_input(hooked, family):
    """One LLaVA prompt pruned before the LLM, with a hook after layer 1, equals the unpruned
    model run on the kept tokens only with the same addition (kept tokens, their ranks)."""
    if family != "llava":
        pytest.skip("the physically shortened reference is written for LLaVA's one image")
    model = build_tiny_llava()
    inputs = batch_of(model, (0,))
    table = features(576)
    hooked({1: [add_at_kept_visual(table)]})
    with attach(model, "uniform", keep=0.25) as handle:
        got = logits(model, inputs)
    rec = handle.records[0]
    kept_ids = inputs["input_ids"].gather(1, rec.kept_positions)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output[0]
        embeds = model.model.language_model.embed_tokens(kept_ids).clone()
        embeds[kept_ids == IMAGE_ID] = feats[rec.indices[0]]
    visual = kept_ids == IMAGE_ID
    rank = torch.zeros_like(kept_ids)
    rank[visual] = rec.indices[0]  # LLaVA: a token's visual rank is its raster index

    def add(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + table[rank] * visual[..., None]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    hook = model.model.language_model.layers[1].register_forward_hook(add)
    try:
        with torch.no_grad():
            ref = model(inputs_embeds=embeds, position_ids=rec.kept_positions,
                        attention_mask=torch.ones_like(kept_ids)).logits
    finally:
        hook.remove()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_hooks_after_layers_the_decoder_does_not_have_are_refused(model, hooked):
    hooked({LAYERS: [add_at_kept_visual(features())]})
    with pytest.raises(ContractError, match=r"layer hooks after layers \[4\]; the decoder has layers 0..3"):
        attach(model, "uniform", keep=0.5)
    assert "forward" not in vars((model.model if hasattr(model, "lm_head") else model).language_model)
