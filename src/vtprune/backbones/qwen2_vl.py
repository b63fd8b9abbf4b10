"""Adapter for transformers' Qwen2-VL family: ``Qwen2_5_VLForConditionalGeneration`` and
``Qwen2VLForConditionalGeneration`` (and their base ``*Model`` classes).

Dynamic resolution: every image has its own token grid (h, w) = its patch grid / 2 after the
patch merger, a prompt may hold several images, and a batch mixes sizes. Each image is one row
of the pruning context (on a canvas, see :mod:`vtprune.core.canvas`) with its own budget,
``keep`` applied to its own token count. Positions are M-RoPE's 3-D ids, computed by the model
itself on the unpruned sequence (``get_rope_index``, ``rope_deltas`` for decoding): with
``positions="original"`` each survivor keeps its (t, h, w) ids and the text after an image its
offsets; ``"compact"`` numbers the survivors of a sample contiguously on all three axes.

A :class:`~.decoder_adapter.DecoderAdapter` (installed on the model instance only: a forward
pre-hook on the ``*Model`` for the call's ``input_ids`` and image grids, a hook on the vision
tower for the pixels behind pre-encoded images in ``generate``, and the language model's
``forward`` replaced by :class:`~.decoder.PrunedDecoder` with 3-row position ids) whose own
steps are the grids, the canvas of pixels and the refusals. Videos are refused on every path
(not yet supported), and so are signals the family has no source for: its vision tower has no
[CLS] token, so ``cls_attention`` (VisionZip) cannot be supplied.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import ContractError
from ..core.hookspecs import AdapterSpec, hookimpl
from .decoder_adapter import Call, CallImages, DecoderAdapter, ImageSource

MODEL_CLASSES = (
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2_5_VLModel",
    "Qwen2VLForConditionalGeneration",
    "Qwen2VLModel",
)


def patches_to_image(
    patches: torch.Tensor, grid_thw: tuple[int, int, int], patch: int, merge: int, temporal: int
) -> torch.Tensor:
    """One image's flattened patches [t * h * w, C * temporal * patch^2], in the processor's
    order (each merge x merge block of patches consecutive, blocks in raster order), -> its
    first frame [C, h * patch, w * patch]."""
    t, gh, gw = grid_thw
    c = patches.shape[-1] // (temporal * patch * patch)
    x = patches.reshape(t, gh // merge, gw // merge, merge, merge, c, temporal, patch, patch)[0, ..., 0, :, :]
    return x.permute(4, 0, 2, 5, 1, 3, 6).reshape(c, gh * patch, gw * patch)  # (c, h/m, m, p, w/m, m, p)


def canvas_pixels(pixel_values: torch.Tensor, grid_thw: torch.Tensor, vision_config: Any) -> torch.Tensor:
    """The flattened patches [P, C * tp * p * p] of M images (``grid_thw`` [M, 3]) -> their
    first frames on a shared canvas [M, C, H, W], each top-left with zeros elsewhere, H and W
    the largest image's (so canvas token (i, j) covers the same pixels in every row)."""
    patch, merge = int(vision_config.patch_size), int(vision_config.spatial_merge_size)
    temporal = int(vision_config.temporal_patch_size)
    grids = [(int(t), int(h), int(w)) for t, h, w in grid_thw.tolist()]
    c = pixel_values.shape[-1] // (temporal * patch * patch)
    height, width = max(g[1] for g in grids) * patch, max(g[2] for g in grids) * patch
    canvas = torch.zeros(len(grids), c, height, width, dtype=pixel_values.dtype, device=pixel_values.device)
    start = 0
    for m, thw in enumerate(grids):  # host-known sizes; each image is one reshape
        size = thw[0] * thw[1] * thw[2]
        canvas[m, :, : thw[1] * patch, : thw[2] * patch] = patches_to_image(
            pixel_values[start : start + size], thw, patch, merge, temporal
        )
        start += size
    return canvas


