"""Adapter for Hugging Face transformers' LLaVA (``LlavaForConditionalGeneration`` / ``LlavaModel``).

A :class:`~.decoder_adapter.DecoderAdapter`: installed on the model instance, nothing on its
classes, are a forward pre-hook (and post-hook) on ``LlavaModel`` that hands the call's
``input_ids`` (where the image tokens are) and ``pixel_values`` (the ``image`` signal) to the
decoder, a hook on the vision tower (the pixels behind images ``generate`` encodes first), and
an instance-level ``forward`` on the language model: :class:`~.decoder.PrunedDecoder`, which
runs the decoder layers itself, pruning between them. What is LLaVA's own: one image of a
fixed square grid per prompt, and the vision [CLS] attention (``cls_attention``).

``detach`` removes all of it. The projected visual tokens are read from the ``inputs_embeds``
that LLaVA builds with its own ``masked_scatter`` merge, so pre-LLM pruning sees exactly the
features the unpruned model would feed its LLM.

The adapter is registered through vtprune's own entry point (``llava`` in the ``vtprune``
group, naming this module's :func:`vtprune_adapters` hook), not as a side effect of import.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..core.errors import ContractError
from ..core.hookspecs import AdapterSpec, hookimpl
from .attention import cls_attention
from .decoder_adapter import Call, CallImages, DecoderAdapter, ImageSource
from .plan import PrunePlan


class LlavaAdapter(DecoderAdapter):
    """LLaVA-1.5-style models: one image per prompt, Llama-like language model."""

    name = "hf-llava"
    family = "LLaVA"
    model_classes = ("LlavaForConditionalGeneration", "LlavaModel")

    @classmethod
    def config_reason(cls, model: Any) -> str | None:
        cfg = model.config
        if getattr(cfg, "vision_feature_select_strategy", "default") != "default":
            return (
                "the LLaVA adapter needs vision_feature_select_strategy='default' (patch tokens "
                f"only, a square grid); this model uses {cfg.vision_feature_select_strategy!r}"
            )
        return None

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.llava = self.vlm
        self._cls_buffer: torch.Tensor | None = None

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

    def signals(self, layer: int | None) -> frozenset[str]:
        """The base signals, and ``cls_attention`` where the projected vision layer's [CLS]
        row can be recomputed."""
        return super().signals(layer) | ({"cls_attention"} if self._cls_layer() is not None else set())

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

    # -- steps ----------------------------------------------------------------------------------

    def vision_tower(self) -> Any:
        return self.llava.vision_tower

    def refuse_call(self, call: Call) -> None:
        """A per-call ``vision_feature_layer`` other than the configured one, when the
        strategy reads the configured layer's [CLS] attention."""
        requested = call("vision_feature_layer")
        configured = getattr(self.config, "vision_feature_layer", None)
        if "cls_attention" in self.plan.needs and requested is not None and requested != configured:
            raise ContractError(
                f"this call passes vision_feature_layer={requested!r}, but vtprune reads the [CLS] "
                f"attention of the configured layer ({configured!r}) that the strategy "
                f"{self.plan.strategy.name!r} needs; set "
                "model.config.vision_feature_layer before attach() instead of passing it per call"
            )

    def tower_source(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ImageSource | None:
        """The pixels, with the [CLS] attention the pre-hook on the projected layer computed."""
        cls, self._cls_buffer = self._cls_buffer, None
        source = super().tower_source(args, kwargs)
        return None if source is None else replace(source, cls_attention=cls)

    def tied_source(self, source: ImageSource, image_out: Any) -> ImageSource:
        """``generate(num_beams / num_return_sequences)`` expanded the encoded images sample
        by sample; expand their pixels and [CLS] attention the same way."""
        pixels, cls = source.pixels, source.cls_attention
        copies = len(image_out.pooler_output) // max(1, len(pixels)) if pixels is not None else 1
        if pixels is None or copies <= 1 or len(image_out.pooler_output) != copies * len(pixels):
            return source
        return replace(
            source,
            pixels=pixels.repeat_interleave(copies, dim=0),
            cls_attention=None if cls is None else cls.repeat_interleave(copies, dim=0),
        )

    def image_grids(self, visual: torch.Tensor, source: ImageSource) -> CallImages | None:
        """None (one image of the fixed grid per prompt), after checking the image count."""
        pixels = source.pixels
        if pixels is not None and pixels.shape[0] != visual.shape[0]:
            raise ContractError(
                f"got {pixels.shape[0]} images for {visual.shape[0]} prompts; vtprune supports "
                "exactly one image per prompt"
            )
        return None

    def _remember_cls(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Pre-hook on the projected vision layer: recompute its [CLS] attention row."""
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            return
        with torch.no_grad():
            self._cls_buffer = cls_attention(module, hidden)

    def model_hooks(self, plan: PrunePlan) -> list[Any]:
        """The [CLS]-attention pre-hook, when the strategy needs it."""
        if "cls_attention" not in plan.needs:
            return []
        layer = self._cls_layer()
        assert layer is not None  # attach() checked signals()
        return [layer.register_forward_pre_hook(self._remember_cls, with_kwargs=True)]

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
