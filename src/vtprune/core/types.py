"""Data passed between the three stages of a pruning decision: score, allocate, select.

Shapes: B samples, N visual tokens per sample on an (h, w) grid (N == h * w), D feature
channels, R regions. Every record checks itself on construction and raises
:class:`~vtprune.core.errors.ContractError` saying what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .budget import Keep, budgets
from .errors import ContractError

SIGNALS = ("image", "attention", "cls_attention", "text_features", "text_attention")
"""Optional context signals a stage may declare it needs."""


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise ContractError(message)


def _check_tensor(name: str, t: Any, dims: int, shape: tuple[int | None, ...] = ()) -> None:
    _expect(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _expect(t.dim() == dims, f"{name} must have {dims} dims, got shape {tuple(t.shape)}")
    for axis, size in enumerate(shape):
        if size is not None:
            _expect(
                t.shape[axis] == size,
                f"{name} must have size {size} on axis {axis}, got shape {tuple(t.shape)}",
            )


def grid_blocks(grids: torch.Tensor, grid: tuple[int, int], device: Any = None) -> torch.Tensor:
    """[B, H * W] bool: True on the top-left h_b x w_b block of an H x W canvas, for
    ``grids`` [B, 2] (see :attr:`PruneContext.grids`)."""
    h, w = grid
    g = grids.to(device)
    rows = torch.arange(h, device=device)[None, :, None] < g[:, 0, None, None]
    cols = torch.arange(w, device=device)[None, None, :] < g[:, 1, None, None]
    return (rows & cols).reshape(g.shape[0], h * w)


@dataclass(frozen=True, eq=False)
class PruneContext:
    """Everything a stage may read. Stages must never modify any tensor in it.

    Attributes:
        features: visual token features [B, N, D], floating point.
        grid: token grid (h, w) with h * w == N, raster order (row-major).
        budget: tokens each sample keeps [B] (long, CPU), 0 <= budget <= valid count.
        valid: [B, N] bool, False for padding tokens of ragged batches (all True if None).
        image: the image the vision encoder saw [B, 3, H, W] (float, any range).
        attention: query->visual attention [B, N] or per head [B, heads, N].
        cls_attention: [CLS]->visual attention [B, N] or [B, heads, N].
        text_features: text token features [B, T, D_text] (adapters: the instruction, see
            docs/adapters.md).
        layer: decoder layer index at which pruning happens (None = before the LLM).
        generator: random generator for stochastic stages (optional).
        original_count: tokens per sample before any pruning (for in-LLM schedules whose
            budgets are fractions of the original count); defaults to N.
        text_valid: [B, T] bool, False on padding rows of ``text_features`` and
            ``text_attention`` (samples with instructions of different lengths); None = every
            row is real.
        text_attention: [B, heads, T, N] float, the attention probabilities of the
            instruction's rows (the rows of ``text_features``, same T and order) to the visual
            tokens at the prune layer (adapters: recomputed with that layer's own norm, q/k
            projections and RoPE, softmax in fp32 over every key the row sees, so a row sums
            to at most 1 over the visual tokens; zero on pruned tokens). Finite on real rows;
            padding rows (``text_valid`` False) may hold anything, NaN included.
        grids: [B, 2] long on the CPU, each row's own token grid (h_b, w_b) when the rows are
            images of different sizes (dynamic-resolution adapters): ``grid`` (H, W) is then
            the batch's *canvas*, row b's tokens fill the top-left h_b x w_b block of it in
            raster order (canvas index i * W + j), every other token is invalid, and ``image``
            holds row b's pixels in the same top-left fraction of its canvas (zeros elsewhere).
            None = every row uses the whole grid. Stages that do not declare
            ``Capabilities.row_grids`` never see it: :class:`~vtprune.core.Strategy` runs them
            on each row's own grid (:mod:`vtprune.core.canvas`).
    """

    features: torch.Tensor
    grid: tuple[int, int]
    budget: torch.Tensor
    valid: torch.Tensor | None = None
    image: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    cls_attention: torch.Tensor | None = None
    text_features: torch.Tensor | None = None
    layer: int | None = None
    generator: torch.Generator | None = None
    original_count: int | None = None
    text_valid: torch.Tensor | None = None
    grids: torch.Tensor | None = None
    text_attention: torch.Tensor | None = None

    def __post_init__(self) -> None:
        f = self.features
        _check_tensor("features", f, 3)
        _expect(f.is_floating_point(), f"features must be floating point, got {f.dtype}")
        b, n, _ = f.shape
        _expect(
            isinstance(self.grid, tuple)
            and len(self.grid) == 2
            and all(isinstance(v, int) and v > 0 for v in self.grid),
            f"grid must be a tuple (h, w) of positive ints, got {self.grid!r}",
        )
        h, w = self.grid
        _expect(h * w == n, f"grid {h}x{w} has {h * w} cells but features have N={n} tokens")
        _check_tensor("budget", self.budget, 1, (b,))
        _expect(
            self.budget.dtype == torch.long,
            f"budget must be a long tensor, got {self.budget.dtype}; build it with "
            "PruneContext.create(..., keep=...) or vtprune.core.budgets()",
        )
        if self.valid is not None:
            _check_tensor("valid", self.valid, 2, (b, n))
            _expect(self.valid.dtype == torch.bool, f"valid must be bool, got {self.valid.dtype}")
        counts = self.valid_counts
        bad = (self.budget < 0) | (self.budget > counts)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ContractError(
                f"budget of sample {i} is {int(self.budget[i])} but it has "
                f"{int(counts[i])} valid tokens; budgets must lie in [0, valid count]"
            )
        if self.image is not None:
            _check_tensor("image", self.image, 4, (b, None))
            _expect(
                self.image.shape[1] in (1, 3),
                f"image must be [B, 3, H, W] (or 1 channel), got {tuple(self.image.shape)}",
            )
        for name in ("attention", "cls_attention"):
            a = getattr(self, name)
            if a is not None:
                _expect(isinstance(a, torch.Tensor), f"{name} must be a torch.Tensor")
                _expect(
                    a.dim() in (2, 3) and a.shape[0] == b and a.shape[-1] == n,
                    f"{name} must be [B={b}, N={n}] or [B, heads, N], got {tuple(a.shape)}",
                )
                _expect(
                    bool(torch.isfinite(a).all()), f"{name} contains NaN or inf values"
                )
        if self.text_features is not None:
            _check_tensor("text_features", self.text_features, 3, (b,))
        if self.text_valid is not None:
            _expect(
                self.text_features is not None or self.text_attention is not None,
                "text_valid is given without text_features or text_attention",
            )
            rows = self.text_features if self.text_features is not None else self.text_attention
            assert rows is not None
            if rows is self.text_attention:
                _check_tensor("text_attention", rows, 4, (b, None, None, n))
            shape = (rows.shape[0], rows.shape[1] if rows is self.text_features else rows.shape[2])
            _check_tensor("text_valid", self.text_valid, 2, shape)
            _expect(self.text_valid.dtype == torch.bool, f"text_valid must be bool, got {self.text_valid.dtype}")
        if self.text_attention is not None:
            self._check_text_attention()
        if self.original_count is not None:
            _expect(
                self.original_count >= n,
                f"original_count={self.original_count} is smaller than N={n}",
            )
        if self.grids is not None:
            self._check_grids()

    def _check_text_attention(self) -> None:
        a = self.text_attention
        b, n = self.batch_size, self.num_tokens
        _check_tensor("text_attention", a, 4, (b, None, None, n))
        assert a is not None
        _expect(a.is_floating_point(), f"text_attention must be floating point, got {a.dtype}")
        rows = self.text_features if self.text_features is not None else self.text_valid
        if rows is not None:
            _expect(
                a.shape[2] == rows.shape[1],
                f"text_attention [B, heads, T, N] must have the T={rows.shape[1]} rows of "
                f"text_features / text_valid, got shape {tuple(a.shape)}",
            )
        real = a if self.text_valid is None else a[self.text_valid.to(a.device)[:, None, :, None].expand_as(a)]
        _expect(
            bool(torch.isfinite(real).all()),
            "text_attention contains NaN or inf values on real instruction rows (text_valid)",
        )

    def _check_grids(self) -> None:
        g = self.grids
        _check_tensor("grids", g, 2, (self.batch_size, 2))
        assert g is not None
        _expect(
            g.dtype == torch.long and g.device.type == "cpu",
            f"grids must be a long tensor on the CPU, got {g.dtype} on {g.device}",
        )
        h, w = self.grid
        bad = (g < 1).any(dim=1) | (g[:, 0] > h) | (g[:, 1] > w)
        _expect(
            not bool(bad.any()),
            f"grids must hold (h_b, w_b) with 1 <= h_b <= {h} and 1 <= w_b <= {w} (the canvas "
            f"grid); got {g[bad].tolist()} for row(s) {bad.nonzero().flatten().tolist()}",
        )
        outside = self.valid_mask() & ~grid_blocks(g, self.grid, self.features.device)
        if bool(outside.any()):
            row = int(outside.any(dim=1).nonzero()[0, 0])
            raise ContractError(
                f"row {row} has valid tokens outside its own {g[row, 0]}x{g[row, 1]} grid block; "
                "with grids, a row's tokens fill the top-left block of the canvas and every other "
                "token must be invalid (valid=False)"
            )

    @classmethod
    def create(
        cls,
        features: torch.Tensor,
        grid: tuple[int, int] | None = None,
        keep: Keep | torch.Tensor = 1.0,
        valid: torch.Tensor | None = None,
        **signals: Any,
    ) -> PruneContext:
        """Build a context from a keep ratio or count (see :func:`vtprune.core.keep_count`).

        ``grid`` defaults to the square grid when N is a perfect square. A ratio is applied to
        each sample's valid token count. With ``grids`` and no ``valid``, each row's own block
        is its valid tokens.
        """
        if not isinstance(features, torch.Tensor) or features.dim() != 3:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else None
            raise ContractError(f"features must be a [B, N, D] tensor, got shape {shape}")
        n = features.shape[1]
        if grid is None:
            side = int(round(n**0.5))
            if side * side != n:
                raise ContractError(
                    f"N={n} tokens is not a square grid; pass grid=(h, w) with h * w == N"
                )
            grid = (side, side)
        grids = signals.get("grids")
        if valid is None and grids is not None:
            valid = grid_blocks(grids, grid, features.device)
        if valid is None:
            counts = torch.full((features.shape[0],), n, dtype=torch.long)
        else:
            _check_tensor("valid", valid, 2, (features.shape[0], n))
            counts = valid.sum(dim=1).cpu()
        h, w = grid
        return cls(
            features=features, grid=(int(h), int(w)), budget=budgets(keep, counts), valid=valid, **signals
        )

    @property
    def batch_size(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[1])

    @property
    def valid_counts(self) -> torch.Tensor:
        """Valid tokens per sample [B] (long, CPU)."""
        if self.valid is None:
            return torch.full((self.batch_size,), self.num_tokens, dtype=torch.long)
        return self.valid.sum(dim=1).cpu().long()

    def valid_mask(self) -> torch.Tensor:
        """[B, N] bool on the features' device (all True when ``valid`` is None)."""
        if self.valid is None:
            return torch.ones(self.features.shape[:2], dtype=torch.bool, device=self.features.device)
        return self.valid

    def sample(self, i: int) -> PruneContext:
        """The context of sample ``i`` alone (batch of one), sharing tensors, not copying.

        ``i`` counts from the end when negative, as for a list."""
        b = self.batch_size
        if not -b <= i < b:
            raise IndexError(f"sample {i} is out of range for a batch of {b}")
        i %= b

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[i : i + 1]

        return replace(
            self,
            features=self.features[i : i + 1],
            budget=self.budget[i : i + 1],
            valid=pick(self.valid),
            image=pick(self.image),
            attention=pick(self.attention),
            cls_attention=pick(self.cls_attention),
            text_features=pick(self.text_features),
            text_valid=pick(self.text_valid),
            grids=pick(self.grids),
            text_attention=pick(self.text_attention),
        )

    @property
    def row_grids(self) -> torch.Tensor:
        """Each row's own grid [B, 2] (long, CPU): ``grids``, or ``grid`` for every row."""
        if self.grids is not None:
            return self.grids
        return torch.tensor([self.grid], dtype=torch.long).expand(self.batch_size, 2)

    def with_budget(self, keep: Keep | torch.Tensor) -> PruneContext:
        """The same context with a new budget."""
        return replace(self, budget=budgets(keep, self.valid_counts))

    def to(self, device: torch.device | str) -> PruneContext:
        """A copy with every tensor signal on ``device``; the budget and grids stay on the host."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            features=self.features.to(device),
            valid=move(self.valid),
            image=move(self.image),
            attention=move(self.attention),
            cls_attention=move(self.cls_attention),
            text_features=move(self.text_features),
            text_valid=move(self.text_valid),
            text_attention=move(self.text_attention),
        )


@dataclass(frozen=True)
class Invariant:
    """One value invariant with one body: ``holds`` is a bool tensor (any shape, on the
    device), True where it holds; ``message(*where)`` says what is wrong at the first element
    where it does not, built on the host only on the failure path."""

    holds: torch.Tensor
    message: Callable[..., str]


def verdict(invariants: Sequence[Invariant], device: torch.device | str) -> torch.Tensor:
    """All ``invariants`` as one 0-d bool tensor on ``device`` (no host read)."""
    ok = torch.ones((), dtype=torch.bool, device=device)
    for inv in invariants:
        ok = ok & inv.holds.all().to(device)
    return ok


def raise_first(invariants: Sequence[Invariant]) -> None:
    """Raise :class:`ContractError` with the message of the first broken invariant, at its
    first failing element; return when all hold (host reads: the failure path)."""
    for inv in invariants:
        if not bool(inv.holds.all()):
            where = (int(v) for v in (~inv.holds).nonzero()[0])
            raise ContractError(inv.message(*where))


def scores_verdict(scores: Any, ctx: PruneContext) -> torch.Tensor:
    """The structural checks of :func:`check_scores` (raised at once, no host read) and its
    value invariant (finite on valid tokens) as a 0-d bool tensor for the caller to read."""
    _check_tensor("scores", scores, 2, (ctx.batch_size, ctx.num_tokens))
    _expect(scores.is_floating_point(), f"scores must be floating point, got {scores.dtype}")
    return (torch.isfinite(scores) | ~ctx.valid_mask().to(scores.device)).all()


def check_scores(scores: Any, ctx: PruneContext) -> torch.Tensor:
    """Check a scorer's output: a finite floating [B, N] tensor on the features' device."""
    if bool(scores_verdict(scores, ctx)):  # one host read when the scores are right
        return scores
    finite = torch.isfinite(scores) | ~ctx.valid_mask().to(scores.device)
    b, j = (int(v) for v in (~finite).nonzero()[0])
    raise ContractError(
        f"scores must be finite on valid tokens; sample {b}, token {j} is "
        f"{float(scores[b, j])}. Compute the scores in float32 (e.g. from "
        "ctx.features.float()): float16/bfloat16 arithmetic overflowing to inf is the usual "
        "cause. Only then handle values that are legitimately NaN/inf (e.g. torch.nan_to_num)."
    )


@dataclass(frozen=True, eq=False)
class Allocation:
    """How many tokens each sample keeps, optionally split over regions.

    Attributes:
        budget: [B] long, tokens kept per sample.
        regions: [B, N] long region id per token in 0..R-1, -1 for invalid tokens; or None.
        quotas: [B, R] long tokens kept per region (0 for ids a sample does not use).
            Quotas are >= 0, never exceed the region's size, and sum to the sample's budget.

    Construction checks shapes and dtypes only (no host read); the value invariants are
    checked where a stage hands the allocation on, by :func:`check_allocation`.
    """

    budget: torch.Tensor
    regions: torch.Tensor | None = None
    quotas: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_tensor("allocation.budget", self.budget, 1)
        _expect(self.budget.dtype == torch.long, "allocation.budget must be a long tensor")
        _expect(
            (self.regions is None) == (self.quotas is None),
            "allocation.regions and allocation.quotas must be given together",
        )
        if self.regions is None or self.quotas is None:
            return
        b = self.budget.shape[0]
        _check_tensor("allocation.regions", self.regions, 2, (b,))
        _check_tensor("allocation.quotas", self.quotas, 2, (b,))
        _expect(self.regions.dtype == torch.long, "allocation.regions must be a long tensor")
        _expect(self.quotas.dtype == torch.long, "allocation.quotas must be a long tensor")

    def invariants(self) -> list[Invariant]:
        """The value invariants (region ids in range, quotas >= 0, within their region's size,
        summing to the budget), each with its message; empty without regions."""
        if self.regions is None or self.quotas is None:
            return []
        regions, quotas, budget = self.regions, self.quotas, self.budget
        r = quotas.shape[1]
        in_range = (regions >= -1) & (regions < r)                          # [B, N]
        safe = torch.where(in_range, regions, -1)
        sizes = torch.zeros(quotas.shape[0], r + 1, dtype=torch.long, device=regions.device)
        sizes = sizes.scatter_add_(1, safe + 1, torch.ones_like(safe))[:, 1:].to(quotas.device)
        totals = quotas.sum(dim=1)                                          # [B]
        return [
            Invariant(in_range, lambda i, j: (
                f"region ids must lie in [-1, {r - 1}] for quotas with R={r} columns; sample {i}, "
                f"token {j} has region {int(regions[i, j])}")),
            Invariant(quotas >= 0, lambda i, k: (
                f"quotas must be non-negative; region {k} of sample {i} has {int(quotas[i, k])}")),
            Invariant(quotas <= sizes, lambda i, k: (
                f"quota {int(quotas[i, k])} of region {k} in sample {i} exceeds its size "
                f"{int(sizes[i, k])}")),
            Invariant(totals == budget.to(quotas.device), lambda i: (
                f"quotas of sample {i} sum to {int(totals[i])} but its budget is {int(budget[i])}; "
                "quotas must sum exactly to the budget")),
        ]

    def explain(self) -> None:
        """Raise :class:`ContractError` naming the first broken value invariant; return when
        all hold. Host reads: call it on the failure path (see :func:`check_allocation`)."""
        raise_first(self.invariants())

    def region_sizes(self) -> torch.Tensor:
        """Tokens per region [B, R] (long)."""
        assert self.regions is not None and self.quotas is not None
        b, r = self.quotas.shape
        sizes = torch.zeros(b, r + 1, dtype=torch.long, device=self.regions.device)
        sizes.scatter_add_(1, self.regions + 1, torch.ones_like(self.regions))
        return sizes[:, 1:].to(self.quotas.device)


PAD_INDEX = -1
"""Fill value of :attr:`Selection.indices` past a sample's budget in ragged batches."""


