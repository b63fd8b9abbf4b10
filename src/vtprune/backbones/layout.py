"""Token layouts of a pruned prefill, and the positions and masks that follow from one.

A *layout* is the token set of one *stage* (a run of decoder layers between prune points):
which original token sits in each slot, which slots are real, their visual ranks and their
RoPE position ids. Shapes: B samples, T slots, R rows of position ids (1 for 1-D RoPE, 3 for
M-RoPE's temporal / height / width). A sample that keeps fewer tokens than another is padded
on the left with invalid *filler* slots (``slots == -1``), so each sample's last real token
stays last. Everything here is a pure function of tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import ContractError


@dataclass(frozen=True, eq=False)
class Layout:
    """Token layout of one stage during prefill ([B, T] long / bool; positions [R, B, T]).

    Attributes:
        slots: original sequence position of each token, -1 for fillers.
        valid: False on padding and fillers.
        vis_rank: visual rank of the token in its sample, -1 for text / padding / fillers.
        original_pos: [R, B, T] position ids the unpruned model would use.
        position_ids: [R, B, T] position ids used here (original or compact).
        length: T0, the tokens of the unpruned sequence (what ``slots`` index).
        stage: prune points run so far (0: the unpruned layout).
    """

    slots: torch.Tensor
    valid: torch.Tensor
    vis_rank: torch.Tensor
    original_pos: torch.Tensor
    position_ids: torch.Tensor
    length: int
    stage: int = 0

    @property
    def visual(self) -> torch.Tensor:
        """[B, T] bool: the (kept) visual tokens."""
        return self.vis_rank >= 0


def initial_layout(valid: torch.Tensor, visual: torch.Tensor, positions: torch.Tensor) -> Layout:
    """The unpruned layout of a prefill: ``valid`` [B, T] (the attention mask), ``visual``
    [B, T] (the image tokens), ``positions`` [R, B, T]."""
    b, t = valid.shape
    vis_rank = torch.where(visual, visual.long().cumsum(dim=1) - 1, torch.full_like(visual, -1, dtype=torch.long))
    slots = torch.arange(t, device=valid.device)[None].expand(b, t)
    return Layout(slots, valid, vis_rank, positions, positions, length=t)


def last_real(valid: torch.Tensor) -> torch.Tensor:
    """[B] long: each sample's last valid slot of ``valid`` [B, T] (its newest token)."""
    t = valid.shape[1]
    return (valid.long() * torch.arange(t, device=valid.device)).argmax(dim=1)


def decode_shift(layout: Layout) -> torch.Tensor:
    """[B]: what a sample's next position id is lowered by in this layout (0 with original
    positions): original minus used position of its last real token."""
    last = last_real(layout.valid)[:, None]
    return (layout.original_pos[0].gather(1, last) - layout.position_ids[0].gather(1, last))[:, 0]


