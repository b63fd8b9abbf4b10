"""The base class of transformers adapters whose language model runs as a
:class:`~.decoder.PrunedDecoder`: :class:`DecoderAdapter`.

A family (LLaVA, Qwen2-VL) is a subclass that sets a few class attributes and overrides only
the steps that differ, in the style of transformers' modular model files. One model call
goes through the steps in this order (a forward pre-hook on the multimodal model, before it
merges the images into the prompt):

1. :meth:`DecoderAdapter.refuse_call` — inputs the family cannot prune (videos, ...);
2. :meth:`DecoderAdapter.call_source` — the call's images as :class:`ImageSource` (given as
   pixels, or pre-encoded by ``generate`` with the pixels tied to the encoder output by the
   vision-tower hook, :meth:`DecoderAdapter.tower_source`);
3. :meth:`~.base.BackboneAdapter.visual_spans` — the image tokens of ``input_ids``;
4. :meth:`DecoderAdapter.image_grids` — each image's token grid and prompt (None: the
   family's one fixed grid, one image per prompt);
5. :meth:`DecoderAdapter.image_pixels` — the ``image`` signal, as the pruning context
   takes it;

and at install, :meth:`DecoderAdapter.signals` (what the family supplies at a prune point),
:meth:`DecoderAdapter.layer_hooks` (code that runs after chosen decoder layers, with the
token layout in force there) and :meth:`DecoderAdapter.model_hooks` (further module hooks).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..core.errors import ContractError
from .base import BackboneAdapter
from .decoder import LayerHook, Pending, PrunedDecoder
from .hf_common import (
    call_argument,
    decoder_reason,
    is_prefill,
    refuse_labels,
    transformers_version,
)
from .plan import ATTENTION_SIGNALS, PrunePlan

SOURCE_ATTR = "_vtprune_source"
"""Attribute under which the vision-tower hook ties an :class:`ImageSource` to its output."""

Call = Callable[[str], Any]
"""A model call's arguments by name: ``call("pixel_values")`` (None when not passed)."""


@dataclass(frozen=True)
class ImageSource:
    """The images of one model call, as the vision tower saw them.

    Attributes:
        pixels: what the tower took (LLaVA: [M, 3, H, W]; Qwen2-VL: flattened patches
            [P, C * t * p * p]); None when only pre-encoded features came without them.
        grid_thw: [M, 3] each image's patch grid (dynamic-resolution families), or None.
        cls_attention: [M, heads, N] the vision [CLS] -> patch attention, or None.
        encoded: the call passed pre-encoded image features (``mm_encoder_outputs``).
    """

    pixels: torch.Tensor | None = None
    grid_thw: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None
    encoded: bool = False


@dataclass(frozen=True)
class CallImages:
    """Where the images of a call go: ``grids`` [M, 2] long CPU (each image's token grid),
    ``sample`` [M] long CPU (its prompt), ``order`` [M] long CPU (the source image of each
    row: the identity unless ``generate`` repeated the prompts for beams)."""

    grids: torch.Tensor
    sample: torch.Tensor
    order: torch.Tensor