@dataclass(frozen=True, eq=False)
class Selection:
    """The tokens each sample keeps.

    Attributes:
        indices: [B, K] long, K = max budget. Row b holds ``counts[b]`` unique token indices
            sorted ascending, then :data:`PAD_INDEX` (-1) padding.
        counts: [B] long, tokens kept per sample.
        features: optional replacement features [B, K, D] for the kept slots (merging
            methods); None means "use the original features of the kept tokens".
    """

    indices: torch.Tensor
    counts: torch.Tensor
    features: torch.Tensor | None = None

    def __post_init__(self) -> None:
        _check_tensor("selection.indices", self.indices, 2)
        _expect(self.indices.dtype == torch.long, f"selection.indices must be long, got {self.indices.dtype}")
        _check_tensor("selection.counts", self.counts, 1, (self.indices.shape[0],))
        _expect(self.counts.dtype == torch.long, f"selection.counts must be long, got {self.counts.dtype}")
        if self.features is not None:
            _check_tensor("selection.features", self.features, 3, self.indices.shape)

    @classmethod
    def from_lists(
        cls, kept: list[torch.Tensor], features: list[torch.Tensor] | None = None, device: Any = None
    ) -> Selection:
        """Pack per-sample 1-D index tensors (sorted here) into a padded selection."""
        counts = torch.tensor([len(k) for k in kept], dtype=torch.long)
        width = int(counts.max()) if len(kept) else 0
        dev = device if device is not None else (kept[0].device if kept else None)
        out = torch.full((len(kept), width), PAD_INDEX, dtype=torch.long, device=dev)
        feats = None
        order = []
        for b, k in enumerate(kept):
            sorted_k, perm = torch.sort(k.long())
            order.append(perm)
            out[b, : len(k)] = sorted_k
        if features is not None:
            d = features[0].shape[-1]
            feats = torch.zeros(len(kept), width, d, dtype=features[0].dtype, device=dev)
            for b, (f, perm) in enumerate(zip(features, order)):
                feats[b, : len(perm)] = f[perm]
        return cls(indices=out, counts=counts, features=feats)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, features: torch.Tensor | None = None) -> Selection:
        """Selection of the True entries of a [B, N] bool mask, in ascending order.

        ``features`` [B, N, D], if given, are gathered at the kept slots as replacements.
        """
        _check_tensor("mask", mask, 2)
        b, n = mask.shape
        counts = mask.sum(dim=1)
        width = int(counts.max()) if b else 0
        pos = torch.arange(n, device=mask.device).expand(b, n)
        order = torch.where(mask, pos, pos + n).argsort(dim=1)[:, :width]
        real = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
        indices = torch.where(real, order, torch.full_like(order, PAD_INDEX))
        feats = None
        if features is not None:
            feats = features.gather(1, order[..., None].expand(-1, -1, features.shape[-1]))
            feats = feats * real[..., None].to(feats.dtype)
        return cls(indices=indices, counts=counts.cpu().long(), features=feats)

    @property
    def kept_mask(self) -> torch.Tensor:
        """[B, K] bool, True where ``indices`` holds a real index."""
        k = self.indices.shape[1]
        return torch.arange(k, device=self.indices.device)[None, :] < self.counts.to(self.indices.device)[:, None]

    def per_sample(self) -> list[torch.Tensor]:
        """Kept indices of each sample as a list of 1-D tensors."""
        return [self.indices[b, : int(c)] for b, c in enumerate(self.counts.tolist())]

    def token_mask(self, num_tokens: int) -> torch.Tensor:
        """[B, N] bool, True for kept tokens."""
        mask = torch.zeros(self.indices.shape[0], num_tokens + 1, dtype=torch.bool, device=self.indices.device)
        mask.scatter_(1, torch.where(self.kept_mask, self.indices, num_tokens), True)
        return mask[:, :num_tokens]


