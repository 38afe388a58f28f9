"""A small sequence model around any registered cell, or causal attention (the baseline).

``SequenceModel``: tokens (embedding) or real-valued inputs (linear) → ``n_layers`` residual blocks
(``models.block.make_block``: norm → mixer → residual, then optionally norm → MLP → residual) →
norm → per-position readout. The mixer is a registered cell or ``"attention"`` (a causal
Transformer); ``block="published"`` uses the family's published layer (Mamba's gated block,
xLSTM's blocks, ...) instead of the generic one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_bool, check_choice, check_int
from .block import (  # noqa: F401 - re-exported
    ATTENTION,
    BidirectionalMixer,
    RecurrentMixer,
    ResidualBlock,
    check_block,
    check_mixer,
    make_block,
    make_mlp,
    run_blocks,
)

KINDS = ("tokens", "real")


class Block(ResidualBlock):
    """The former name of this module's block (``rnnlab.cells.Block`` is a structure): a pre-norm
    ``ResidualBlock`` ``x + mixer(norm(x))``, then ``x + mlp(norm(x))`` if ``mlp`` (GELU, width
    ``mlp_ratio`` D); its state is the mixer's alone, as before."""

    def __init__(self, mixer: nn.Module, d_model: int, mlp: bool = True, mlp_ratio: int = 2):
        check_bool("Block", "mlp", mlp)
        super().__init__(mixer, d_model, mlp=make_mlp("gelu" if mlp else "none", d_model,
                                                      mlp_ratio))

    def forward(self, x: torch.Tensor, state=None):
        """``(x, state)`` -> ``(y, state)``: the mixer's state (recurrent state or KV cache)."""
        y, (_, state, _) = super().forward(x, None if state is None else (None, state, None))
        return y, state


class SequenceModel(nn.Module):
    """``outputs = model(inputs)``: ``(B, T)`` tokens or ``(B, T, vocab_size)`` reals →
    ``(B, T, n_outputs)``; ``model(inputs, state) -> (outputs, state)`` streams chunks.

    Args:
        vocab_size: input tokens (``kind="tokens"``) or input channels (``kind="real"``).
        n_outputs: classes, or output channels.
        mixer: a registered cell name, or ``"attention"`` for the causal Transformer baseline.
        mlp: an MLP in every block (the block's: GELU x2 for ``block="default"``, the family's
            for ``"published"``, which may have none; see ``models.block.PUBLISHED``).
        block: ``"default"`` or ``"published"`` (``models.block.make_block``).
        prefix: prefix mode (JRT-RNN, ``nn/prefix.py``): every recurrent mixer reads the first
            ``prefix[b]`` steps of each sequence non-causally; ``forward`` then needs
            ``prefix=`` ``(B,)`` (a cell mixer only).
        cell_kwargs: options for the cell (``allow_neg_eigval=True``) or ``heads`` / ``window``
            for attention.
    """

    def __init__(self, vocab_size: int, n_outputs: int, d_model: int = 64, n_layers: int = 2,
                 mixer: str = "gru", kind: str = "tokens", mlp: bool = True,
                 engine="auto", block: str = "default", prefix: bool = False,
                 **cell_kwargs):
        super().__init__()
        owner = "SequenceModel"
        check_choice(owner, "kind", kind, KINDS)
        check_mixer(owner, "mixer", mixer)
        for arg, value in (("vocab_size", vocab_size), ("n_outputs", n_outputs),
                           ("d_model", d_model), ("n_layers", n_layers)):
            check_int(owner, arg, value, 1)
        check_bool(owner, "mlp", mlp)
        check_block(owner, block, mixer)
        check_bool(owner, "prefix", prefix)
        if prefix and mixer == ATTENTION:
            raise ValueError(f"{owner}: prefix=True is the prefix mode of a recurrent cell; "
                             f"mixer={ATTENTION!r} has none")
        self.kind, self.prefix = kind, prefix
        self.embed = (nn.Embedding(vocab_size, d_model) if kind == "tokens"
                      else nn.Linear(vocab_size, d_model))
        mixer_options = _mixer_options(mixer, cell_kwargs)
        self.blocks = nn.ModuleList(
            make_block(mixer, d_model, block=block, mlp=None if mlp else "none", base_mlp="gelu",
                       engine=engine, **mixer_options)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)

    def initial_state(self, batch: int, device=None) -> list:
        """Every block's zero state, for ``forward(inputs, state)`` on chunks."""
        device = device if device is not None else self.head.weight.device
        return [block.initial_state(batch, device) for block in self.blocks]

    def forward(self, inputs: torch.Tensor, state=None, prefix=None):
        """``inputs -> outputs``; with ``state`` (streaming), ``(outputs, state)``. ``prefix
        (B,)``: the context's length per sequence, required in prefix mode, refused otherwise."""
        if self.prefix and prefix is None:
            raise ValueError("SequenceModel: prefix must be given (B,) context lengths: the "
                             "model was built with prefix=True, got None")
        if prefix is not None and not self.prefix:
            raise ValueError("SequenceModel: prefix is for a model built with prefix=True; "
                             "this one is causal (prefix=False)")
        x, new = run_blocks(self.blocks, self.embed(inputs), state, prefix)  # (B, T, D)
        out = self.head(self.norm(x))  # (B, T, n_outputs)
        return out if state is None else (out, new)


def _mixer_options(mixer: str, options: dict) -> dict:
    """``make_block``'s arguments from SequenceModel's ``**cell_kwargs``: ``heads`` and
    ``window`` for attention (nothing else), cell options for a cell."""
    if mixer != ATTENTION:
        return dict(cell_options=options)
    unknown = sorted(set(options) - {"heads", "window"})
    if unknown:
        raise ValueError(f"SequenceModel: attention takes heads and window, got options "
                         f"{unknown}")
    return dict(options)
