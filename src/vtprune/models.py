"""Tiny LLaVA models and inputs for tests, demos and benchmarks — nothing is downloaded.

``build_tiny_llava()`` makes a randomly initialised :class:`transformers.LlavaForConditionalGeneration`
with LLaVA-1.5's token layout (CLIP ViT/14 at 336 px: a 24x24 grid of 576 visual tokens) and a
small Llama decoder. ``make_inputs`` builds ``input_ids`` / ``attention_mask`` / ``pixel_values``
with a byte-level toy vocabulary, so no tokenizer or processor is needed::

    from vtprune.models import build_tiny_llava, make_inputs
    model = build_tiny_llava()
    inputs = make_inputs(model, torch.rand(2, 3, 336, 336), ["what is this?", "a cat"])
    out = model.generate(**inputs, max_new_tokens=4)

Toy vocabulary: 0 = pad, 1 = bos, 2 = eos, 3 = ``<image>``, 4 + b = UTF-8 byte b.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .core.errors import ContractError

PAD_ID, BOS_ID, EOS_ID, IMAGE_ID = 0, 1, 2, 3
BYTE_OFFSET = 4
TOY_VOCAB_SIZE = 272
"""4 specials + 256 bytes, rounded up to a multiple of 16."""
IMAGE_PLACEHOLDER = "<image>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_VISION_DEFAULTS: dict[str, Any] = {
    "image_size": 336,
    "patch_size": 14,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": TOY_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "pad_token_id": PAD_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "tie_word_embeddings": False,
    "initializer_range": 0.3,  # large enough that greedy outputs vary with the image and prompt
}


def tiny_llava_config(
    vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None, **overrides: Any
) -> Any:
    """A :class:`transformers.LlavaConfig` for a tiny LLaVA-1.5-shaped model.

    Defaults: CLIP vision tower (336 px, patch 14 -> 24x24 = 576 tokens, hidden 32, 2 layers),
    Llama decoder (hidden 64, 4 layers, 4 heads, 2 KV heads, the toy vocabulary, initializer
    range 0.3 so that outputs depend on the image), image token id 3. ``vision`` / ``text`` override fields of the sub-configs; other keyword overrides
    go to the decoder config when it has that field (``num_hidden_layers=6``), else to the
    LlavaConfig (``attn_implementation`` is accepted too).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision_kw = {**_VISION_DEFAULTS, **(vision or {})}
    text_kw = {**_TEXT_DEFAULTS, **(text or {})}
    top: dict[str, Any] = {}
    attn = overrides.pop("attn_implementation", None)
    for key, value in overrides.items():
        if key in _TEXT_DEFAULTS or hasattr(LlamaConfig(), key):
            text_kw[key] = value
        else:
            top[key] = value
    grid = vision_kw["image_size"] // vision_kw["patch_size"]
    top.setdefault("image_seq_length", grid * grid)
    top.setdefault("image_token_id", IMAGE_ID)
    top.setdefault("vision_feature_layer", -2)
    top.setdefault("vision_feature_select_strategy", "default")
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_kw), text_config=LlamaConfig(**text_kw), **top
    )
    if attn is not None:
        cfg._attn_implementation = attn
    return cfg


def build_tiny_llava(seed: int = 0, attn_implementation: str = "sdpa", **overrides: Any) -> Any:
    """A randomly initialised tiny :class:`transformers.LlavaForConditionalGeneration`, eval mode.

    Same ``seed`` and overrides give the same weights. ``overrides`` go to
    :func:`tiny_llava_config`. ``attn_implementation`` is ``"sdpa"`` (default) or ``"eager"``.
    """
    from transformers import LlavaForConditionalGeneration

    cfg = tiny_llava_config(**overrides)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def encode(text: str) -> list[int]:
    """Toy tokenisation: UTF-8 bytes shifted by 4; ``<image>`` becomes one image placeholder."""
    ids: list[int] = []
    for i, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            ids.append(IMAGE_ID)
        ids.extend(BYTE_OFFSET + b for b in part.encode("utf-8"))
    return ids