def selection_verdict(sel: Any, ctx: PruneContext, alloc: Allocation | None = None) -> torch.Tensor:
    """The structural checks of :func:`check_selection` (raised at once: type, rows, counts
    equal to the budget, width, merged features) and its index invariants as one 0-d bool
    tensor for the caller to read."""
    _expect(isinstance(sel, Selection), f"a selector must return a Selection, got {type(sel).__name__}")
    b = ctx.batch_size
    _expect(sel.indices.shape[0] == b, f"selection has {sel.indices.shape[0]} rows for B={b} samples")
    budget = ctx.budget if alloc is None else alloc.budget
    counts = sel.counts.cpu()
    if not torch.equal(counts, budget.cpu()):
        i = int((counts != budget.cpu()).nonzero()[0, 0])
        raise ContractError(
            f"sample {i} kept {int(counts[i])} tokens but its budget is {int(budget[i])}"
        )
    width = int(budget.max()) if b else 0
    _expect(
        sel.indices.shape[1] == width,
        f"selection.indices must be [B, max budget]=[{b}, {width}], got {tuple(sel.indices.shape)}",
    )
    _check_merged(sel, ctx)
    return verdict(selection_invariants(sel, ctx, alloc), sel.indices.device)


def check_selection(sel: Any, ctx: PruneContext, alloc: Allocation | None = None) -> Selection:
    """Check a selector's output against the context (and the allocation's quotas).

    Raises :class:`ContractError` naming the first broken invariant: count equals budget,
    indices in range, valid, unique, sorted ascending, padding is -1, quotas respected.
    """
    if not bool(selection_verdict(sel, ctx, alloc)):  # one host read when the selection is right
        raise_first(selection_invariants(sel, ctx, alloc))
    return _check_merged(sel, ctx)


