"""Hypothesis generators of valid :class:`~vtprune.core.PruneContext` inputs.

Hypothesis draws a small, printable :class:`ContextSpec` (shapes, budgets, validity, seed);
:func:`build_context` turns it into tensors deterministically. A failure therefore shrinks to a
short spec that reproduces it exactly::

    from vtprune.conformance_tests import ContextSpec, build_context
    ctx = build_context(ContextSpec(batch=2, grid=(3, 4), dim=5, budgets=(3, 0), valid_counts=(12, 7)))

Plugin authors reuse :func:`prune_contexts` (contexts) or :func:`context_specs` (specs) in their
own hypothesis tests::

    @given(prune_contexts(my_strategy.capabilities))
    def test_mine(ctx): ...
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from hypothesis import strategies as st

from ..core import SIGNALS, Capabilities, ContractError, PruneContext, keep_count
from ..core.types import grid_blocks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FEATURE_KINDS = ("randn", "ties", "zeros", "hidden")
"""``randn``: i.i.d. normal; ``ties``: every token copies one of <= 3 vectors (many equal
scores); ``zeros``: all zero (every score-from-features ties); ``hidden``: scaled like real
CLIP / LLM hidden states: a large shared offset (~N(0, 60^2) per channel), token spread
~N(0, 20^2), and one outlier channel near +-400 ("massive activations"), so token norms are
in the hundreds (naive exp / softmax / squared sums in fp16 overflow)."""
PADDING_KINDS = ("trailing", "scattered")
"""Where a ragged sample's invalid tokens sit: after its valid ones, or at random positions."""
IMAGE_RANGES = ("unit", "clip", "byte")
"""Pixel value ranges: ``unit`` [0, 1]; ``clip`` CLIP-normalised ((x - mean) / std, about
[-1.8, 2.1], what the LLaVA adapter passes); ``byte`` [0, 255] as floats."""
PX_PER_CELL = (14.0, 10.5, 16.0, 7.0, 9.25)
"""Image pixels per grid cell side the generators draw (non-integer ratios included)."""
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, repr=False)
class ContextSpec:
    """A compact, reproducible description of one context (what a failure message prints).

    Attributes:
        batch: B samples. grid: (h, w), N = h * w. dim: D feature channels.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (features and text features).
        valid_counts: valid tokens per sample [B] (None: all N valid).
        padding: where invalid tokens sit (see :data:`PADDING_KINDS`).
        budgets: tokens kept per sample [B], each in [0, valid count].
        ratio: the keep ratio the budgets came from (informational; None for counts).
        features: how features are drawn (see :data:`FEATURE_KINDS`).
        seed: seeds every random tensor and ``ctx.generator``.
        signals: optional signals to supply (subset of ``vtprune.core.SIGNALS``).
        heads: attention heads; 0 gives ``attention`` / ``cls_attention`` of shape [B, N]
            (``text_attention`` always has a heads axis: max(heads, 1)).
        text_tokens: T for ``text_features`` [B, T, D_text] and ``text_attention``
            [B, heads, T, N] (the same instruction rows).
        text_dim: D_text, the text width (None: D); the contract does not tie it to D
            (stages that declare ``text_in_feature_space`` get D).
        text_counts: real text rows per sample (``text_valid``; None: every row real); rows
            past a sample's count are NaN (in ``text_features`` and ``text_attention``), which
            no stage may let through.
        px_per_cell: image pixels per grid cell side, not necessarily an integer (the image
            is [B, 3, round(h*px), round(w*px)]).
        image_range: pixel values, see :data:`IMAGE_RANGES`.
        layer: None for a context before the LLM; an int >= 1 for an in-LLM prune point,
            built as the decoder adapter builds it (``vtprune/backbones/prune_step.py``):
            ``ctx.layer`` = layer, ``ctx.original_count`` = N, earlier-pruned tokens invalid
            (scattered, the same survivor count in every sample) with zero features, the same
            budget in every sample, ``attention`` [B, heads >= 1, N] zero on pruned tokens,
            ``image`` / ``cls_attention`` as computed before the LLM (on the full grid, so
            cls_attention is *not* zero on pruned tokens), and no ``ctx.generator``.
        row_grids: each sample's own grid (h_b, w_b) inside ``grid`` (``ctx.grids``; None:
            none). Sample b's valid tokens are then exactly its top-left block (``valid_counts``
            must be the block areas) and its image is zero outside the block's pixels, as a
            dynamic-resolution adapter builds a canvas. Drawn only for stages that declare
            ``Capabilities.row_grids`` (the others never see ``ctx.grids``).
    """

    batch: int = 1
    grid: tuple[int, int] = (2, 2)
    dim: int = 4
    dtype: str = "float32"
    valid_counts: tuple[int, ...] | None = None
    padding: str = "trailing"
    budgets: tuple[int, ...] = (1,)
    ratio: float | None = None
    features: str = "randn"
    seed: int = 0
    signals: tuple[str, ...] = ()
    heads: int = 0
    text_tokens: int = 2
    text_dim: int | None = None
    text_counts: tuple[int, ...] | None = None
    px_per_cell: float = 14
    image_range: str = "unit"
    layer: int | None = None
    row_grids: tuple[tuple[int, int], ...] | None = None

    def __repr__(self) -> str:  # only the fields that differ from the defaults: short, exact
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"ContextSpec({', '.join(changed)})"

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def counts(self) -> tuple[int, ...]:
        """Valid tokens per sample."""
        return self.valid_counts or (self.num_tokens,) * self.batch

    def describe(self) -> str:
        """One line: shapes, budgets, grid, valid counts and seed."""
        h, w = self.grid
        parts = [
            f"B={self.batch}",
            f"grid={h}x{w} (N={self.num_tokens})",
            f"D={self.dim}",
            self.dtype,
            f"budgets={list(self.budgets)}" + (f" (ratio {self.ratio:g})" if self.ratio is not None else ""),
            f"valid={list(self.counts())}" + (f" ({self.padding} padding)" if self.valid_counts else ""),
            f"features={self.features}",
            f"seed={self.seed}",
        ]
        if self.layer is not None:
            parts.append(f"in-LLM at layer {self.layer} (original_count={self.num_tokens})")
        if self.row_grids is not None:
            parts.append(f"row grids={[f'{h}x{w}' for h, w in self.row_grids]}")
        if self.signals:
            parts.append(f"signals={list(self.signals)}" + (f" heads={self.heads}" if self.heads else ""))
        return ", ".join(parts)