class DecoderAdapter(BackboneAdapter):
    """An adapter that runs a transformers VLM's Llama-like language model as a
    :class:`~.decoder.PrunedDecoder`.

    Subclasses set :attr:`name`, :attr:`family`, :attr:`model_classes` (and
    :attr:`rope_rows`, :attr:`image_inputs`, :attr:`min_transformers` where they differ),
    implement :meth:`vision_tower`, and override the steps listed in the module docstring.
    ``install`` hooks the instance only: a pre-hook on the multimodal model (the call's images
    to the decoder, as ``decoder.pending``), a post-hook clearing them, a pre-hook refusing
    ``labels``, a hook on the vision tower, and the language model's ``forward`` replaced by
    the decoder. ``remove`` undoes all of it.
    """

    family: ClassVar[str] = ""
    """The family's name in messages ("LLaVA", "Qwen2-VL")."""
    model_classes: ClassVar[tuple[str, ...]] = ()
    """Names of the transformers classes it drives (looked up in ``transformers``)."""
    min_transformers: ClassVar[tuple[int, int]] = (5, 0)
    rope_rows: ClassVar[int] = 1
    """Rows of position ids: 1 (RoPE), 3 (M-RoPE)."""
    image_inputs: ClassVar[str] = "pixel_values"
    """What a call passes its images as (for messages)."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.vlm = self.vlm_of(model)
        self.lm = self.vlm.language_model
        self.config = self.vlm.config
        self._forward_params = list(inspect.signature(type(self.vlm).forward).parameters)[1:]
        self._hooks: list[Any] = []
        self._decoder: PrunedDecoder | None = None
        self._plan: PrunePlan | None = None

    # -- what attach asks -----------------------------------------------------------------------

    @classmethod
    def classes(cls) -> tuple[type, ...]:
        """The installed transformers classes named by :attr:`model_classes`."""
        try:
            import transformers
        except ImportError:
            return ()
        return tuple(getattr(transformers, name) for name in cls.model_classes if hasattr(transformers, name))

    @classmethod
    def supports(cls, model: Any) -> bool:
        classes = cls.classes()
        return bool(classes) and isinstance(model, classes)

    @classmethod
    def unsupported_reason(cls, model: Any) -> str | None:
        """The transformers version, then :meth:`config_reason`, then the decoder table."""
        import transformers

        if transformers_version() < cls.min_transformers:
            return (
                f"the {cls.family} adapter needs transformers >= {'.'.join(map(str, cls.min_transformers))}, "
                f"found {transformers.__version__}; upgrade transformers"
            )
        return cls.config_reason(model) or decoder_reason(cls.vlm_of(model).language_model)

    @classmethod
    def config_reason(cls, model: Any) -> str | None:
        """Why this model's configuration cannot be pruned exactly (None: it can)."""
        return None

    @staticmethod
    def vlm_of(model: Any) -> Any:
        """The multimodal model that merges images into the prompt (``LlavaModel``, ...)
        of a ``*ForConditionalGeneration`` or of itself."""
        return model.model if hasattr(model, "lm_head") else model

    @property
    def num_layers(self) -> int:
        return int(self.lm.config.num_hidden_layers)

    def visual_spans(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The image tokens: ``input_ids == config.image_token_id`` ([B, T] bool)."""
        return input_ids == int(self.config.image_token_id)

    def signals(self, layer: int | None) -> frozenset[str]:
        """The image and the instruction's states anywhere; inside the LLM also the
        scoring layer's attention rows (``attach`` drops them where there is no scoring
        layer: a ``"previous"`` point before layer 0)."""
        return frozenset({"image", "text_features"} | (ATTENTION_SIGNALS if layer is not None else set()))

    # -- steps of a model call ------------------------------------------------------------------

    def vision_tower(self) -> Any:
        """The vision encoder module whose output carries the image features."""
        raise NotImplementedError(f"{type(self).__name__} must name its vision tower")

    def refuse_call(self, call: Call) -> None:
        """Raise :class:`~vtprune.ContractError` for inputs the family cannot prune."""

    def tower_source(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ImageSource | None:
        """What the vision tower's call saw (its pixels and patch grids), tied to its output
        so a later call that receives the output pre-encoded finds them; None: nothing."""
        pixels = args[0] if args else kwargs.get("hidden_states", kwargs.get("pixel_values"))
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if not isinstance(pixels, torch.Tensor):
            return None
        return ImageSource(pixels, grid if isinstance(grid, torch.Tensor) else None)

    def call_source(self, call: Call, image_out: Any) -> ImageSource:
        """The call's images: its ``pixel_values`` / ``image_grid_thw``, or for features
        ``generate`` encoded first (``image_out``) what the tower hook tied to them
        (:meth:`tied_source`)."""
        pixels, grid = call("pixel_values"), call("image_grid_thw")
        if pixels is not None or image_out is None:
            return ImageSource(pixels, grid)
        tied: ImageSource | None = getattr(image_out, SOURCE_ATTR, None)
        if tied is None:  # features made elsewhere
            return ImageSource(None, grid, encoded=True)
        tied = replace(tied, grid_thw=grid if tied.grid_thw is None else tied.grid_thw, encoded=True)
        return self.tied_source(tied, image_out)

    def tied_source(self, source: ImageSource, image_out: Any) -> ImageSource:
        """Adjust a tied source to the encoder output it came with (``generate`` may have
        expanded that output for beams); the identity by default."""
        return source

    def has_images(self, source: ImageSource) -> bool:
        """Whether the call brings images the image tokens can be matched with."""
        return source.pixels is not None or source.encoded

    def image_grids(self, visual: torch.Tensor, source: ImageSource) -> CallImages | None:
        """Each image's token grid and prompt, for a prefill whose image tokens are
        ``visual`` [B, T]; None: the family's fixed :attr:`grid`, one image per prompt."""
        return None

    def image_pixels(self, source: ImageSource, images: CallImages | None) -> torch.Tensor | None:
        """The ``image`` signal [M, 3, H, W] (the pixels the tower saw, one row per image of
        ``images``), or None; by default the call's pixels as they are."""
        return source.pixels

    def layer_hooks(self) -> Mapping[int, Sequence[LayerHook]]:
        """Layer index -> hooks the decoder runs after that layer in every prefill, with the
        token layout in force there (:class:`~.decoder.LayerHook`); none by default."""
        return {}

    def model_hooks(self, plan: PrunePlan) -> list[Any]:
        """Further hooks for ``plan`` (removable handles, registered at install); none by
        default."""
        return []

    # -- install / remove -----------------------------------------------------------------------

    @property
    def plan(self) -> PrunePlan:
        """The installed plan (only while installed)."""
        assert self._plan is not None, "the adapter is not installed"
        return self._plan

    def install(self, plan: PrunePlan) -> None:
        self._ensure_free()
        decoder = PrunedDecoder(self.lm, plan, self.grid, self.rope_rows, self.layer_hooks())
        self._plan = plan
        tower = self.vision_tower().register_forward_hook(self._tie_source, with_kwargs=True)
        self._decoder = decoder
        self._hooks = [
            self.vlm.register_forward_pre_hook(self._capture, with_kwargs=True),
            self.model.register_forward_pre_hook(refuse_labels, with_kwargs=True),
            self.vlm.register_forward_hook(self._release, with_kwargs=True, always_call=True),
            tower,
            *self.model_hooks(plan),
        ]
        self.lm.forward = decoder

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if vars(self.lm).get("forward") is self._decoder:
            del self.lm.forward
        self._decoder = None
        self._plan = None

    def _ensure_free(self) -> None:
        """Refuse a model whose language model is already wrapped (by another handle)."""
        if "forward" in vars(self.lm):
            raise ContractError(
                "this model already has a vtprune handle attached (or its language model's "
                "forward is wrapped by someone else); detach the other handle first"
            )

    # -- the hooks ------------------------------------------------------------------------------

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Pre-hook on the multimodal model: the call's images, through the steps, to the
        decoder as ``pending``."""
        assert self._decoder is not None

        def call(name: str) -> Any:
            return call_argument(self._forward_params, name, args, kwargs)

        self.refuse_call(call)
        encoded = call("mm_encoder_outputs") or {}
        image_out = encoded.get("image") if isinstance(encoded, dict) else None
        source = self.call_source(call, image_out)
        input_ids = call("input_ids")
        if input_ids is None:
            if self.has_images(source):
                raise ContractError(
                    f"vtprune's {self.family} adapter locates image tokens through input_ids; pass "
                    f"input_ids (not inputs_embeds) together with {self.image_inputs} or mm_encoder_outputs"
                )
            self._decoder.pending = Pending()
            return
        visual = self.visual_spans(input_ids)
        # (a decode step may feed back a generated image-token id: that is text, not an image)
        if not is_prefill(call("cache") or call("past_key_values")):
            self._decoder.pending = Pending(visual)
            return
        if not self.has_images(source) and bool(visual.any()):
            raise ContractError(
                f"input_ids hold {int(visual.sum(dim=1).max())} image tokens per sample (at most) "
                f"but no {self.image_inputs} were passed, so there is no image to prune; pass the "
                f"processor's {self.image_inputs} with the prompt (or remove the image tokens)"
            )
        images = self.image_grids(visual, source)
        self._decoder.pending = Pending(
            visual,
            image=self.image_pixels(source, images),
            cls_attention=source.cls_attention,
            grids=None if images is None else images.grids,
            image_sample=None if images is None else images.sample,
        )

    def _tie_source(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """Vision-tower hook: tie :meth:`tower_source` to the output that carries the features
        (and hand its [CLS] attention to a call in progress)."""
        source = self.tower_source(args, kwargs)
        if source is None:
            return
        try:
            object.__setattr__(output, SOURCE_ATTR, source)
        except (AttributeError, TypeError):
            pass
        pending = self._decoder.pending if self._decoder is not None else None
        if pending is not None and source.cls_attention is not None:  # inside forward(pixel_values=...)
            pending.cls_attention = source.cls_attention

    def _release(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if self._decoder is not None:
            self._decoder.pending = None


__all__ = ["CallImages", "DecoderAdapter", "ImageSource", "SOURCE_ATTR"]