def decode(ids: Sequence[int] | torch.Tensor) -> str:
    """Inverse of :func:`encode` for byte tokens; specials are shown as ``<pad>``, ``<image>``..."""
    names = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>", IMAGE_ID: IMAGE_PLACEHOLDER}
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    out, run = [], bytearray()
    for t in values:
        if BYTE_OFFSET <= t < BYTE_OFFSET + 256:
            run.append(t - BYTE_OFFSET)
            continue
        out.append(run.decode("utf-8", errors="replace"))
        run = bytearray()
        out.append(names.get(t, f"<{t}>"))
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def _pad(rows: list[list[int]], pad_id: int, padding_side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ``input_ids`` and ``attention_mask`` [B, T] long, padded on one side."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, ids in enumerate(rows):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[b, span] = torch.tensor(ids, dtype=torch.long)
        mask[b, span] = 1
    return input_ids, mask


def _pixels(model: Any, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    size = int(model.config.vision_config.image_size)
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ContractError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        batch = images
    else:
        items = list(images)
        bad = [tuple(t.shape) for t in items if not isinstance(t, torch.Tensor) or t.dim() != 3]
        if bad or not items:
            raise ContractError(f"images must be a non-empty list of [3, H, W] tensors, got shapes {bad}")
        batch = torch.stack(items)
    if tuple(batch.shape[1:]) != (3, size, size):
        raise ContractError(
            f"images must be [B, 3, {size}, {size}] for this vision tower, got "
            f"{tuple(batch.shape)}; resize them first (e.g. torch.nn.functional.interpolate)"
        )
    if batch.dtype == torch.uint8:
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        batch = (batch.float() / 255.0 - mean) / std
    elif not batch.is_floating_point():
        raise ContractError(f"images must be uint8 (0..255) or float tensors, got {batch.dtype}")
    return batch.to(device=model.device, dtype=model.dtype).clone()


def make_inputs(
    model: Any,
    images: torch.Tensor | Sequence[torch.Tensor],
    prompts: Sequence[str] | Sequence[Sequence[int]],
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Model inputs for one image per prompt: ``input_ids``, ``attention_mask``, ``pixel_values``.

    Args:
        model: a LLaVA model (its config gives the image token id and visual token count).
        images: [B, 3, H, W] or a list of [3, H, W]. uint8 images are scaled to [0, 1] and
            normalised with CLIP's statistics; float images are used as given.
        prompts: B strings (toy byte vocabulary, see :func:`encode`) or B token-id lists.
            A prompt without an image placeholder gets ``<s><image>\\n`` in front; a single
            placeholder expands to ``image_seq_length`` image tokens.
        padding_side: ``"left"`` (what ``generate`` expects) or ``"right"``.

    Returns:
        ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long (0 on padding, id 0),
        ``pixel_values`` [B, 3, H, W].
    """
    if padding_side not in ("left", "right"):
        raise ContractError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    pixels = _pixels(model, images)
    if len(prompts) != pixels.shape[0]:
        raise ContractError(
            f"got {pixels.shape[0]} images but {len(prompts)} prompts; pass one prompt per image"
        )
    cfg = model.config
    image_id, n_img = int(cfg.image_token_id), int(cfg.image_seq_length)
    pad_id = cfg.text_config.pad_token_id
    pad_id = PAD_ID if pad_id is None else int(pad_id)
    rows: list[list[int]] = []
    for b, prompt in enumerate(prompts):
        ids = encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]  # type: ignore[call-overload,unused-ignore]
        count = ids.count(image_id)
        if count == 0:
            ids = [BOS_ID, image_id, *encode("\n"), *ids]
            count = 1
        if count == 1:
            at = ids.index(image_id)
            ids = ids[:at] + [image_id] * n_img + ids[at + 1 :]
        elif count != n_img:
            raise ContractError(
                f"prompt {b} has {count} image tokens; expected 1 placeholder or exactly "
                f"{n_img} (one image per prompt)"
            )
        rows.append(ids)
    input_ids, mask = _pad(rows, pad_id, padding_side)
    return {
        "input_ids": input_ids.to(model.device),
        "attention_mask": mask.to(model.device),
        "pixel_values": pixels,
    }


# -- Qwen2-VL / Qwen2.5-VL ------------------------------------------------------------------------

VISION_START_ID, VISION_END_ID, VIDEO_ID = 260, 261, 262
"""Toy ids of Qwen's ``<|vision_start|>``, ``<|vision_end|>`` and video pad tokens (the image
pad token is :data:`IMAGE_ID`)."""
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
"""Qwen3-VL, dense and mixture-of-experts (:func:`build_tiny_qwen` builds all four families)."""
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 14, 2, 2
"""Patch size, spatial merge and temporal patch size of the Qwen2-VL family: one visual token
per 28 x 28 pixels after the patch merger."""
QWEN3_PATCH = 16
"""Qwen3-VL's patch size (same merge and temporal patch): one visual token per 32 x 32 pixels."""

_QWEN_TEXT: dict[str, Any] = {
    **{k: v for k, v in _TEXT_DEFAULTS.items() if k != "max_position_embeddings"},
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}
_QWEN_VISION: dict[str, dict[str, Any]] = {
    "qwen2_vl": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2},
    "qwen2_5_vl": {
        "depth": 2, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "num_heads": 2,
        "window_size": 56, "fullatt_block_indexes": [1],
    },
    # DeepStack after vision blocks 0, 1, 2 -> added to the outputs of LLM layers 0, 1, 2 (the
    # released models: blocks 8/16/24 of 27); a learned 8 x 8 position grid, interpolated
    "qwen3_vl": {
        "depth": 3, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "num_heads": 2,
        "num_position_embeddings": 64, "deepstack_visual_indexes": [0, 1, 2],
    },
}
_QWEN_VISION["qwen3_vl_moe"] = _QWEN_VISION["qwen3_vl"]
_QWEN3_ROPE: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True}
_QWEN3_MOE: dict[str, Any] = {
    "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
}
_QWEN_CLASSES = {
    "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
    "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
}