def _valid_mask(spec: ContextSpec, gen: torch.Generator) -> torch.Tensor | None:
    if spec.row_grids is not None:
        return grid_blocks(torch.tensor(spec.row_grids, dtype=torch.long), spec.grid)
    if spec.valid_counts is None:
        return None
    n = spec.num_tokens
    mask = torch.zeros(spec.batch, n, dtype=torch.bool)
    for b, c in enumerate(spec.valid_counts):
        if spec.padding == "trailing":
            mask[b, :c] = True
        else:
            mask[b, torch.randperm(n, generator=gen)[:c]] = True
    return mask


def _features(spec: ContextSpec, gen: torch.Generator) -> torch.Tensor:
    b, n, d = spec.batch, spec.num_tokens, spec.dim
    if spec.features == "zeros":
        out = torch.zeros(b, n, d)
    elif spec.features == "ties":
        pool = torch.randn(3, d, generator=gen)
        out = pool[torch.randint(0, 3, (b, n), generator=gen)]
    elif spec.features == "hidden":
        offset = 60.0 * torch.randn(d, generator=gen)
        out = offset + 20.0 * torch.randn(b, n, d, generator=gen)
        channel = int(torch.randint(0, d, (1,), generator=gen))
        sign = 1.0 if bool(torch.rand(1, generator=gen) < 0.5) else -1.0
        out[..., channel] += sign * 400.0
    else:
        out = torch.randn(b, n, d, generator=gen)
    return out.to(DTYPES[spec.dtype])