def _expanded_images(counts: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """Image order [M'] for a batch whose prompts ``generate`` repeated (``num_beams``,
    ``num_return_sequences``: each prompt c times in a row) while ``image_grid_thw`` still
    lists each image once; the identity when the images already match the prompts."""
    areas = grids[:, 0] * grids[:, 1]
    total, once = int(counts.sum()), int(areas.sum())
    identity = torch.arange(grids.shape[0])
    if total == once or once == 0 or total % once or counts.shape[0] % (total // once):
        return identity  # ImageRows checks the match and says what is wrong
    copies = total // once
    first = counts[::copies]
    if not torch.equal(counts.view(-1, copies), first[:, None].expand(-1, copies)):
        return identity
    owner = torch.searchsorted(torch.cumsum(first, 0), torch.cumsum(areas, 0) - areas, right=True)
    groups = [identity[owner == s] for s in range(first.shape[0])]  # host metadata, one per prompt
    return torch.cat([g.repeat(copies) for g in groups]) if groups else identity


class Qwen2VLAdapter(DecoderAdapter):
    """Qwen2-VL / Qwen2.5-VL: dynamic resolution, several images per prompt, M-RoPE."""

    name = "hf-qwen2-vl"
    family = "Qwen2-VL"
    model_classes = MODEL_CLASSES
    rope_rows = 3
    image_inputs = "pixel_values / image_grid_thw"

    @classmethod
    def config_reason(cls, model: Any) -> str | None:
        rope = getattr(cls.vlm_of(model).language_model.config, "rope_parameters", None) or {}
        if "mrope_section" not in rope:
            return "the language model has no M-RoPE sections (rope_parameters['mrope_section'])"
        return None

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.base = self.vlm
        self.merge = int(self.config.vision_config.spatial_merge_size)

    @property
    def grid(self) -> tuple[int, int] | None:
        """None: every image has its own grid (dynamic resolution)."""
        return None

    def missing_signal_hint(self, signal: str) -> str:
        if signal == "cls_attention":
            return (
                f"{self.family}'s vision tower has no [CLS] token, so [CLS]-attention strategies "
                "(VisionZip) cannot run on this family; pick a strategy without cls_attention"
            )
        return ""

    # -- steps ----------------------------------------------------------------------------------

    def vision_tower(self) -> Any:
        return self.base.visual

    def refuse_call(self, call: Call) -> None:
        """Videos, passed as pixels or (by ``generate``) pre-encoded."""
        encoded = call("mm_encoder_outputs") or {}
        video = call("pixel_values_videos") is not None or call("video_grid_thw") is not None
        if video or (isinstance(encoded, dict) and encoded.get("video") is not None):
            raise ContractError(
                "videos are not supported by vtprune's Qwen2-VL adapter yet; pass images only "
                "(or detach to run the model unpruned)"
            )

    def has_images(self, source: ImageSource) -> bool:
        """Pixels (or pre-encoded features) and the images' grids."""
        return source.grid_thw is not None and super().has_images(source)

    def image_grids(self, visual: torch.Tensor, source: ImageSource) -> CallImages | None:
        """Each image's token grid (its patch grid / the merge size) and prompt, the images
        repeated with their prompts where ``generate`` expanded them for beams; None
        without image tokens."""
        if source.grid_thw is None or not bool(visual.any()):
            return None
        grid_thw = source.grid_thw.long().cpu()
        if bool((grid_thw[:, 0] != 1).any()):
            raise ContractError(f"images must have one temporal patch (t = 1), got grids {grid_thw.tolist()}")
        grids = grid_thw[:, 1:] // self.merge  # token grid of each image after the merger
        counts = visual.sum(dim=1).cpu()
        order = _expanded_images(counts, grids)  # generate(num_beams=...) repeats the prompts
        grids = grids[order]
        areas = grids[:, 0] * grids[:, 1]
        starts = torch.cumsum(areas, 0) - areas
        sample = torch.searchsorted(torch.cumsum(counts, 0), starts, right=True).clamp(max=max(0, counts.shape[0] - 1))
        return CallImages(grids, sample, order)

    def image_pixels(self, source: ImageSource, images: CallImages | None) -> torch.Tensor | None:
        """The images' first frames on a shared canvas (:func:`canvas_pixels`), built only
        for strategies that read the image."""
        if images is None or "image" not in self.plan.needs:
            return None
        pixels, grid_thw = source.pixels, source.grid_thw
        if pixels is None:
            raise ContractError(
                f"strategy {self.plan.strategy.name!r} needs the image, but these "
                "image features were encoded outside the model; pass pixel_values instead"
            )
        assert grid_thw is not None
        return canvas_pixels(pixels, grid_thw.long().cpu(), self.config.vision_config)[images.order.to(pixels.device)]


@hookimpl
def vtprune_adapters() -> list[AdapterSpec]:
    """The built-in Qwen2-VL adapter (entry point ``qwen2_vl`` of the vtprune distribution)."""
    return [
        AdapterSpec(
            Qwen2VLAdapter.name,
            Qwen2VLAdapter,
            models=MODEL_CLASSES,
            description="transformers' Qwen2.5-VL / Qwen2-VL (dynamic resolution, several images per prompt, M-RoPE)",
        )
    ]


__all__ = ["Qwen2VLAdapter", "canvas_pixels", "patches_to_image", "vtprune_adapters"]
