"""Exact cost accounting of a pruning schedule: FLOPs, visual tokens per layer, KV-cache bytes.

No model is run: everything follows from the decoder's shape (:class:`ModelDims`) and a
:class:`~vtprune.core.Schedule` applied to ``visual`` image tokens among ``total`` prompt
tokens.

Counting convention (DESIGN.md section 3, FastV's paper): one multiply-accumulate counts as
one "FLOP", only the decoder layers are counted (embeddings, norms, RoPE, softmax, the final
norm and the LM head are not), and attention costs the full ``n x n`` score matrix (no
causal halving). For ``n`` query tokens, ``k`` keys, hidden ``d``, MLP width ``m``:

    formula="design":  4nd^2 + 2nkd + 2ndm        (3ndm for a gated MLP)
    formula="exact":   2nd*a + 2nd*g + 2nka + 2ndm (3ndm gated)

where ``a = heads * head_dim`` (q and o projections, attention width) and ``g = kv_heads *
head_dim`` (the k and v projections, smaller under GQA). In prefill ``k = n``, which gives
the familiar ``4nd^2 + 2n^2d + 2ndm``. The two formulas agree exactly for multi-head
attention with ``heads * head_dim == d`` (LLaVA-1.5); ``exact`` is the default and counts
GQA's k/v projections at their real size. Ratios pruned / unpruned are what matter; an
absolute FLOP count in the two-FLOPs-per-MAC convention is twice these numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core import ContractError, Schedule

Formula = Literal["exact", "design"]

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


@dataclass(frozen=True)
class ModelDims:
    """Shape of a decoder-only LLM as the accounting needs it.

    Attributes:
        hidden: model width d.
        intermediate: MLP width m.
        layers: number of decoder layers.
        heads: attention heads.
        kv_heads: key/value heads (== heads without GQA).
        head_dim: per-head width (hidden // heads unless the config says otherwise).
        gated: the MLP has a gate projection (Llama's SwiGLU: 3 matrices instead of 2).
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int | None = None
    head_dim: int | None = None
    gated: bool = True

    def __post_init__(self) -> None:
        kv = self.heads if self.kv_heads is None else self.kv_heads
        hd = self.hidden // self.heads if self.head_dim is None and self.heads > 0 else self.head_dim
        object.__setattr__(self, "kv_heads", kv)
        object.__setattr__(self, "head_dim", hd)
        for name in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ContractError(f"ModelDims.{name} must be a positive int, got {value!r}")
        if self.heads % int(kv) != 0:
            raise ContractError(
                f"heads ({self.heads}) must be a multiple of kv_heads ({kv}) for grouped-query attention"
            )

    @property
    def attn_width(self) -> int:
        """heads * head_dim: width of the q/o projections and of the attention scores."""
        return self.heads * int(self.head_dim or 0)

    @property
    def kv_width(self) -> int:
        """kv_heads * head_dim: width of the k and v projections (and of each cached row)."""
        return int(self.kv_heads or 0) * int(self.head_dim or 0)

    @classmethod
    def from_config(cls, config: Any, gated: bool | None = None) -> ModelDims:
        """Read a transformers config: a ``LlavaConfig`` (uses ``text_config``) or a text config
        such as ``LlamaConfig``. ``gated`` defaults to True for Llama/Mistral/Qwen-style MLPs
        (``hidden_act`` silu with a gate) and may be forced either way."""
        text = getattr(config, "text_config", None) or config
        missing = [
            k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
            if getattr(text, k, None) is None
        ]
        if missing:
            raise ContractError(
                f"config {type(text).__name__} lacks {missing}; pass a LlavaConfig, a Llama-style "
                "text config, or build ModelDims(...) by hand"
            )
        if gated is None:
            gated = getattr(text, "model_type", "llama") in _GATED_FAMILIES
        heads = int(text.num_attention_heads)
        return cls(
            hidden=int(text.hidden_size),
            intermediate=int(text.intermediate_size),
            layers=int(text.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
            gated=bool(gated),
        )


_GATED_FAMILIES = {
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "vicuna",
    "qwen2_vl", "qwen2_vl_text", "qwen2_5_vl", "qwen2_5_vl_text",
}


def layer_flops(dims: ModelDims, queries: int, keys: int | None = None, formula: Formula = "exact") -> int:
    """MACs of one decoder layer for ``queries`` new tokens attending over ``keys`` tokens
    (``keys`` defaults to ``queries``: prefill). See the module docstring for the formulas."""
    n = int(queries)
    k = n if keys is None else int(keys)
    if n < 0 or k < 0:
        raise ContractError(f"token counts must be >= 0, got queries={n}, keys={k}")
    d, m = dims.hidden, dims.intermediate
    mlp = (3 if dims.gated else 2) * n * d * m
    if formula == "design":
        return 4 * n * d * d + 2 * n * k * d + mlp
    if formula == "exact":
        a, g = dims.attn_width, dims.kv_width
        return 2 * n * d * a + 2 * n * d * g + 2 * n * k * a + mlp
    raise ContractError(f"formula must be 'exact' or 'design', got {formula!r}")


def visual_per_layer(schedule: Schedule | None, visual: int, num_layers: int) -> list[int]:
    """Visual tokens entering each decoder layer (length ``num_layers``).

    A point at ``layer=None`` prunes before the LLM, a point at layer L before layer L; counts
    are fractions of the original ``visual`` (``Schedule.counts``). ``None`` = unpruned."""
    if visual < 0:
        raise ContractError(f"visual token count must be >= 0, got {visual}")
    if schedule is None:
        return [visual] * num_layers
    schedule.check_depth(num_layers)
    counts = schedule.counts(visual)
    out = []
    for layer in range(num_layers):
        current = visual
        for point, count in zip(schedule.points, counts):
            if point.layer is None or point.layer <= layer:
                current = count
        out.append(current)
    return out


@dataclass(frozen=True)
class Accounting:
    """Costs of one schedule on one model for one prompt shape (all per sample unless noted).

    Attributes:
        tokens: sequence length entering each layer at prefill (= that layer's cache length).
        visual: visual tokens entering each layer.
        prefill_per_layer: prefill MACs per layer.
        decode_per_step: decoder MACs of each decode step 1..new_tokens-1 (step j attends
            over ``tokens[l] + j`` keys in layer l; the first new token comes from prefill).
        kv_bytes: KV-cache bytes after prefill, times ``batch``.
        kv_bytes_final: KV-cache bytes after the last decode step, times ``batch``.
    """

    dims: ModelDims
    total: int
    original_visual: int
    tokens: list[int]
    visual: list[int]
    prefill_per_layer: list[int]
    decode_per_step: list[int] = field(default_factory=list)
    kv_bytes: int = 0
    kv_bytes_final: int = 0
    batch: int = 1

    @property
    def prefill(self) -> int:
        """Total prefill MACs per sample."""
        return sum(self.prefill_per_layer)

    @property
    def decode(self) -> int:
        """Total decode MACs per sample over all decode steps."""
        return sum(self.decode_per_step)

    @property
    def generate(self) -> int:
        """Prefill plus every decode step, per sample."""
        return self.prefill + self.decode

    @property
    def avg_visual(self) -> float:
        """Visual tokens averaged over layers (the figure papers quote as "tokens")."""
        return sum(self.visual) / len(self.visual)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total_tokens": self.total, "original_visual": self.original_visual,
            "tokens_per_layer": self.tokens, "visual_per_layer": self.visual,
            "avg_visual": self.avg_visual, "prefill_macs": self.prefill,
            "prefill_macs_per_layer": self.prefill_per_layer, "decode_macs": self.decode,
            "generate_macs": self.generate, "kv_bytes": self.kv_bytes,
            "kv_bytes_final": self.kv_bytes_final, "batch": self.batch,
        }


def account(
    dims: ModelDims,
    schedule: Schedule | None,
    visual: int,
    total: int,
    new_tokens: int = 0,
    batch: int = 1,
    dtype: str | int = "float16",
    formula: Formula = "exact",
) -> Accounting:
    """Costs of running ``schedule`` (None = unpruned) on a prompt of ``total`` tokens of which
    ``visual`` are image tokens, then generating ``new_tokens`` tokens.

    ``dtype`` is the KV-cache element type (a name in ``DTYPE_BYTES`` or a byte count). KV
    bytes per layer = cache length x 2 (k and v) x kv_heads x head_dim x dtype bytes.
    """
    if not 0 <= visual <= total:
        raise ContractError(
            f"need 0 <= visual <= total prompt tokens, got visual={visual}, total={total}"
        )
    if new_tokens < 0 or batch < 1:
        raise ContractError(f"need new_tokens >= 0 and batch >= 1, got {new_tokens}, {batch}")
    nbytes = _dtype_bytes(dtype)
    vis = visual_per_layer(schedule, visual, dims.layers)
    tokens = [total - visual + v for v in vis]
    prefill = [layer_flops(dims, n, formula=formula) for n in tokens]
    decode = [
        sum(layer_flops(dims, 1, n + step, formula=formula) for n in tokens)
        for step in range(1, new_tokens)
    ]
    row = 2 * dims.kv_width * nbytes
    decoded = max(new_tokens - 1, 0)  # tokens fed back through the model (the last is not)
    return Accounting(
        dims=dims, total=total, original_visual=visual, tokens=tokens, visual=vis,
        prefill_per_layer=prefill, decode_per_step=decode,
        kv_bytes=batch * row * sum(tokens),
        kv_bytes_final=batch * row * sum(n + decoded for n in tokens),
        batch=batch,
    )


def _dtype_bytes(dtype: str | int) -> int:
    if isinstance(dtype, int) and not isinstance(dtype, bool) and dtype > 0:
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ContractError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_BYTES)} or a byte count")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class Comparison:
    """A pruned schedule against the unpruned model: ratios pruned / unpruned (< 1 is cheaper)."""

    pruned: Accounting
    unpruned: Accounting

    @property
    def prefill_ratio(self) -> float:
        return self.pruned.prefill / self.unpruned.prefill

    @property
    def generate_ratio(self) -> float:
        return self.pruned.generate / self.unpruned.generate

    @property
    def decode_ratio(self) -> float:
        return self.pruned.decode / self.unpruned.decode if self.unpruned.decode else 1.0

    @property
    def kv_ratio(self) -> float:
        return self.pruned.kv_bytes / self.unpruned.kv_bytes if self.unpruned.kv_bytes else 1.0

    @property
    def visual_ratio(self) -> float:
        """Average visual tokens over layers, as a fraction of the original count."""
        orig = self.unpruned.avg_visual
        return self.pruned.avg_visual / orig if orig else 1.0

    @property
    def ideal_prefill_speedup(self) -> float:
        return 1.0 / self.prefill_ratio

    @property
    def ideal_generate_speedup(self) -> float:
        return 1.0 / self.generate_ratio

    def as_dict(self) -> dict[str, Any]:
        return {
            "prefill_ratio": self.prefill_ratio, "generate_ratio": self.generate_ratio,
            "decode_ratio": self.decode_ratio, "kv_ratio": self.kv_ratio,
            "avg_visual": self.pruned.avg_visual, "visual_ratio": self.visual_ratio,
            "pruned": self.pruned.as_dict(), "unpruned": self.unpruned.as_dict(),
        }


def compare(
    dims: ModelDims,
    schedule: Schedule,
    visual: int,
    total: int,
    new_tokens: int = 0,
    batch: int = 1,
    dtype: str | int = "float16",
    formula: Formula = "exact",
) -> Comparison:
    """:func:`account` for ``schedule`` and for the unpruned model, side by side."""
    kw: dict[str, Any] = {"new_tokens": new_tokens, "batch": batch, "dtype": dtype, "formula": formula}
    return Comparison(
        pruned=account(dims, schedule, visual, total, **kw),
        unpruned=account(dims, None, visual, total, **kw),
    )


def describe_schedule(schedule: Schedule, visual: int) -> str:
    """A short text such as ``"pre:144"`` or ``"L2:288"`` or ``"L2:288 L4:144 L6:72"``."""
    parts = []
    for point, count in zip(schedule.points, schedule.counts(visual)):
        where = "pre" if point.layer is None else f"L{point.layer}"
        parts.append(f"{where}:{count}")
    return " ".join(parts)


__all__: Sequence[str] = [
    "Accounting", "Comparison", "DTYPE_BYTES", "ModelDims", "account", "compare",
    "describe_schedule", "layer_flops", "visual_per_layer",
]
