"""What the pruned decoder loop can replay exactly, as an explicit table checked at ``attach``.

:class:`~.decoder.PrunedDecoder` re-implements the forward of a Llama-style language model
(embed, RoPE, masks, layers, final norm) and recomputes attention rows from a layer's q/k
projections. Anything a model does outside that recipe would be silently skipped, so the
adapter accepts a decoder only when its model type is in :data:`SUPPORTED_MODEL_TYPES` and no
row of :data:`REFUSED_FEATURES` applies; the error names the feature and the config key.
Sliding windows are the one conditional feature: exact while the sequence fits in the window,
refused per call beyond it (:func:`sliding_window`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text", "qwen3_vl_moe_text",
)
"""Text model types whose decoder layers are Llama-style (pre-norm, q/k/v/o projections with
optional biases and optional per-head q/k RMSNorms, RoPE from the model's ``rotary_emb``,
grouped-query attention, a gated MLP or a mixture of experts run as the layer's own module)."""


_QWEN_TYPES = ("qwen2", "qwen2_vl_text", "qwen2_5_vl_text")
"""Qwen2 decoders window attention only with ``use_sliding_window=True``."""


@dataclass(frozen=True)
class DecoderFeature:
    """One refused decoder feature: how to detect it on the language model, and why."""

    name: str
    key: str  # the config key or module attribute that reveals it
    present: Callable[[Any, Any], bool]  # (text config, one decoder layer) -> bool
    why: str


def _multiplier(key: str) -> Callable[[Any, Any], bool]:
    def present(cfg: Any, layer: Any) -> bool:
        value = getattr(cfg, key, None)
        return value is not None and float(value) != 1.0

    return present


def _whole_norm(name: str) -> Callable[[Any, Any], bool]:
    """A q/k norm over the whole projection (OLMo2), not each head (Qwen3: weight of
    ``head_dim`` elements, replayed by :func:`~.attention.project_heads`)."""

    def present(cfg: Any, layer: Any) -> bool:
        attn = getattr(layer, "self_attn", None)
        norm = getattr(attn, name, None)
        if norm is None:
            return False
        weight = getattr(norm, "weight", None)
        return weight is None or weight.numel() != int(getattr(attn, "head_dim", -1))

    return present


def _partial_rotary(cfg: Any, layer: Any) -> bool:
    rope = getattr(cfg, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
    factor = getattr(cfg, "partial_rotary_factor", None) if factor is None else factor
    return factor is not None and float(factor) != 1.0


REFUSED_FEATURES: tuple[DecoderFeature, ...] = (
    DecoderFeature(
        "embedding scaling", "embedding_multiplier", _multiplier("embedding_multiplier"),
        "the model scales token embeddings inside its own forward, which vtprune's decoder loop "
        "replaces (Granite)",
    ),
    DecoderFeature(
        "residual scaling", "residual_multiplier", _multiplier("residual_multiplier"),
        "residual branches are scaled inside the layers in a way the adapter does not replay (Granite)",
    ),
    DecoderFeature(
        "query norm over all heads", "self_attn.q_norm", _whole_norm("q_norm"),
        "queries are normalised across all heads at once (OLMo2); the attention recomputation "
        "replays per-head norms only (Qwen3-VL), so attention-scored strategies would keep the "
        "wrong tokens",
    ),
    DecoderFeature(
        "key norm over all heads", "self_attn.k_norm", _whole_norm("k_norm"),
        "keys are normalised across all heads at once (OLMo2); the attention recomputation "
        "replays per-head norms only",
    ),
    DecoderFeature(
        "partial rotary embedding", "partial_rotary_factor", _partial_rotary,
        "RoPE covers only part of each head; the attention recomputation rotates whole heads",
    ),
)


def unsupported_decoder_feature(lm: Any) -> str | None:
    """Why the language model ``lm`` (e.g. ``LlamaModel``) cannot be pruned exactly, or None."""
    cfg = lm.config
    layer = lm.layers[0] if len(getattr(lm, "layers", ())) else None
    model_type = getattr(cfg, "model_type", None)
    for feature in REFUSED_FEATURES:
        if feature.present(cfg, layer):
            return (
                f"the language model ({model_type}) uses {feature.name} (`{feature.key}`), which "
                f"vtprune cannot replay exactly: {feature.why}. Supported decoder features are "
                "listed in docs/adapters.md"
            )
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"the language model's type {model_type!r} is not in vtprune's table of exactly "
            f"replayed decoders {list(SUPPORTED_MODEL_TYPES)} (docs/adapters.md, 'Supported "
            "decoder features'); other decoders may scale embeddings, norm queries or window "
            "attention in ways the pruned decoder loop would silently skip"
        )
    return None


def sliding_window(cfg: Any) -> int | None:
    """The attention window of any layer of the text config ``cfg``, or None when every layer
    attends to the whole sequence (Mistral: ``sliding_window``; Qwen2: ``layer_types`` with
    ``"sliding_attention"``)."""
    window = getattr(cfg, "sliding_window", None)
    if window is None:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    if getattr(cfg, "model_type", None) in _QWEN_TYPES and not getattr(cfg, "use_sliding_window", False):
        return None
    return int(window)


__all__ = [
    "REFUSED_FEATURES",
    "SUPPORTED_MODEL_TYPES",
    "DecoderFeature",
    "sliding_window",
    "unsupported_decoder_feature",
]
