"""What every transformers adapter shares: the version, the decoder checks, call arguments,
the refusal of ``labels`` while pruning, and installing a :class:`~.decoder.PrunedDecoder`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.errors import ContractError
from .base import BackboneAdapter
from .decoder import PrunedDecoder
from .decoder_features import unsupported_decoder_feature

LAYER_PARTS = ("input_layernorm", "self_attn", "mlp")
ATTN_PARTS = ("q_proj", "k_proj", "head_dim", "num_key_value_groups", "scaling")


def transformers_version() -> tuple[int, ...]:
    """(major, minor) of the installed transformers."""
    import transformers

    parts = []
    for piece in transformers.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def decoder_reason(lm: Any) -> str | None:
    """Why the language model ``lm`` cannot be run by :class:`~.decoder.PrunedDecoder`
    exactly (not Llama-like, a refused decoder feature, an attention kernel without per-sample
    masks), or None."""
    for attr in ("layers", "norm", "rotary_emb", "embed_tokens"):
        if not hasattr(lm, attr):
            return f"language model {type(lm).__name__} has no .{attr}; it is not Llama-like"
    layer = lm.layers[0]
    missing = [p for p in LAYER_PARTS if not hasattr(layer, p)]
    missing += [p for p in ATTN_PARTS if not hasattr(getattr(layer, "self_attn", None), p)]
    if missing:
        return f"decoder layer {type(layer).__name__} lacks {missing}; it is not Llama-like"
    feature = unsupported_decoder_feature(lm)
    if feature is not None:
        return feature
    impl = getattr(lm.config, "_attn_implementation", None)
    if impl not in (None, "sdpa", "eager"):
        return (
            f"attention implementation {impl!r} is not supported while pruning (per-sample "
            "padding masks are needed); load the model with attn_implementation='sdpa' or 'eager'"
        )
    return None


def call_argument(params: list[str], name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The value of ``name`` in a call of a forward whose parameters (after ``self``) are
    ``params``; None when not passed, or when this release has no such parameter."""
    if name in kwargs:
        return kwargs[name]
    if name not in params:
        return None
    i = params.index(name)
    return args[i] if i < len(args) else None


def refuse_labels(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook on a model: the model's own loss would pair logits of the pruned
    sequence with labels of the unpruned one, so a call with ``labels`` is refused."""
    if kwargs.get("labels") is not None:
        raise ContractError(
            "labels are not supported while vtprune pruning is attached: the logits cover "
            "only the kept tokens, so the model's loss would pair them with the wrong labels. "
            "Call the model without labels and compute the loss from the logits, realigning "
            "labels with the last record: handle.records[-1].take(labels) (-100 on filler slots); "
            "see docs/adapters.md"
        )


def is_prefill(cache: Any) -> bool:
    """True when ``cache`` (a call's KV cache, or None) holds nothing yet."""
    return cache is None or not hasattr(cache, "get_seq_length") or cache.get_seq_length() == 0


class DecoderAdapter(BackboneAdapter):
    """An adapter that runs a multimodal model's language model as a :class:`PrunedDecoder`.

    ``vlm`` is the model that merges images into the prompt (``LlavaModel``,
    ``Qwen2VLModel``); a pre-hook on it (``capture``) hands the call's images to the decoder
    as ``decoder.pending``, which a post-hook clears. Subclasses call :meth:`_install`."""

    def __init__(self, model: Any, vlm: Any) -> None:
        super().__init__(model)
        self.vlm = vlm
        self.lm = vlm.language_model
        self._hooks: list[Any] = []
        self._decoder: PrunedDecoder | None = None

    def _ensure_free(self) -> None:
        """Refuse a model whose language model is already wrapped (by another handle)."""
        if "forward" in vars(self.lm):
            raise ContractError(
                "this model already has a vtprune handle attached (or its language model's "
                "forward is wrapped by someone else); detach the other handle first"
            )

    def _install(self, decoder: PrunedDecoder, capture: Callable[..., None], *hooks: Any) -> None:
        """Wrap the language model with ``decoder``; ``hooks``: the subclass's own hook
        handles (registered after :meth:`_ensure_free`), removed with the rest."""
        self._ensure_free()
        self._decoder = decoder
        self._hooks = [
            self.vlm.register_forward_pre_hook(capture, with_kwargs=True),
            self.model.register_forward_pre_hook(refuse_labels, with_kwargs=True),
            self.vlm.register_forward_hook(self._release, with_kwargs=True, always_call=True),
            *hooks,
        ]
        self.lm.forward = decoder

    def _release(self, module: Any, args: Any, kwargs: Any, output: Any) -> None:
        if self._decoder is not None:
            self._decoder.pending = None

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if vars(self.lm).get("forward") is self._decoder:
            del self.lm.forward
        self._decoder = None


__all__ = [
    "DecoderAdapter",
    "ATTN_PARTS",
    "LAYER_PARTS",
    "call_argument",
    "decoder_reason",
    "is_prefill",
    "refuse_labels",
    "transformers_version",
]