def _attention(spec: ContextSpec, gen: torch.Generator, valid: torch.Tensor | None) -> torch.Tensor:
    """Non-negative rows, zero on padding (unless ``valid`` is None), summing to at most 1
    (a softmax slice)."""
    shape = (spec.batch, spec.heads, spec.num_tokens) if spec.heads else (spec.batch, spec.num_tokens)
    logits = torch.randn(*shape, generator=gen) * 3.0
    if spec.features == "ties":  # quantised: many equal attention values
        logits = logits.round()
    att = torch.softmax(torch.cat([logits, torch.zeros(*shape[:-1], 1)], dim=-1), dim=-1)[..., :-1]
    if valid is not None:
        att = att * (valid[:, None, :] if spec.heads else valid).to(att.dtype)
    return att


def _text_attention(
    spec: ContextSpec, gen: torch.Generator, valid: torch.Tensor | None, text_valid: torch.Tensor | None
) -> torch.Tensor:
    """[B, max(heads, 1), T, N]: each instruction row a softmax slice over the visual tokens
    (the rest of its mass on text keys), zero on invalid (pruned) tokens, NaN on padding rows."""
    spec1 = replace(spec, heads=max(spec.heads, 1))
    rows = [_attention(spec1, gen, valid) for _ in range(spec.text_tokens)]
    att = torch.stack(rows, dim=2)  # [B, H, T, N]
    if text_valid is not None:
        att = torch.where(text_valid[:, None, :, None], att, torch.nan)
    return att


def image_size(spec: ContextSpec) -> tuple[int, int]:
    """(H, W) of the spec's image: round(side x px_per_cell), at least 1."""
    h, w = spec.grid
    return max(1, round(h * spec.px_per_cell)), max(1, round(w * spec.px_per_cell))