def compact_positions(original_pos: torch.Tensor, slots: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Compact position ids [R, B, T'] of a pruned layout.

    1-D RoPE: each token moves down by the tokens removed before it (survivors numbered
    contiguously; what FastV / PyramidDrop's code does). M-RoPE: the survivors of a sample
    are numbered contiguously on all three axes from its first token's position (the
    image's 2-D layout is given up, as renumbering any pruned grid must)."""
    b, t_new = slots.shape
    if original_pos.shape[0] == 1:
        kept = slots >= 0  # padding is kept (and invalid); fillers are not
        removed_before = torch.where(kept, slots - (kept.long().cumsum(dim=1) - 1), 0)
        return original_pos - removed_before[None]
    first = torch.where(valid, torch.arange(t_new, device=slots.device), t_new).argmin(dim=1)  # [B]
    base = original_pos[0].gather(1, first[:, None])  # [B, 1]
    compact = base + valid.long().cumsum(dim=1) - 1
    return compact[None].expand_as(original_pos).contiguous()


def call_positions(
    position_ids: torch.Tensor | None, rope_rows: int, b: int, t: int, start: int, dev: torch.device
) -> torch.Tensor:
    """A call's position ids as [R, B, T], R = ``rope_rows``: given ones ([B, T], [1, T],
    [R, B, T], [1, B, T] (one row for every axis, which transformers builds when ``generate``
    continues from a cache), or M-RoPE's [4, B, T] whose first row is the text position),
    else ``start + arange(T)``."""
    r = rope_rows
    if position_ids is None:
        return (torch.arange(t, device=dev) + start).view(1, 1, t).expand(r, b, t)
    pos = position_ids.to(dev)
    if pos.dim() == 3 and r == 3 and pos.shape[0] == 4:
        pos = pos[1:]  # generate's text row serves mask building only; vtprune builds its own
    if pos.dim() == 3 and pos.shape[0] == 1:
        pos = pos[0]  # one row for every axis: generate continuing from a cache (text only)
    if pos.dim() == 2:
        pos = pos[None].expand(r, -1, -1)
    if pos.dim() != 3 or pos.shape[0] != r or pos.shape[2] != t:
        want = "[B, T], [1, T] or [1, B, T]" if r == 1 else "[B, T], [1, B, T], [3, B, T] or [4, B, T]"
        raise ContractError(f"position_ids must be {want} for {t} tokens, got {tuple(position_ids.shape)}")
    return pos.expand(r, b, t)


# -- masks ------------------------------------------------------------------------------------


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, Q, K] bool -> [B, 1, Q, K] additive mask (0 where allowed, dtype min elsewhere)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def prefill_mask(valid: torch.Tensor, dtype: torch.dtype, sdpa: bool) -> torch.Tensor | None:
    """Causal + padding mask [B, 1, T, T] of a layout's ``valid`` [B, T]; None where SDPA's own
    causal kernel is exact (no padding). Padded rows see themselves (no row fully masked)."""
    if sdpa and bool(valid.all()):
        return None
    t = valid.shape[1]
    idx = torch.arange(t, device=valid.device)
    allowed = (idx[None, :, None] >= idx[None, None, :]) & valid[:, None, :]
    allowed = allowed | (idx[:, None] == idx[None, :])[None]
    return additive(allowed, dtype)


def decode_mask(key_valid: torch.Tensor, q: int, dtype: torch.dtype, sdpa: bool) -> torch.Tensor | None:
    """Mask [B, 1, q, K] of ``q`` new tokens over a stage's keys ``key_valid`` [B, K] (the new
    ones last); None where SDPA needs none (one query, every key real)."""
    if sdpa and q == 1 and bool(key_valid.all()):
        return None
    k = key_valid.shape[1]
    rows = torch.arange(q, device=key_valid.device)[:, None] + (k - q)
    cols = torch.arange(k, device=key_valid.device)[None, :]
    allowed = (cols <= rows)[None] & key_valid[:, None, :]
    allowed = allowed | (cols == rows)[None]
    return additive(allowed, dtype)


# -- row copies -------------------------------------------------------------------------------


def flat_index(index: torch.Tensor, width: int) -> torch.Tensor:
    """Per-sample indices [B, K] into rows of width ``width`` -> flat indices [B * K]."""
    offsets = torch.arange(index.shape[0], device=index.device)[:, None] * width
    return (index + offsets).reshape(-1)


def take_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, k], :]`` for x [B, T, D] and index [B, K] long -> new tensor [B, K, D].

    Same values as ``x.gather(1, index[..., None].expand(B, K, D))``, as one row copy
    (``index_select`` on the flattened rows) instead of an element-wise gather.
    """
    b, t, d = x.shape
    return x.reshape(b * t, d).index_select(0, flat_index(index, t)).view(b, index.shape[1], d)


__all__ = [
    "Layout",
    "initial_layout",
    "last_real",
    "decode_shift",
    "compact_positions",
    "call_positions",
    "additive",
    "prefill_mask",
    "decode_mask",
    "flat_index",
    "take_rows",
]
