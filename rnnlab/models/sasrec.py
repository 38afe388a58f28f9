"""SASRec (Kang & McAuley 2018): a causal sequence encoder over item embeddings whose output at
step t scores the next item by a dot product with the same item embeddings.

``SASRec(n_items, encoder="attention")`` is the paper's model: item + learned position
embeddings, causal self-attention blocks (pre-LayerNorm, ReLU FFN of width D as the paper), a
final LayerNorm. Any registered cell as ``encoder`` (``"gru"``: GRU4Rec-style, ``"gla"``,
``"mamba"``, ...) gives the same harness with a recurrent encoder: the cell as the blocks' mixer
(``make_block``), no position table (a recurrence knows the order).

Sequences are right-padded with item 0: every model here is causal, so real positions never see
the padding, and ``last`` reads the output at each sequence's last real item.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..checks import check_int, check_number
from .block import ATTENTION, ResidualBlock, block_parts, check_mixer, make_mlp


class SASRec(nn.Module):
    """``encode(items (B, T)) -> (B, T, D)``; ``score(h (B, D), candidates (B, C)) -> (B, C)``."""

    def __init__(self, n_items: int, d_model: int = 50, n_layers: int = 2, max_len: int = 50,
                 encoder: str = ATTENTION, heads: int = 1, dropout: float = 0.2,
                 engine="auto", cell_options: Optional[dict] = None):
        super().__init__()
        check_int("SASRec", "n_items", n_items, 1)
        check_int("SASRec", "d_model", d_model, 1)
        check_int("SASRec", "n_layers", n_layers, 1)
        check_int("SASRec", "max_len", max_len, 1)
        check_number("SASRec", "dropout", dropout, 0.0, 1.0, high_open=True)
        check_mixer("SASRec", "encoder", encoder)
        self.n_items, self.max_len, self.encoder = n_items, max_len, encoder
        self.items = nn.Embedding(n_items + 1, d_model, padding_idx=0)
        # std 1/sqrt(D): inputs (scaled by sqrt(D)) of unit size, and initial scores O(1)
        nn.init.normal_(self.items.weight, std=d_model ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
        self.positions = nn.Embedding(max_len, d_model) if encoder == ATTENTION else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(self._block(encoder, d_model, heads, engine, cell_options)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    @staticmethod
    def _block(encoder, d_model, heads, engine, cell_options) -> ResidualBlock:
        """A pre-LN block of ``encoder`` with the paper's point-wise FFN (ReLU, width D)."""
        parts = block_parts(encoder, d_model, mlp="relu", heads=heads, engine=engine,
                            cell_options=None if encoder == ATTENTION else cell_options)
        parts["mlp"] = make_mlp("relu", d_model, ratio=1)
        return ResidualBlock(**parts)

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """``items (B, T)`` (right-padded with 0, T <= max_len) -> outputs ``(B, T, D)``."""
        T = items.shape[1]
        if T > self.max_len:
            raise ValueError(f"SASRec.encode: sequences of at most max_len={self.max_len} "
                             f"items, got {T}")
        x = self.items(items) * math.sqrt(self.items.embedding_dim)  # (B, T, D), as the paper
        if self.positions is not None:
            x = x + self.positions.weight[:T]
        x = self.dropout(x) * (items != 0).unsqueeze(-1)  # padding stays zero
        for block in self.blocks:
            x, _ = block(x)
        return self.norm(x)

    def score(self, h: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Dot products of ``h (..., D)`` with the shared embeddings of ``candidates (..., C)``
        -> ``(..., C)``."""
        return (self.items(candidates) * h.unsqueeze(-2)).sum(-1)

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        """``h (B, D)`` against every item -> ``(B, n_items + 1)`` (column 0: padding)."""
        return h @ self.items.weight.T

    def last(self, items: torch.Tensor) -> torch.Tensor:
        """The output at each row's last real item: ``items (B, T)`` -> ``(B, D)``."""
        lengths = (items != 0).sum(1).clamp(min=1)  # (B,)
        h = self.encode(items)  # (B, T, D)
        return h[torch.arange(len(items), device=items.device), lengths - 1]
