"""Adapter for Hugging Face transformers' LLaVA (``LlavaForConditionalGeneration`` / ``LlavaModel``).

Two things are installed on the model instance, and nothing on its classes:

* a forward pre-hook (and post-hook) on ``LlavaModel`` that hands the call's ``input_ids``
  (where the image tokens are) and ``pixel_values`` (the ``image`` signal) to the decoder;
* an instance-level ``forward`` on the language model: :class:`~.decoder.PrunedDecoder`,
  which runs the decoder layers itself, pruning between them.

``detach`` removes both. The projected visual tokens are read from the ``inputs_embeds`` that
LLaVA builds with its own ``masked_scatter`` merge, so pre-LLM pruning sees exactly the
features the unpruned model would feed its LLM.

The adapter is registered through vtprune's own entry point (``llava`` in the ``vtprune``
group, naming this module's :func:`vtprune_adapters` hook), not as a side effect of import.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import ContractError
from ..core.hookspecs import AdapterSpec, hookimpl
from .attention import cls_attention
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
PIXELS_ATTR = "_vtprune_pixels"
CLS_ATTR = "_vtprune_cls_attention"


class LlavaAdapter(DecoderAdapter):
    """LLaVA-1.5-style models: one image per prompt, Llama-like language model."""

    name = "hf-llava"

    @classmethod
    def supports(cls, model: Any) -> bool:
        try:
            from transformers import LlavaForConditionalGeneration, LlavaModel
        except ImportError:
            return False
        return isinstance(model, (LlavaForConditionalGeneration, LlavaModel))

    @classmethod
    def unsupported_reason(cls, model: Any) -> str | None:
        import transformers

        if transformers_version() < MIN_TRANSFORMERS:
            return (
                f"the LLaVA adapter needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS))}, "
                f"found {transformers.__version__}; upgrade transformers"
            )
        cfg = model.config
        if getattr(cfg, "vision_feature_select_strategy", "default") != "default":
            return (
                "the LLaVA adapter needs vision_feature_select_strategy='default' (patch tokens "
                f"only, a square grid); this model uses {cfg.vision_feature_select_strategy!r}"
            )
        return decoder_reason(cls._llava(model).language_model)

    @staticmethod
    def _llava(model: Any) -> Any:
        return model.model if hasattr(model, "lm_head") else model

    def __init__(self, model: Any) -> None:
        super().__init__(model, self._llava(model))
        self.llava = self.vlm
        self.config = self.llava.config
        self._cls_buffer: torch.Tensor | None = None
        self._forward_params = list(inspect.signature(type(self.llava).forward).parameters)[1:]

    @property
    def num_layers(self) -> int:
        return int(self.lm.config.num_hidden_layers)

    @property
    def grid(self) -> tuple[int, int]:
        vc = self.config.vision_config
        side = int(vc.image_size) // int(vc.patch_size)
        return (side, side)

    @property
    def num_visual_tokens(self) -> int:
        h, w = self.grid
        n = int(getattr(self.config, "image_seq_length", h * w))
        if n != h * w:
            raise ContractError(
                f"config.image_seq_length={n} but the vision tower gives a {h}x{w} grid ({h * w} tokens)"
            )
        return n

    def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids == int(self.config.image_token_id)

    def signals(self, layer: int | None) -> frozenset[str]:
        out = {"image", "text_features"}
        if self._cls_layer() is not None:
            out.add("cls_attention")
        first = 1 if self.attention_source == "previous" else 0
        if layer is not None and layer >= first:  # the scoring layer's query / instruction rows
            out |= {"attention", "text_attention"}
        return frozenset(out)

    def _cls_layer(self) -> Any:
        """The vision encoder layer whose output LLaVA projects (its [CLS] row is the
        ``cls_attention`` signal), or None when it cannot be recomputed."""
        feature_layer = getattr(self.config, "vision_feature_layer", None)
        tower = self.llava.vision_tower
        encoder = getattr(getattr(tower, "vision_model", tower), "encoder", None)
        layers = getattr(encoder, "layers", None)
        if not isinstance(feature_layer, int) or layers is None:
            return None
        index = feature_layer % (len(layers) + 1)  # index into hidden_states (0 = embeddings)
        if index == 0:
            return None
        layer = layers[index - 1]
        attn = getattr(layer, "self_attn", None)
        parts = ("q_proj", "k_proj", "scale", "head_dim")
        if not hasattr(layer, "layer_norm1") or not all(hasattr(attn, p) for p in parts):
            return None
        return layer

    # -- hooks ----------------------------------------------------------------------------------

    def _argument(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The call's value of ``name`` (``mm_encoder_outputs`` arrived in 5.18)."""
        return call_argument(self._forward_params, name, args, kwargs)

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        assert self._decoder is not None
        input_ids = self._argument("input_ids", args, kwargs)
        pixels = self._argument("pixel_values", args, kwargs)
        encoded = self._argument("mm_encoder_outputs", args, kwargs) or {}
        image_out = encoded.get("image") if isinstance(encoded, dict) else None
        cls = None
        if pixels is None and image_out is not None:
            # generate() encodes images before prefill and passes mm_encoder_outputs; the
            # vision-tower hook tied the pixels (and [CLS] attention) to that output.
            pixels = getattr(image_out, PIXELS_ATTR, None)  # None: features made elsewhere
            cls = getattr(image_out, CLS_ATTR, None)
            copies = len(image_out.pooler_output) // max(1, len(pixels)) if pixels is not None else 1
            if pixels is not None and copies > 1 and len(image_out.pooler_output) == copies * len(pixels):
                # generate(num_beams / num_return_sequences) expanded the encoded images
                # sample by sample; expand their signals the same way
                pixels = pixels.repeat_interleave(copies, dim=0)
                cls = None if cls is None else cls.repeat_interleave(copies, dim=0)
        requested = self._argument("vision_feature_layer", args, kwargs)
        configured = getattr(self.config, "vision_feature_layer", None)
        needs_cls = "cls_attention" in self._decoder.handle.strategy.needs
        if needs_cls and requested is not None and requested != configured:
            raise ContractError(
                f"this call passes vision_feature_layer={requested!r}, but vtprune reads the [CLS] "
                f"attention of the configured layer ({configured!r}) that the strategy "
                f"{self._decoder.handle.strategy.name!r} needs; set "
                "model.config.vision_feature_layer before attach() instead of passing it per call"
            )
        visual = None if input_ids is None else self.visual_spans(input_ids)
        cache = self._argument("cache", args, kwargs) or self._argument("past_key_values", args, kwargs)
        prefill = is_prefill(cache)
        # (a decode step may feed back a generated image-token id: that is text, not an image)
        if prefill and visual is not None and pixels is None and image_out is None and bool(visual.any()):
            raise ContractError(
                f"input_ids hold {int(visual.sum(dim=1).max())} image placeholder tokens per sample "
                "but no pixel_values were passed, so there is no image to prune; pass the "
                "processor's pixel_values with the prompt (or remove the image tokens)"
            )
        if visual is None and (pixels is not None or image_out is not None):
            raise ContractError(
                "vtprune's LLaVA adapter locates image tokens through input_ids; pass input_ids "
                "(not inputs_embeds) together with pixel_values or mm_encoder_outputs"
            )
        if pixels is not None and visual is not None and pixels.shape[0] != visual.shape[0]:
            raise ContractError(
                f"got {pixels.shape[0]} images for {visual.shape[0]} prompts; vtprune supports "
                "exactly one image per prompt"
            )
        self._decoder.pending = Pending(visual, pixels, cls)

    def _remember_pixels(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """Vision-tower hook: tie the pixels to the encoder output that carries their features."""
        pixels = args[0] if args else kwargs.get("pixel_values")
        cls, self._cls_buffer = self._cls_buffer, None
        if isinstance(pixels, torch.Tensor):
            try:
                object.__setattr__(output, PIXELS_ATTR, pixels)
                object.__setattr__(output, CLS_ATTR, cls)
            except (AttributeError, TypeError):
                pass
        pending = self._decoder.pending if self._decoder is not None else None
        if pending is not None and cls is not None:  # inside LlavaModel.forward(pixel_values=...)
            pending.cls_attention = cls

    def _remember_cls(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Pre-hook on the projected vision layer: recompute its [CLS] attention row."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            return
        with torch.no_grad():
            self._cls_buffer = cls_attention(module, hidden)

    def install(self, handle: PruneHandle) -> None:
        self._ensure_free()
        hooks = [self.llava.vision_tower.register_forward_hook(self._remember_pixels, with_kwargs=True)]
        if "cls_attention" in handle.strategy.needs:
            layer = self._cls_layer()
            assert layer is not None  # attach() checked signals()
            hooks.append(layer.register_forward_pre_hook(self._remember_cls, with_kwargs=True))
        self._install(PrunedDecoder(self.lm, handle, self.grid), self._capture, *hooks)

    def remove(self) -> None:
        super().remove()
        self._cls_buffer = None


@hookimpl
def vtprune_adapters() -> list[AdapterSpec]:
    """The built-in LLaVA adapter, registered through vtprune's own entry point
    (``llava = "vtprune.backbones.llava"`` in pyproject.toml), like any third-party one."""
    return [
        AdapterSpec(
            LlavaAdapter.name,
            LlavaAdapter,
            models=("LlavaForConditionalGeneration", "LlavaModel"),
            description="transformers' LLaVA-1.5 (Llama-like language model, one image per prompt)",
        )
    ]


__all__ = ["LlavaAdapter", "vtprune_adapters"]