def _image(spec: ContextSpec, gen: torch.Generator) -> torch.Tensor:
    """Flat colour blocks of about 2x2 grid cells plus a little noise (SLIC can segment it),
    in the spec's value range."""
    h, w = spec.grid
    size = image_size(spec)
    coarse = torch.rand(spec.batch, 3, (h + 1) // 2, (w + 1) // 2, generator=gen)
    # each coarse block covers 2 cells = 2 * px pixels; the last one may be cut
    full = (round((h + 1) // 2 * 2 * spec.px_per_cell), round((w + 1) // 2 * 2 * spec.px_per_cell))
    img = torch.nn.functional.interpolate(coarse, size=full, mode="nearest")[:, :, : size[0], : size[1]]
    img = (img + 0.05 * torch.randn(img.shape, generator=gen)).clamp(0.0, 1.0)
    if spec.image_range == "clip":
        mean = torch.tensor(_CLIP_MEAN)[None, :, None, None]
        std = torch.tensor(_CLIP_STD)[None, :, None, None]
        img = (img - mean) / std
    elif spec.image_range == "byte":
        img = img * 255.0
    if spec.row_grids is not None:  # each sample's pixels in its block's share of the canvas
        (hh, ww), (ph, pw) = spec.grid, size
        for b, (gh, gw) in enumerate(spec.row_grids):
            img[b, :, round(gh * ph / hh) :] = 0.0
            img[b, :, :, round(gw * pw / ww) :] = 0.0
    return img.contiguous()


def build_context(spec: ContextSpec, device: str | torch.device = "cpu") -> PruneContext:
    """The context a spec describes; the same spec always gives the same tensors.

    ``ctx.generator`` is a CPU generator seeded with ``spec.seed`` (fresh on every call).
    """
    unknown = set(spec.signals) - set(SIGNALS)
    if unknown:
        raise ContractError(f"unknown signals {sorted(unknown)}; known signals: {list(SIGNALS)}")
    choices = (
        ("dtype", DTYPES),
        ("features", FEATURE_KINDS),
        ("padding", PADDING_KINDS),
        ("image_range", IMAGE_RANGES),
    )
    for name, allowed in choices:
        if getattr(spec, name) not in allowed:
            raise ContractError(
                f"ContextSpec.{name} must be one of {list(allowed)}, got {getattr(spec, name)!r}"
            )
    if not spec.px_per_cell > 0:
        raise ContractError(f"ContextSpec.px_per_cell must be > 0, got {spec.px_per_cell!r}")
    if spec.layer is not None:
        if not (isinstance(spec.layer, int) and spec.layer >= 1):
            raise ContractError(f"ContextSpec.layer must be None or an int >= 1, got {spec.layer!r}")
        if len(set(spec.counts())) > 1 or len(set(spec.budgets)) > 1:
            raise ContractError(
                "an in-LLM ContextSpec (layer set) has the same valid count and the same budget "
                f"in every sample, as the adapter builds it; got valid {list(spec.counts())}, "
                f"budgets {list(spec.budgets)}"
            )
    if spec.row_grids is not None:
        areas = tuple(h * w for h, w in spec.row_grids)
        if len(spec.row_grids) != spec.batch or spec.layer is not None or spec.counts() != areas:
            raise ContractError(
                "ContextSpec.row_grids needs one (h, w) per sample, valid_counts equal to their "
                f"areas {list(areas)} and no layer; got {len(spec.row_grids)} grids, valid "
                f"{list(spec.counts())}, layer {spec.layer!r}"
            )
    gen = torch.Generator().manual_seed(spec.seed)
    valid = _valid_mask(spec, gen)
    signals: dict[str, torch.Tensor] = {}
    if "image" in spec.signals:
        signals["image"] = _image(spec, gen)
    for name in ("attention", "cls_attention"):
        if name in spec.signals:
            # In the LLM, cls_attention comes from before the LLM: pruned tokens keep theirs.
            unmasked = spec.layer is not None and name == "cls_attention"
            signals[name] = _attention(spec, gen, None if unmasked else valid)
    text_valid = None
    if spec.text_counts is not None and {"text_features", "text_attention"} & set(spec.signals):
        text_valid = torch.arange(spec.text_tokens)[None, :] < torch.tensor(spec.text_counts)[:, None]
        signals["text_valid"] = text_valid
    if "text_features" in spec.signals:
        text_dim = spec.dim if spec.text_dim is None else spec.text_dim
        text = torch.randn(spec.batch, spec.text_tokens, text_dim, generator=gen)
        if text_valid is not None:
            text = torch.where(text_valid[..., None], text, torch.nan)
        signals["text_features"] = text.to(DTYPES[spec.dtype])
    if "text_attention" in spec.signals:
        signals["text_attention"] = _text_attention(spec, gen, valid, text_valid)
    features = _features(spec, gen)
    in_llm = spec.layer is not None
    if in_llm and valid is not None:  # the adapter's survivors-in-their-slots, zeros elsewhere
        features = features * valid[..., None].to(features.dtype)
    dev = torch.device(device)
    return PruneContext(
        features=features.to(dev),
        grid=spec.grid,
        budget=torch.tensor(spec.budgets, dtype=torch.long),
        valid=None if valid is None else valid.to(dev),
        layer=spec.layer,
        original_count=spec.num_tokens if in_llm else None,
        generator=None if in_llm else torch.Generator().manual_seed(spec.seed),
        image=_to(signals.get("image"), dev),
        attention=_to(signals.get("attention"), dev),
        cls_attention=_to(signals.get("cls_attention"), dev),
        text_features=_to(signals.get("text_features"), dev),
        text_valid=_to(signals.get("text_valid"), dev),
        text_attention=_to(signals.get("text_attention"), dev),
        grids=None if spec.row_grids is None else torch.tensor(spec.row_grids, dtype=torch.long),
    )


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _same_space(capabilities: Capabilities | Iterable[str] | None) -> bool:
    """Does a stage compare text with features directly (D_text must equal D)?"""
    return isinstance(capabilities, Capabilities) and capabilities.text_in_feature_space


def _row_grids(capabilities: Capabilities | Iterable[str] | None) -> bool:
    return isinstance(capabilities, Capabilities) and capabilities.row_grids


def _needs(capabilities: Capabilities | Iterable[str] | None) -> tuple[str, ...]:
    if capabilities is None:
        return ()
    needs = capabilities.needs if isinstance(capabilities, Capabilities) else frozenset(capabilities)
    unknown = set(needs) - set(SIGNALS)
    if unknown:
        raise ContractError(f"unknown signals {sorted(unknown)}; known signals: {list(SIGNALS)}")
    return tuple(s for s in SIGNALS if s in needs)


@st.composite
def context_specs(
    draw: st.DrawFn,
    capabilities: Capabilities | Iterable[str] | None = None,
    *,
    max_batch: int = 4,
    max_side: int = 12,
    max_dim: int = 16,
    dtypes: tuple[str, ...] = ("float32", "bfloat16", "float16"),
    ragged: bool = True,
    budget: str = "any",
    in_llm: bool = True,
) -> ContextSpec:
    """Valid :class:`ContextSpec` s supplying the signals ``capabilities.needs`` lists.

    B in 1..max_batch, grid sides in 1..max_side (non-square too), D in 1..max_dim; budgets
    from a ratio (half-up rounding of ratio x valid count) or per-sample counts in
    [0, valid count]. ``budget="all"`` / ``"none"`` pins every budget to the valid count / 0.
    ``ragged=True`` lets samples have padding tokens (valid count 0 included).
    ``in_llm=True`` makes about a third of the specs in-LLM prune points (``layer`` in 1..40,
    see :class:`ContextSpec`): a survivor count in 0..N shared by the batch, scattered, and one
    budget for every sample (a count, or a ratio of the *original* N, as a schedule gives it).
    """
    if budget not in ("any", "all", "none"):
        raise ContractError(f"budget must be 'any', 'all' or 'none', got {budget!r}")
    signals = _needs(capabilities)
    same_space = _same_space(capabilities)
    batch = draw(st.integers(1, max_batch))
    grid = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    n = grid[0] * grid[1]
    valid_counts: tuple[int, ...] | None = None
    padding = "trailing"
    layer: int | None = None
    row_grids: tuple[tuple[int, int], ...] | None = None
    if in_llm and draw(st.sampled_from((False, False, True))):
        layer = draw(st.integers(1, 40))
    if layer is not None:  # survivors of earlier prune points: as many in every sample
        # most draws have earlier-pruned tokens (padding a stage must skip) and something to keep
        pruned = n > 1 and draw(st.sampled_from((True, True, True, False)))
        survivors = draw(st.integers(1, n - 1)) if pruned else draw(st.integers(0, n))
        valid_counts = None if survivors == n else (survivors,) * batch
        padding = "scattered"
    elif ragged and _row_grids(capabilities) and draw(st.booleans()):  # a canvas of rows' own grids
        row_grids = tuple(
            (draw(st.integers(1, grid[0])), draw(st.integers(1, grid[1]))) for _ in range(batch)
        )
        valid_counts = tuple(h * w for h, w in row_grids)
    elif ragged and draw(st.booleans()):
        valid_counts = tuple(draw(st.lists(st.integers(0, n), min_size=batch, max_size=batch)))
        padding = draw(st.sampled_from(PADDING_KINDS))
    counts = valid_counts or (n,) * batch
    ratio: float | None = None
    if layer is not None and budget == "any":  # one budget, a count or a ratio of the original N
        if draw(st.booleans()):
            ratio = draw(st.floats(0.0, counts[0] / n, allow_nan=False, allow_infinity=False))
            budgets = (keep_count(ratio, n),) * batch
        else:  # mostly at least one token: every budget 1..survivors
            low = 1 if counts[0] and draw(st.sampled_from((True, True, False))) else 0
            budgets = (draw(st.integers(low, counts[0])),) * batch
    elif budget == "all":
        budgets = counts
    elif budget == "none":
        budgets = (0,) * batch
    elif draw(st.booleans()):
        ratio = draw(
            st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
            | st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
        )
        budgets = tuple(keep_count(ratio, c) for c in counts)
    else:
        budgets = tuple(draw(st.integers(0, c)) for c in counts)
    has_text = bool({"text_features", "text_attention"} & set(signals))
    text_tokens = draw(st.integers(1, 4)) if has_text else 2
    text_counts: tuple[int, ...] | None = None
    if has_text and draw(st.booleans()):  # instructions of different lengths
        text_counts = tuple(draw(st.lists(st.integers(0, text_tokens), min_size=batch, max_size=batch)))
    return ContextSpec(
        batch=batch,
        grid=grid,
        dim=draw(st.integers(1, max_dim)),
        dtype=draw(st.sampled_from(dtypes)),
        valid_counts=valid_counts,
        padding=padding,
        budgets=budgets,
        ratio=ratio,
        features=draw(st.sampled_from(FEATURE_KINDS)),
        seed=draw(st.integers(0, 2**16)),
        signals=signals,
        heads=(
            draw(st.integers(0 if layer is None else 1, 3))
            if {"attention", "cls_attention", "text_attention"} & set(signals)
            else 0
        ),
        text_tokens=text_tokens,
        text_dim=draw(st.integers(1, max_dim)) if "text_features" in signals and not same_space else None,
        text_counts=text_counts,
        px_per_cell=draw(st.sampled_from(PX_PER_CELL)) if "image" in signals else 14,
        image_range=draw(st.sampled_from(IMAGE_RANGES)) if "image" in signals else "unit",
        layer=layer,
        row_grids=row_grids,
    )


SWEEP_MAX_COUNT = 10
"""The budget sweep covers every valid count m in 1..10 with every budget 0..m."""
SWEEP_MAX_BATCH = 8


def budget_sweep(
    capabilities: Capabilities | Iterable[str] | None = None,
    seed: int | None = 0,
    *,
    max_count: int = SWEEP_MAX_COUNT,
    max_batch: int = SWEEP_MAX_BATCH,
) -> list[ContextSpec]:
    """Specs that together try every (valid count m, budget k) with 1 <= m <= ``max_count``
    and 0 <= k <= m exactly once (65 pairs for m <= 10), packed as samples of batches of at
    most ``max_batch`` (9 contexts by default).

    The pairs are shuffled by ``seed`` (None: at random); each context gets a grid with at least as many cells as
    its largest m (samples with fewer valid tokens get trailing or scattered padding), and a
    dtype, feature kind and signal shapes drawn from ``seed`` as :func:`context_specs` would.
    Off-by-one bugs that fire on a few budgets only (some ratios, float-step lattices) cannot
    hide from it, whatever hypothesis happens to draw.
    """
    import random

    rng = random.Random(seed)
    signals = _needs(capabilities)
    text_dim = "text_features" in signals and not _same_space(capabilities)
    pairs = [(m, k) for m in range(1, max_count + 1) for k in range(m + 1)]
    rng.shuffle(pairs)
    specs = []
    for start in range(0, len(pairs), max_batch):
        chunk = pairs[start : start + max_batch]
        top = max(m for m, _ in chunk)
        h = rng.randint(1, top)
        w = rng.randint(-(-top // h), -(-top // h) + 2)  # h * w >= top
        n = h * w
        counts = tuple(m for m, _ in chunk)
        ragged = any(c != n for c in counts)
        padding = rng.choice(PADDING_KINDS)
        specs.append(
            ContextSpec(
                batch=len(chunk),
                grid=(h, w),
                dim=rng.randint(1, 16),
                dtype=rng.choice(tuple(DTYPES)),
                valid_counts=counts if ragged else None,
                padding=padding if ragged else "trailing",
                budgets=tuple(k for _, k in chunk),
                features=rng.choice(FEATURE_KINDS),
                seed=rng.randint(0, 2**16),
                signals=signals,
                heads=rng.randint(0, 3) if {"attention", "cls_attention", "text_attention"} & set(signals) else 0,
                text_tokens=rng.randint(1, 4) if {"text_features", "text_attention"} & set(signals) else 2,
                text_dim=rng.randint(1, 16) if text_dim else None,
                px_per_cell=rng.choice(PX_PER_CELL) if "image" in signals else 14,
                image_range=rng.choice(IMAGE_RANGES) if "image" in signals else "unit",
            )
        )
    return specs


REAL_RATIOS = (0.1, 0.111, 0.25, 0.5)
"""Keep ratios of published settings (0.111 = 64 of 576) the real-size contexts use."""


def real_size_specs(capabilities: Capabilities | Iterable[str] | None = None, seed: int | None = 0) -> list[ContextSpec]:
    """Contexts at the token counts real models use, with the budgets where size-dependent
    bugs live (float index or ratio arithmetic, narrow integer types):

    - 576 tokens (24 x 24, CLIP-L/336): one sample per published keep ratio, plus 1 and 575;
    - 2304 tokens (48 x 48): keep 0.1 (positions past 2048: float16 is not exact there);
    - 100 tokens: every budget 11..100 (past the budget sweep's 10; k = 49, 98 break
      ``arange(0, 1, 1 / k)``);
    - an in-LLM point at 576 tokens with 300 survivors scattered (earlier-pruned padding).

    Small widths keep them cheap; dtype, feature kind and signal shapes are drawn from ``seed``
    as :func:`budget_sweep` draws them.
    """
    import random

    rng = random.Random(seed)
    signals = _needs(capabilities)
    text_dim = "text_features" in signals and not _same_space(capabilities)
    attention = {"attention", "cls_attention", "text_attention"} & set(signals)

    def spec(grid: tuple[int, int], budgets: tuple[int, ...], **kw: Any) -> ContextSpec:
        return ContextSpec(
            batch=len(budgets), grid=grid, dim=rng.randint(2, 8), dtype=rng.choice(tuple(DTYPES)),
            budgets=budgets, features=rng.choice(FEATURE_KINDS), seed=rng.randint(0, 2**16),
            signals=signals, heads=(1 if kw.get("layer") else rng.randint(0, 2)) if attention else 0,
            text_tokens=2, text_dim=rng.randint(1, 8) if text_dim else None,
            px_per_cell=rng.choice(PX_PER_CELL) if "image" in signals else 14,
            image_range=rng.choice(IMAGE_RANGES) if "image" in signals else "unit", **kw,
        )

    clip = tuple(keep_count(r, 576) for r in REAL_RATIOS) + (1, 575)
    return [
        spec((24, 24), clip),
        spec((48, 48), (keep_count(0.1, 2304),)),
        spec((10, 10), tuple(range(11, 101))),
        spec((24, 24), (keep_count(0.1, 576),) * 2, layer=2, valid_counts=(300, 300), padding="scattered"),
    ]


def prune_contexts(
    capabilities: Capabilities | Iterable[str] | None = None,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> st.SearchStrategy[PruneContext]:
    """Valid :class:`PruneContext` s (see :func:`context_specs` for the keyword options)."""
    return context_specs(capabilities, **kwargs).map(lambda spec: build_context(spec, device))


__all__ = [
    "ContextSpec",
    "DTYPES",
    "FEATURE_KINDS",
    "PADDING_KINDS",
    "IMAGE_RANGES",
    "PX_PER_CELL",
    "SWEEP_MAX_COUNT",
    "budget_sweep",
    "real_size_specs",
    "build_context",
    "context_specs",
    "image_size",
    "prune_contexts",
]
