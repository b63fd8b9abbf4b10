"""What a pruned forward kept, per prune point — enough to find any token after pruning.

Index spaces: *visual index* j in 0..N-1 is a token's place in the image's raster-ordered
visual grid; *original position* t is a token's index in the unpruned input sequence (what
``input_ids`` indexes); *pruned position* is its index in the shorter sequence the decoder
layers after a prune point (and the returned logits / hidden states) see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class PruneRecord:
    """One prune point of one forward pass (prefill).

    Attributes:
        layer: decoder layer the point runs before (None = before the LLM).
        indices: [M, K] long, kept tokens of each of the call's M images, as indices into
            the image's own raster-ordered grid (ascending; -1 padding past ``counts``). One
            image per sample (LLaVA): M = B.
        counts: [M] long, visual tokens each image keeps.
        original_count: N, cells of the images' common grid (LLaVA: visual tokens per
            sample); images of different sizes: the canvas ``grids`` fit in.
        kept_positions: [B, T'] long, original position of every token that survives this
            point, in sequence order (the layout of the layers after it); -1 for *filler*
            slots, which pad a sample that keeps fewer tokens than another (at its front).
        new_index: [B, T] long, original position -> pruned position after this point, -1 for
            tokens dropped here or earlier.
        position_ids: [B, T'] long (M-RoPE: [3, B, T']), the RoPE position ids the layers
            after this point use.
        seconds: wall-clock time of the pruning step (context, strategy, gather).
        image_sample: [M] long, the sample each image belongs to (None: image m is sample m).
        grids: [M, 2] long, each image's own token grid (h, w) (None: the model's one grid).
    """

    layer: int | None
    indices: torch.Tensor
    counts: torch.Tensor
    original_count: int
    kept_positions: torch.Tensor
    new_index: torch.Tensor
    position_ids: torch.Tensor
    seconds: float
    image_sample: torch.Tensor | None = None
    grids: torch.Tensor | None = None

    @property
    def removed(self) -> torch.Tensor:
        """[B] long: tokens removed from each sample up to and including this point."""
        return self.new_index.shape[1] - (self.kept_positions >= 0).sum(dim=1)

    def map_position(self, original: int | torch.Tensor) -> torch.Tensor:
        """Pruned position after this point of original position(s) ``original``, per sample.

        ``original`` is an int or a [B] / [B, M] long tensor of original positions (positions
        past the prompt — generated tokens — follow the pruned prompt's T' slots). Returns
        [B] (or [B, M]) long, -1 where the token was pruned.
        """
        b, t = self.new_index.shape
        pos = torch.as_tensor(original, dtype=torch.long, device=self.new_index.device)
        squeeze = pos.dim() < 2
        pos = pos.expand(b).unsqueeze(1) if pos.dim() < 2 else pos
        if bool((pos < 0).any()):
            raise ValueError(f"original positions must be >= 0, got {pos.tolist()}")
        inside = pos < t
        mapped = self.new_index.gather(1, pos.clamp(max=t - 1))
        after = pos - (t - self.kept_positions.shape[1])  # generated tokens follow the T' slots
        out = torch.where(inside, mapped, after)
        return out.squeeze(1) if squeeze else out


    def take(self, values: torch.Tensor, fill: int | float = -100) -> torch.Tensor:
        """Per-token ``values`` of the unpruned sequence in this point's layout: [B, T, ...]
        -> [B, T', ...], slot j holding ``values[b, kept_positions[b, j]]`` and ``fill`` on
        filler slots (``kept_positions == -1``, in samples that keep fewer tokens than
        another). The labels of a pruned forward: ``record.take(labels)`` (``fill`` -100 is the
        ``ignore_index`` of transformers' losses) lines up with the logits position by position,
        for any batch, ragged ones included; shift it as the model's loss does."""
        b, t = self.new_index.shape
        if values.shape[:2] != (b, t):
            raise ValueError(
                f"values must be [B, T, ...] = [{b}, {t}, ...] (the unpruned sequence), got "
                f"{tuple(values.shape)}"
            )
        kept = self.kept_positions.to(values.device)
        index = kept.clamp(min=0).view(*kept.shape, *[1] * (values.dim() - 2))
        taken = values.gather(1, index.expand(-1, -1, *values.shape[2:]))
        filler = (kept < 0).view_as(index)
        return taken.masked_fill(filler, fill)


def summarize(records: list[PruneRecord]) -> list[dict[str, object]]:
    """Plain-Python summary (layer, kept per sample, seconds) for logs and reports."""
    return [
        {"layer": r.layer, "kept": r.counts.tolist(), "of": r.original_count, "seconds": r.seconds}
        for r in records
    ]


__all__ = ["PruneRecord", "summarize"]