def selection_invariants(sel: Selection, ctx: PruneContext, alloc: Allocation | None) -> list[Invariant]:
    """The index invariants of a selection, each with its message (where and what)."""
    idx, n = sel.indices, ctx.num_tokens
    real = sel.kept_mask                                                     # [B, K]
    counts = sel.counts
    in_range = (idx >= 0) & (idx < n)
    valid = ctx.valid_mask().to(idx.device)
    safe = torch.where(real & in_range, idx, n)
    kept = torch.zeros(idx.shape[0], n + 1, dtype=torch.bool, device=idx.device).scatter_(1, safe, True)[:, :n]

    def unsorted(i: int, j: int) -> str:
        j += 1  # column j compares slot j + 1 with slot j
        kind = "duplicate" if int(idx[i, j]) == int(idx[i, j - 1]) else "unsorted"
        return (f"{_at(idx, i, j)} after {int(idx[i, j - 1])} (sample {i}): kept indices must be "
                f"unique and sorted ascending ({kind}: {idx[i, : int(counts[i])].tolist()[:20]}...)")

    out = [
        Invariant(real | (idx == PAD_INDEX), lambda i, j: (
            f"{_at(idx, i, j)}, past sample {i}'s count {int(counts[i])}: padding past a "
            "sample's count must be -1")),
        Invariant(~real | in_range, lambda i, j: (
            f"{_at(idx, i, j)} (sample {i}): kept indices must lie in [0, {n - 1}]")),
        Invariant(~real[:, 1:] | (idx[:, 1:] > idx[:, :-1]), unsorted),
        Invariant(~(kept & ~valid), lambda i, t: (
            f"selection.indices[{i}, {int((idx[i] == t).nonzero()[0, 0])}] = {t} (sample {i}): a "
            f"kept index points at an invalid (padding) token (ctx.valid[{i}, {t}] is False)")),
    ]
    if alloc is not None and alloc.regions is not None and alloc.quotas is not None:
        quotas = alloc.quotas.to(kept.device)
        r = quotas.shape[1]
        regions = alloc.regions.to(kept.device)
        regions = torch.where((regions >= -1) & (regions < r), regions, -1)  # broken ids: the allocation's check
        got = torch.zeros(idx.shape[0], r + 1, dtype=torch.long, device=kept.device)
        got = got.scatter_add_(1, regions + 1, kept.long())[:, 1:]
        out.append(Invariant(got == quotas, lambda i, k: (
            f"sample {i} kept {int(got[i, k])} tokens in region {k} but its quota is {int(quotas[i, k])}")))
    return out


