"""Defects found by using the adapters as a user would (issue #22 §5): each test failed before
its fix, and runs for every family it applies to (LLaVA has no videos)."""

from __future__ import annotations

import pytest
import torch

from vtprune import ContractError
from vtprune.backbones import attach
from vtprune.models import (
    BOS_ID,
    IMAGE_ID,
    QWEN3_FAMILIES,
    QWEN_FAMILIES,
    VIDEO_ID,
    VISION_END_ID,
    VISION_START_ID,
    build_tiny_llava,
    build_tiny_qwen,
    make_inputs,
    make_qwen_inputs,
)

FAMILIES = ("llava", *QWEN_FAMILIES, *QWEN3_FAMILIES)
SPECIAL_IDS = [IMAGE_ID, VIDEO_ID, VISION_START_ID, VISION_END_ID]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model(family):
    return build_tiny_llava() if family == "llava" else build_tiny_qwen(family)


def images(seed=0, side=28):
    """Qwen: sample 0 holds two images (2x2 and 3x4 tokens), sample 1 one (4x3), at ``side``
    pixels a token (Qwen3-VL: 32)."""
    g = torch.Generator().manual_seed(seed)
    return [
        [torch.rand(3, 2 * side, 2 * side, generator=g), torch.rand(3, 3 * side, 4 * side, generator=g)],
        [torch.rand(3, 4 * side, 3 * side, generator=g)],
    ]


def patch(model):
    return int(model.config.vision_config.patch_size)


PROMPTS = ["<image>left or <image> right?", "what is it?"]


def batch_of(model, rows=(0, 1)):
    if model.config.model_type == "llava":
        pixels = torch.rand(2, 3, 336, 336, generator=torch.Generator().manual_seed(0))
        return make_inputs(model, pixels[list(rows)], ["describe the image", "how many cats?"][rows[0] : rows[-1] + 1])
    own = images(side=2 * patch(model))
    return make_qwen_inputs(model, [own[r] for r in rows], [PROMPTS[r] for r in rows])


def greedy(model, batch, steps, **kw):
    with torch.no_grad():
        return model.generate(
            **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            suppress_tokens=SPECIAL_IDS, **kw,
        )


# -- videos are refused on every path ------------------------------------------------------------


