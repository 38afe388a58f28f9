"""A small sequence model around any registered cell, or causal attention (the baseline).

``SequenceModel``: tokens (embedding) or real-valued inputs (linear) → ``n_layers`` residual blocks
(norm → mixer → residual, then optionally norm → MLP → residual) → norm → per-position readout.
The mixer is a ``Recurrent`` layer of a registered cell or ``"attention"`` (a causal Transformer).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import cells as _cells
from ..nn.recurrent import Recurrent
from .attention import CausalSelfAttention

ATTENTION = "attention"


class RecurrentMixer(nn.Module):
    """``Recurrent`` layer from ``D`` to ``D``: a projection back to ``D`` when the cell's output
    width differs."""

    def __init__(self, cell: str, d_model: int, engine="auto", **cell_kwargs):
        super().__init__()
        self.rnn = Recurrent(cell, engine=engine, input_size=d_model, hidden_size=d_model,
                             **cell_kwargs)
        out = self.rnn.output_size
        self.proj = nn.Identity() if out == d_model else nn.Linear(out, d_model)

    def initial_state(self, batch: int, device=None, dtype=None):
        return self.rnn.initial_state(batch, device)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.rnn(x, initial_state=state)  # (B, T, H_out)
        return self.proj(y), state  # (B, T, D)


class Block(nn.Module):
    """Pre-norm residual block: ``x + mixer(norm(x))``, then ``x + mlp(norm(x))`` if ``mlp``."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp: bool = True, mlp_ratio: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.mlp = None
        if mlp:
            self.mlp_norm = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                     nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor, state=None):
        """``(x, state)`` -> ``(y, state)``: the mixer's state (recurrent state or KV cache)."""
        h, state = self.mixer(self.norm(x), state)
        x = x + h
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


def run_blocks(blocks, x: torch.Tensor, state=None):
    """``x`` through every block in turn, each with its own entry of ``state`` (None: a full
    sequence from zero state) -> ``(x, new_state)``, one entry per block."""
    new = []
    for i, block in enumerate(blocks):
        x, s = block(x, None if state is None else state[i])
        new.append(s)
    return x, new


class SequenceModel(nn.Module):
    """``outputs = model(inputs)``: ``(B, T)`` tokens or ``(B, T, vocab_size)`` reals →
    ``(B, T, n_outputs)``; ``model(inputs, state) -> (outputs, state)`` streams chunks.

    Args:
        vocab_size: input tokens (``kind="tokens"``) or input channels (``kind="real"``).
        n_outputs: classes, or output channels.
        mixer: a registered cell name, or ``"attention"`` for the causal Transformer baseline.
        cell_kwargs: options for the cell (``allow_neg_eigval=True``) or ``heads`` for attention.
    """

    def __init__(self, vocab_size: int, n_outputs: int, d_model: int = 64, n_layers: int = 2,
                 mixer: str = "gru", kind: str = "tokens", mlp: bool = True,
                 engine="auto", **cell_kwargs):
        super().__init__()
        if kind not in ("tokens", "real"):
            raise ValueError(f"SequenceModel: kind must be 'tokens' or 'real', got {kind!r}")
        if mixer != ATTENTION and mixer not in _cells.available():
            raise ValueError(f"SequenceModel: mixer must be {ATTENTION!r} or a registered cell "
                             f"({', '.join(_cells.available())}), got {mixer!r}")
        for arg, value in (("vocab_size", vocab_size), ("n_outputs", n_outputs),
                           ("d_model", d_model), ("n_layers", n_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SequenceModel: {arg} must be an int >= 1, got {value!r}")
        self.kind = kind
        self.embed = (nn.Embedding(vocab_size, d_model) if kind == "tokens"
                      else nn.Linear(vocab_size, d_model))
        self.blocks = nn.ModuleList(
            Block(self._mixer(mixer, d_model, engine, cell_kwargs), d_model, mlp)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)

    @staticmethod
    def _mixer(mixer: str, d_model: int, engine, cell_kwargs: dict) -> nn.Module:
        if mixer == ATTENTION:
            return CausalSelfAttention(d_model, **cell_kwargs)
        return RecurrentMixer(mixer, d_model, engine, **cell_kwargs)

    def initial_state(self, batch: int, device=None) -> list:
        """Every block's zero state, for ``forward(inputs, state)`` on chunks."""
        device = device if device is not None else self.head.weight.device
        return [block.mixer.initial_state(batch, device) for block in self.blocks]

    def forward(self, inputs: torch.Tensor, state=None):
        """``inputs -> outputs``; with ``state`` (streaming), ``(outputs, state)``."""
        x, new = run_blocks(self.blocks, self.embed(inputs), state)  # (B, T, D)
        out = self.head(self.norm(x))  # (B, T, n_outputs)
        return out if state is None else (out, new)
