"""Where each visual token of a batch lives once its images become rows of a pruning context.

Pruning acts per image: the M images of a model call (one per prompt for LLaVA; any number,
of any grid size, for Qwen2-VL) are the M rows of one :class:`~vtprune.core.PruneContext`.
Images of different sizes share a *canvas* (the largest grid's height and width), each in the
top-left block of its row (``PruneContext.grids``, see :mod:`vtprune.core.canvas`).

Index spaces: sample b's visual tokens in sequence order have *visual ranks* 0..V_b-1
(``Layout.vis_rank`` of the decoder); image m's token (i, j) has *image index* i * w_m + j and
*canvas index* i * W + j on the H x W canvas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.budget import Keep, keep_count
from ..core.errors import ContractError


@dataclass(frozen=True, eq=False)
class ImageRows:
    """The images of one model call as context rows.

    Attributes:
        sample: [M] long (CPU), the sample each image belongs to, non-decreasing.
        grids: [M, 2] long (CPU), each image's own token grid (h_m, w_m).
        canvas: (H, W), the largest height and width over the images.
        vis_row: [B, V] long on the model's device: the image row of sample b's r-th visual
            token (V = the largest visual count of a sample; 0 past a sample's count).
        vis_cell: [B, V] long, that token's canvas index.
    """

    sample: torch.Tensor
    grids: torch.Tensor
    canvas: tuple[int, int]
    vis_row: torch.Tensor
    vis_cell: torch.Tensor

    @classmethod
    def build(
        cls, grids: torch.Tensor, sample: torch.Tensor, visual_counts: torch.Tensor, device: torch.device
    ) -> ImageRows:
        """Rows of images ``grids`` [M, 2] in sequence order, owned by ``sample`` [M], for a
        batch whose samples hold ``visual_counts`` [B] visual tokens (all CPU long tensors).
        Raises :class:`ContractError` when a sample's tokens are not its images' tokens."""
        grids, sample, counts = grids.long().cpu(), sample.long().cpu(), visual_counts.long().cpu()
        b, m = counts.shape[0], grids.shape[0]
        areas = grids[:, 0] * grids[:, 1]  # [M]
        owned = torch.zeros(b, dtype=torch.long).index_add_(0, sample, areas)
        if m and bool((sample[1:] < sample[:-1]).any()) or not torch.equal(owned, counts):
            raise ContractError(
                f"the prompts hold {counts.tolist()} image tokens per sample, but their images "
                f"have {owned.tolist()} tokens ({grids.tolist()} grids); every image needs "
                "exactly h * w placeholder tokens in its own prompt, in image order"
            )
        canvas = (int(grids[:, 0].max()), int(grids[:, 1].max())) if m else (1, 1)
        image = torch.repeat_interleave(torch.arange(m), areas)  # [V_total] image of each token
        start = torch.cumsum(areas, 0) - areas
        within = torch.arange(image.shape[0]) - start[image]  # image index
        w = grids[image, 1]
        cell = (within // w) * canvas[1] + within % w
        owner = sample[image]
        rank = torch.arange(image.shape[0]) - (torch.cumsum(counts, 0) - counts)[owner]
        width = max(1, int(counts.max()) if b else 1)
        vis_row = torch.zeros(b, width, dtype=torch.long)
        vis_cell = torch.zeros(b, width, dtype=torch.long)
        vis_row[owner, rank] = image
        vis_cell[owner, rank] = cell
        return cls(sample, grids, canvas, vis_row.to(device), vis_cell.to(device))

    @classmethod
    def one_per_sample(cls, batch: int, grid: tuple[int, int], device: torch.device) -> ImageRows:
        """One image of ``grid`` per sample (LLaVA)."""
        n = grid[0] * grid[1]
        grids = torch.tensor([grid], dtype=torch.long).expand(batch, 2)
        return cls.build(grids, torch.arange(batch), torch.full((batch,), n), device)

    @property
    def count(self) -> int:
        """M, the number of images."""
        return int(self.grids.shape[0])

    @property
    def areas(self) -> list[int]:
        """Tokens of each image (host ints)."""
        return (self.grids[:, 0] * self.grids[:, 1]).tolist()

    @property
    def uniform(self) -> bool:
        """True when every image fills the whole canvas (no ``PruneContext.grids`` needed)."""
        return bool((self.grids == torch.tensor(self.canvas)).all())

    def first_of_sample(self) -> torch.Tensor:
        """[B'] long (CPU), indexed by sample: the row of each sample's first image (rows of a
        sample are consecutive), so ``m - first_of_sample()[sample[m]]`` is image m's index
        within its prompt. B' = the largest sample index + 1; samples without images: M."""
        size = int(self.sample.max()) + 1 if self.count else 0
        first = torch.full((size,), self.count, dtype=torch.long)
        return first.scatter_reduce(0, self.sample, torch.arange(self.count), reduce="amin")

    def budgets(self, keep: Keep) -> torch.Tensor:
        """[M] long (CPU): each image's budget, ``keep`` applied to its own token count."""
        return torch.tensor([keep_count(keep, n) for n in self.areas], dtype=torch.long)

    def image_indices(self, canvas_indices: torch.Tensor) -> torch.Tensor:
        """Canvas indices [M, K] (-1 padding kept) -> each image's own raster indices."""
        w = self.grids[:, 1].to(canvas_indices.device)[:, None]
        own = (canvas_indices // self.canvas[1]) * w + canvas_indices % self.canvas[1]
        return torch.where(canvas_indices >= 0, own, canvas_indices)


__all__ = ["ImageRows"]
