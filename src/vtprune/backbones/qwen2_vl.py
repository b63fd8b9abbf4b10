"""Adapter for transformers' Qwen2-VL family: ``Qwen2_5_VLForConditionalGeneration`` and
``Qwen2VLForConditionalGeneration`` (and their base ``*Model`` classes).

Dynamic resolution: every image has its own token grid (h, w) = its patch grid / 2 after the
patch merger, a prompt may hold several images, and a batch mixes sizes. Each image is one row
of the pruning context (on a canvas, see :mod:`vtprune.core.canvas`) with its own budget,
``keep`` applied to its own token count. Positions are M-RoPE's 3-D ids, computed by the model
itself on the unpruned sequence (``get_rope_index``, ``rope_deltas`` for decoding): with
``positions="original"`` each survivor keeps its (t, h, w) ids and the text after an image its
offsets; ``"compact"`` numbers the survivors of a sample contiguously on all three axes.

Installed on the model instance only: a forward pre-hook on the ``*Model`` (the call's
``input_ids`` and image grids), a hook on the vision tower (the pixels behind pre-encoded
images in ``generate``), and the language model's ``forward`` replaced by
:class:`~.decoder.PrunedDecoder` with 3-row position ids. Videos are refused (not yet
supported), and so are signals the family has no source for: its vision tower has no [CLS]
token, so ``cls_attention`` (VisionZip) cannot be supplied.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import ContractError
from ..core.hookspecs import AdapterSpec, hookimpl
from .decoder import Pending, PrunedDecoder
from .hf_common import (
    DecoderAdapter,
    call_argument,
    decoder_reason,
    is_prefill,
    transformers_version,
)

if TYPE_CHECKING:
    from .handle import PruneHandle

MIN_TRANSFORMERS = (5, 0)
MODEL_CLASSES = (
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen2_5_VLModel",
    "Qwen2VLForConditionalGeneration",
    "Qwen2VLModel",
)
SOURCE_ATTR = "_vtprune_qwen_source"


def _classes() -> tuple[type, ...]:
    import transformers

    return tuple(getattr(transformers, name) for name in MODEL_CLASSES if hasattr(transformers, name))


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

    @classmethod
    def supports(cls, model: Any) -> bool:
        try:
            classes = _classes()
        except ImportError:
            return False
        return bool(classes) and isinstance(model, classes)

    @classmethod
    def unsupported_reason(cls, model: Any) -> str | None:
        import transformers

        if transformers_version() < MIN_TRANSFORMERS:
            return (
                f"the Qwen2-VL adapter needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))}, "
                f"found {transformers.__version__}; upgrade transformers"
            )
        lm = cls._base(model).language_model
        rope = getattr(lm.config, "rope_parameters", None) or {}
        if "mrope_section" not in rope:
            return "the language model has no M-RoPE sections (rope_parameters['mrope_section'])"
        return decoder_reason(lm)

    @staticmethod
    def _base(model: Any) -> Any:
        return model.model if hasattr(model, "lm_head") else model

    def __init__(self, model: Any) -> None:
        super().__init__(model, self._base(model))
        self.base = self.vlm
        self.config = self.base.config
        self.merge = int(self.config.vision_config.spatial_merge_size)
        self._forward_params = list(inspect.signature(type(self.base).forward).parameters)[1:]

    @property
    def num_layers(self) -> int:
        return int(self.lm.config.num_hidden_layers)

    @property
    def grid(self) -> tuple[int, int] | None:
        """None: every image has its own grid (dynamic resolution)."""
        return None

    @property
    def num_visual_tokens(self) -> int | None:
        return None

    def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == int(self.config.image_token_id)

    def signals(self, layer: int | None) -> frozenset[str]:
        out = {"image", "text_features"}
        first = 1 if self.attention_source == "previous" else 0
        if layer is not None and layer >= first:  # the scoring layer's query / instruction rows
            out |= {"attention", "text_attention"}
        return frozenset(out)

    def missing_signal_hint(self, signal: str) -> str:
        if signal == "cls_attention":
            return (
                "Qwen2-VL's vision tower has no [CLS] token, so [CLS]-attention strategies "
                "(VisionZip) cannot run on this family; pick a strategy without cls_attention"
            )
        return ""

    # -- hooks ----------------------------------------------------------------------------------

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self._decoder is not None

        def arg(name: str) -> Any:
            return call_argument(self._forward_params, name, args, kwargs)

        encoded = arg("mm_encoder_outputs") or {}
        video = arg("pixel_values_videos") is not None or arg("video_grid_thw") is not None
        if video or (isinstance(encoded, dict) and encoded.get("video") is not None):
            # generate() encodes videos first and passes them as mm_encoder_outputs["video"]
            raise ContractError(
                "videos are not supported by vtprune's Qwen2-VL adapter yet; pass images only "
                "(or detach to run the model unpruned)"
            )
        input_ids = arg("input_ids")
        pixels, grid_thw = arg("pixel_values"), arg("image_grid_thw")
        image_out = encoded.get("image") if isinstance(encoded, dict) else None
        if pixels is None and image_out is not None:  # generate() encoded the images first
            pixels, grid_thw = getattr(image_out, SOURCE_ATTR, (None, grid_thw))
        prefill = is_prefill(arg("cache") or arg("past_key_values"))
        if input_ids is None:
            if pixels is not None or image_out is not None:
                raise ContractError(
                    "vtprune's Qwen2-VL adapter locates image tokens through input_ids; pass "
                    "input_ids (not inputs_embeds) together with pixel_values"
                )
            self._decoder.pending = Pending()
            return
        visual = self.visual_spans(input_ids)  # (video pad ids without video inputs are text)
        if not prefill:
            self._decoder.pending = Pending(visual)
            return
        if bool(visual.any()) and (grid_thw is None or (pixels is None and image_out is None)):
            raise ContractError(
                "input_ids hold image tokens but no pixel_values / image_grid_thw were passed, so "
                "there is no image to prune; pass the processor's pixel_values and image_grid_thw"
            )
        if grid_thw is None or not bool(visual.any()):
            self._decoder.pending = Pending(visual)
            return
        grid_thw = grid_thw.long().cpu()
        if bool((grid_thw[:, 0] != 1).any()):
            raise ContractError(f"images must have one temporal patch (t = 1), got grids {grid_thw.tolist()}")
        grids = grid_thw[:, 1:] // self.merge  # token grid of each image after the merger
        counts = visual.sum(dim=1).cpu()
        order = _expanded_images(counts, grids)  # generate(num_beams=...) repeats the prompts
        grids = grids[order]
        areas = grids[:, 0] * grids[:, 1]
        starts = torch.cumsum(areas, 0) - areas
        sample = torch.searchsorted(torch.cumsum(counts, 0), starts, right=True).clamp(max=max(0, counts.shape[0] - 1))
        image = None
        if "image" in self._decoder.handle.strategy.needs:
            if pixels is None:
                raise ContractError(
                    f"strategy {self._decoder.handle.strategy.name!r} needs the image, but these "
                    "image features were encoded outside the model; pass pixel_values instead"
                )
            image = canvas_pixels(pixels, grid_thw, self.config.vision_config)[order.to(pixels.device)]
        self._decoder.pending = Pending(visual, image=image, grids=grids, image_sample=sample)

    def _remember_pixels(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """Vision-tower hook: tie the pixels and grids to the output that carries their features."""
        pixels = args[0] if args else kwargs.get("hidden_states", kwargs.get("pixel_values"))
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if isinstance(pixels, torch.Tensor) and isinstance(grid, torch.Tensor):
            try:
                object.__setattr__(output, SOURCE_ATTR, (pixels, grid))
            except (AttributeError, TypeError):
                pass

    def install(self, handle: PruneHandle) -> None:
        self._ensure_free()
        tower = self.base.visual.register_forward_hook(self._remember_pixels, with_kwargs=True)
        self._install(PrunedDecoder(self.lm, handle, grid=None, rope_rows=3), self._capture, tower)


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
