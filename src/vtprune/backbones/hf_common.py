"""Helpers every transformers adapter uses: the version, the decoder checks, call arguments,
the refusal of ``labels`` while pruning, and whether a call is a prefill."""

from __future__ import annotations

from typing import Any

from ..core.errors import ContractError
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


__all__ = [
    "ATTN_PARTS",
    "LAYER_PARTS",
    "call_argument",
    "decoder_reason",
    "is_prefill",
    "refuse_labels",
    "transformers_version",
]