def video_batch(model):
    """The image batch with a video (2 x 4 x 4 patches: 8 tokens) appended to each prompt
    (Qwen3-VL: one vision span per frame, as its processor separates frames)."""
    batch = batch_of(model)
    b = batch["input_ids"].shape[0]
    frames = 2 if model.config.model_type.startswith("qwen3") else 1
    ids = ([VISION_START_ID] + [VIDEO_ID] * (8 // frames) + [VISION_END_ID]) * frames
    span = torch.tensor(ids).expand(b, -1)
    out = dict(
        batch,
        input_ids=torch.cat([batch["input_ids"], span], 1),
        attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(span)], 1),
        pixel_values_videos=torch.randn(64, 6 * patch(model) ** 2, generator=torch.Generator().manual_seed(1)),
        video_grid_thw=torch.tensor([[2, 4, 4]] * b),
    )
    if "mm_token_type_ids" in batch:
        types = torch.tensor([2 if t == VIDEO_ID else 0 for t in ids]).expand(b, -1)
        out["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], types], 1)
    return out


def test_videos_are_refused_by_generate_as_by_forward(model, family):
    if family == "llava":
        pytest.skip("LLaVA-1.5 takes no videos")
    batch = video_batch(model)
    greedy(model, batch, 1)  # the unpruned model runs it
    with attach(model, "uniform", keep=0.5):
        with pytest.raises(ContractError, match="videos are not supported"):
            with torch.no_grad():
                model(**batch)
        with pytest.raises(ContractError, match="videos are not supported"):
            greedy(model, batch, 2)  # generate hands the video over pre-encoded


# -- a non-finite image is named by its sample and its place in the prompt ------------------------


def with_nan(model, batch, sample, image):
    """``batch`` with one NaN pixel in image ``image`` of prompt ``sample``."""
    pixels = batch["pixel_values"].clone()
    if model.config.model_type == "llava":
        assert image == 0
        pixels[sample, 0, 5, 5] = float("nan")
    else:
        grids = batch["image_grid_thw"]
        counts = [len(r) for r in images()]
        m = sum(counts[:sample]) + image
        start = int(grids[:m].prod(dim=1).sum())
        pixels[start + 3, 7] = float("nan")
    return dict(batch, pixel_values=pixels)


@pytest.mark.parametrize("strategy", ["uniform", "altp"])
def test_a_nan_image_is_named_by_sample_and_image(model, family, strategy):
    batch = batch_of(model)
    sample, image = (1, 0) if family == "llava" else (0, 1)  # Qwen: sample 0's second image
    with attach(model, strategy, keep=0.25), torch.no_grad():
        with pytest.raises(ContractError, match=rf"sample\(s\) \[{sample}\] .*sample {sample}: image\(s\) \[{image}\]"):
            model(**with_nan(model, batch, sample, image))


def test_a_nan_image_in_llm_pruning_names_its_sample(model, family):
    batch = batch_of(model)
    sample, image = (1, 0) if family == "llava" else (0, 1)
    with attach(model, "fastv", keep=0.25), torch.no_grad():
        with pytest.raises(ContractError, match=rf"sample\(s\) \[{sample}\] of the batch"):
            model(**with_nan(model, batch, sample, image))


# -- generate continues from a pruned run's cache ----------------------------------------------


@pytest.mark.parametrize("strategy", ["fastv", "altp"])
def test_generate_continues_from_a_pruned_cache_as_one_shot(model, strategy):
    batch = batch_of(model)
    b = batch["input_ids"].shape[0]
    with attach(model, strategy, keep=0.5):
        one_shot = greedy(model, batch, 6)
        first = greedy(model, batch, 3, return_dict_in_generate=True)
        seq = first.sequences
        more = torch.ones(b, seq.shape[1] - batch["input_ids"].shape[1], dtype=torch.long)
        # as a user continues: the whole sequence so far, the cache, no images (they are cached)
        cont = {k: v for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
        cont.update(input_ids=seq, attention_mask=torch.cat([batch["attention_mask"], more], 1))
        if "mm_token_type_ids" in batch:
            cont["mm_token_type_ids"] = torch.cat([batch["mm_token_type_ids"], 0 * more], 1)
        continued = greedy(model, cont, 3, past_key_values=first.past_key_values)
    assert torch.equal(continued, one_shot)


# -- labels of a pruned forward, ragged batches included --------------------------------------------


def labels_of(batch):
    """The prompt as its own labels, padding, image tokens and BOS ignored (-100: nothing
    before a sample's first token predicts it, in a batch as alone)."""
    ids = batch["input_ids"]
    return ids.masked_fill((batch["attention_mask"] == 0) | (ids == IMAGE_ID) | (ids == BOS_ID), -100)


def token_losses(logits, labels):
    """[B, T-1] next-token cross entropy as transformers' causal-LM loss pairs them (0 where
    the label is ignored)."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), labels[:, 1:], ignore_index=-100, reduction="none"
    )


def test_labels_taken_at_the_kept_positions_give_the_unpruned_loss_at_keep_one(model):
    batch = batch_of(model)
    labels = labels_of(batch)
    with torch.no_grad():
        unpruned = model(**batch, labels=labels).loss
        with attach(model, "altp", keep=1.0) as handle:
            logits = model(**batch).logits
        taken = handle.records[-1].take(labels)
    assert taken.shape == logits.shape[:2]
    loss = token_losses(logits, taken).sum() / (taken[:, 1:] != -100).sum()
    torch.testing.assert_close(loss, unpruned)


@pytest.mark.parametrize("strategy", ["uniform", "fastv"])
def test_labels_of_a_ragged_batch_line_up_as_for_each_sample_alone(model, family, strategy):
    """Samples keeping different counts (Qwen's mixed sizes) pad the shorter with fillers
    (``kept_positions == -1``): the labels there are ignored, and each sample's loss is its
    loss alone."""
    batch = batch_of(model)
    with attach(model, strategy, keep=0.25) as handle, torch.no_grad():
        logits = model(**batch).logits
        record = handle.records[-1]
        taken = record.take(labels_of(batch))
        assert torch.equal(taken == -100, (record.kept_positions < 0) | (labels_of(batch).gather(
            1, record.kept_positions.clamp(min=0)) == -100))
        together = token_losses(logits, taken).sum(dim=1)
        for b in range(2):
            alone = batch_of(model, (b,))
            own = token_losses(model(**alone).logits, handle.records[-1].take(labels_of(alone))).sum()
            torch.testing.assert_close(together[b], own, atol=1e-4, rtol=1e-4)
    if family != "llava":
        assert bool((record.kept_positions == -1).any())  # the batch is ragged
