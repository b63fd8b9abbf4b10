"""A toy vision-language model: the "model family" the example adapter drives.

It stands in for a real family (a transformers class in practice) and is deliberately tiny:
a linear vision projection turns patches into visual tokens, which are put before the text
embeddings; a few residual layers mix every token with the sequence mean (so the answer
depends on which visual tokens are there); the last position's logits are returned.
"""

from __future__ import annotations

import torch
from torch import nn


class ToyVLM(nn.Module):
    """``forward(patches [B, N, P], input_ids [B, T]) -> next-token logits [B, vocab]``.

    The N = h * w visual tokens come first in the sequence, then the T text tokens.
    """

    def __init__(
        self, grid: tuple[int, int] = (4, 6), patch_dim: int = 12, hidden: int = 16,
        num_layers: int = 3, vocab: int = 32,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.vision = nn.Linear(patch_dim, hidden)  # patches -> visual tokens
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers))
        self.head = nn.Linear(hidden, vocab)

    def forward(self, patches: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        visual = self.vision(patches)                                 # [B, N', D]
        h = torch.cat([visual, self.embed(input_ids)], dim=1)         # [B, N' + T, D]
        for layer in self.layers:
            h = h + torch.tanh(layer(h + h.mean(dim=1, keepdim=True)))
        return self.head(h[:, -1])


__all__ = ["ToyVLM"]