def mrope_section(head_dim: int) -> list[int]:
    """M-RoPE's (temporal, height, width) frequency bands for a head of ``head_dim``, in the
    proportions of Qwen2-VL's [16, 24, 24] for 128: [2, 3, 3] for 16, [8, 12, 12] for 64."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def interleaved_mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's interleaved (temporal, height, width) bands for a head of ``head_dim``, in the
    proportions of its [24, 20, 20] for 128: [4, 2, 2] for 16, [12, 10, 10] for 64."""
    half = head_dim // 2
    hw = half * 20 // 64
    return [half - 2 * hw, hw, hw]


def tiny_qwen_config(
    family: str = "qwen2_5_vl",
    vision: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """Config of a tiny Qwen2-VL (``family="qwen2_vl"``), Qwen2.5-VL (``"qwen2_5_vl"``),
    Qwen3-VL (``"qwen3_vl"``) or Qwen3-VL-MoE (``"qwen3_vl_moe"``) with the real patch
    geometry (14 px patches for Qwen2, 16 px for Qwen3; 2 x 2 merge, 2 frames), a 4-layer GQA
    decoder with M-RoPE (Qwen2: sections 2/3/3 of a 16-dim head; Qwen3: interleaved 4/2/2,
    per-head q/k norms, DeepStack after layers 0-2; MoE: 4 experts, 2 per token) and the toy
    vocabulary."""
    import transformers

    if family not in _QWEN_CLASSES:
        raise ContractError(f"family must be one of {list(_QWEN_CLASSES)}, got {family!r}")
    qwen3 = family in QWEN3_FAMILIES
    patch = QWEN3_PATCH if qwen3 else QWEN_PATCH
    common = {"patch_size": patch, "spatial_merge_size": QWEN_MERGE, "temporal_patch_size": QWEN_TEMPORAL}
    config_class = getattr(transformers, _QWEN_CLASSES[family][0])
    text_config = {**_QWEN_TEXT, **(_QWEN3_MOE if family == "qwen3_vl_moe" else {}), **(text or {})}
    head_dim = int(text_config["hidden_size"]) // int(text_config["num_attention_heads"])
    if qwen3:  # per-head q/k norms over head_dim, interleaved M-RoPE bands
        text_config.setdefault("head_dim", head_dim)
        head_dim = int(text_config["head_dim"])
    if "rope_parameters" not in (text or {}):
        rope = {**_QWEN3_ROPE, "mrope_section": interleaved_mrope_section(head_dim)} if qwen3 else {
            **_QWEN_TEXT["rope_parameters"], "mrope_section": mrope_section(head_dim)}
        text_config["rope_parameters"] = rope
    return config_class(
        text_config=text_config,
        vision_config={**common, **_QWEN_VISION[family], **(vision or {})},
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=VISION_START_ID,
        vision_end_token_id=VISION_END_ID,
        tie_word_embeddings=False,
        **overrides,
    )


def build_tiny_qwen(family: str = "qwen2_5_vl", seed: int = 0, attn_implementation: str = "sdpa", **overrides: Any) -> Any:
    """A randomly initialised tiny ``Qwen2_5_VLForConditionalGeneration`` (or
    ``Qwen2VLForConditionalGeneration`` for ``family="qwen2_vl"``,
    ``Qwen3VLForConditionalGeneration`` for ``"qwen3_vl"``,
    ``Qwen3VLMoeForConditionalGeneration`` for ``"qwen3_vl_moe"``), eval mode; see
    :func:`tiny_qwen_config`. Same seed, same weights."""
    import transformers

    cfg = tiny_qwen_config(family, **overrides)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = getattr(transformers, _QWEN_CLASSES[family][1])(cfg)
    finally:
        torch.random.set_rng_state(state)
    model.set_attn_implementation(attn_implementation)
    return model.eval()


def qwen_patches(image: torch.Tensor, patch: int = QWEN_PATCH) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """One normalised image [3, H, W] (H, W multiples of 2 * ``patch``: 28 for Qwen2-VL, 32 for
    Qwen3-VL) as the processor flattens it: patches [t * h * w, 3 * 2 * patch * patch] in
    merge-block order (each 2 x 2 block of patches consecutive, blocks in raster order), and
    its grid (t, h, w) in patches."""
    c, hp, wp = image.shape
    p, m, tp = patch, QWEN_MERGE, QWEN_TEMPORAL
    if hp % (p * m) or wp % (p * m):
        raise ContractError(
            f"this model's images must have sides that are multiples of {p * m} px, got {hp}x{wp}; "
            "resize them (the processor's smart_resize does this)"
        )
    gh, gw = hp // p, wp // p
    frames = image[None].expand(tp, c, hp, wp)  # one image = two identical frames
    x = frames.reshape(1, tp, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, c, tp, p, p)
    return x.reshape(gh * gw, c * tp * p * p), (1, gh, gw)


def qwen_image(patches: torch.Tensor, grid_thw: Sequence[int], patch: int = QWEN_PATCH) -> torch.Tensor:
    """Inverse of :func:`qwen_patches` for the first frame: patches -> image [3, H, W]."""
    from .backbones.qwen2_vl import patches_to_image

    t, h, w = (int(v) for v in grid_thw)
    return patches_to_image(patches, (t, h, w), patch, QWEN_MERGE, QWEN_TEMPORAL)


def make_qwen_inputs(
    model: Any,
    images: Sequence[torch.Tensor | Sequence[torch.Tensor]],
    prompts: Sequence[str],
    padding_side: str = "left",
) -> dict[str, torch.Tensor]:
    """Qwen2-VL / Qwen3-VL inputs as transformers' processor makes them, without a processor.

    Args:
        model: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model (its config gives the special token
            ids and the patch size).
        images: per prompt, one image [3, H, W] or a list of them (any sizes, sides multiples
            of 2 patches: 28 px for Qwen2-VL, 32 px for Qwen3-VL); uint8 images are scaled and
            CLIP-normalised, float ones used as given.
        prompts: B strings (toy vocabulary). ``<image>`` marks where each image goes;
            without one, the prompt's images come first. Each image becomes
            ``<|vision_start|>`` + h/2 * w/2 image pad tokens + ``<|vision_end|>``.
        padding_side: ``"left"`` (for ``generate``) or ``"right"``.

    Returns:
        ``input_ids`` / ``attention_mask`` [B, T], ``pixel_values`` [patches, 3 * 2 * patch^2] (1176 for Qwen2-VL, 1536 for Qwen3-VL) and
        ``image_grid_thw`` [M, 3] (when there are images), and ``mm_token_type_ids`` [B, T]
        (1 on image tokens) where this transformers release takes it.
    """
    import inspect

    if padding_side not in ("left", "right"):
        raise ContractError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if len(images) != len(prompts):
        raise ContractError(f"got {len(images)} image lists but {len(prompts)} prompts; pass one per prompt")
    cfg = model.config
    image_id, start_id, end_id = int(cfg.image_token_id), int(cfg.vision_start_token_id), int(cfg.vision_end_token_id)
    patch = int(cfg.vision_config.patch_size)
    rows: list[list[int]] = []
    patches: list[torch.Tensor] = []
    grids: list[tuple[int, int, int]] = []
    for b, (own, prompt) in enumerate(zip(images, prompts)):
        own = [own] if isinstance(own, torch.Tensor) else list(own)
        parts = prompt.split(IMAGE_PLACEHOLDER)
        if len(parts) == 1:
            parts = [""] * len(own) + parts
        if len(parts) - 1 != len(own):
            raise ContractError(f"prompt {b} has {len(parts) - 1} <image> marks for {len(own)} images")
        ids = [BOS_ID, *encode(parts[0])]
        for image, text in zip(own, parts[1:]):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ContractError(f"images must be [3, H, W], got {tuple(image.shape)} in prompt {b}")
            if image.dtype == torch.uint8:
                mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
                std = torch.tensor(CLIP_STD).view(3, 1, 1)
                image = (image.float() / 255.0 - mean) / std
            flat, thw = qwen_patches(image.float(), patch)
            patches.append(flat)
            grids.append(thw)
            tokens = thw[1] * thw[2] // QWEN_MERGE**2
            ids += [start_id, *[image_id] * tokens, end_id, *encode(text)]
        rows.append(ids)
    input_ids, mask = _pad(rows, PAD_ID, padding_side)
    dev = model.device
    out = {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev)}
    if patches:
        out["pixel_values"] = torch.cat(patches).to(device=dev, dtype=model.dtype)
        out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long, device=dev)
    if "mm_token_type_ids" in inspect.signature(type(model).forward).parameters:
        out["mm_token_type_ids"] = (input_ids == image_id).long().to(dev)
    return out


__all__ = [
    "PAD_ID", "BOS_ID", "EOS_ID", "IMAGE_ID", "TOY_VOCAB_SIZE",
    "VISION_START_ID", "VISION_END_ID", "VIDEO_ID", "QWEN_FAMILIES", "QWEN3_FAMILIES",
    "tiny_llava_config", "build_tiny_llava", "make_inputs", "encode", "decode",
    "tiny_qwen_config", "build_tiny_qwen", "make_qwen_inputs", "qwen_patches", "qwen_image", "mrope_section",
    "interleaved_mrope_section",
]