def _at(idx: torch.Tensor, i: int, j: int) -> str:
    """``"selection.indices[i, j] = v"``: where a selection is wrong, and what it holds there."""
    return f"selection.indices[{i}, {j}] = {int(idx[i, j])}"


def _check_merged(sel: Selection, ctx: PruneContext) -> Selection:
    if sel.features is not None:
        f = sel.features
        _expect(
            f.shape[2] == ctx.features.shape[2] and f.dtype == ctx.features.dtype,
            f"selection.features must be [B, K, {ctx.features.shape[2]}] of dtype "
            f"{ctx.features.dtype}, got {tuple(f.shape)} {f.dtype}",
        )
    return sel


def allocation_verdict(alloc: Any, ctx: PruneContext) -> torch.Tensor:
    """The structural checks of :func:`check_allocation` (raised at once) and its value
    invariants as one 0-d bool tensor for the caller to read."""
    _expect(isinstance(alloc, Allocation), f"an allocator must return an Allocation, got {type(alloc).__name__}")
    _expect(
        torch.equal(alloc.budget.cpu(), ctx.budget.cpu()),
        f"allocation budget {alloc.budget.tolist()} differs from the context budget {ctx.budget.tolist()}",
    )
    if alloc.regions is None or alloc.quotas is None:
        return torch.ones((), dtype=torch.bool)
    _expect(
        tuple(alloc.regions.shape) == (ctx.batch_size, ctx.num_tokens),
        f"allocation.regions must be [B, N]=[{ctx.batch_size}, {ctx.num_tokens}]",
    )
    valid = ctx.valid_mask().to(alloc.regions.device)
    on_valid = torch.where(valid, alloc.regions >= 0, alloc.regions == -1).all()
    return verdict(alloc.invariants(), alloc.quotas.device) & on_valid.to(alloc.quotas.device)


def check_allocation(alloc: Any, ctx: PruneContext) -> Allocation:
    """Check an allocator's output: an :class:`Allocation` whose budget equals the context's,
    whose regions are -1 exactly on invalid tokens and whose quotas hold (:meth:`Allocation.explain`)."""
    if bool(allocation_verdict(alloc, ctx)):  # one host read when the allocation is right
        return alloc
    alloc.explain()
    raise ContractError("allocation.regions must be -1 exactly on invalid tokens and >= 0 on valid ones")


__all__ = [
    "SIGNALS",
    "PAD_INDEX",
    "PruneContext",
    "Allocation",
    "Selection",
    "check_scores",
    "check_allocation",
    "allocation_verdict",
    "scores_verdict",
    "selection_verdict",
    "check_selection",
]
