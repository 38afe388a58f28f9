"""``Classifier``: sequence classification from residual blocks (``models.block.make_block``, as
the LM's) of any registered cell, optionally bidirectional.

    clf = Classifier(vocab_size=100, n_classes=5, cell="gru", bidirectional=True)
    logits = clf(ids, lengths)                 # (B, T), (B,) -> (B, n_classes)
    features = clf.encode(ids, lengths)        # (B, T, D), per-position features

Padding has no influence: every block is causal, and a padded sequence holds its padding after
its valid part, so the valid positions never see it in the forward direction. The backward
direction runs each sequence's own valid part reversed (``reverse_within``: position ``t <
L_b`` swaps with ``L_b - 1 - t``; padding stays where it is, after the valid part again), and
pooling is masked by ``lengths``.

A bidirectional layer is two blocks that read the same residual stream ``x``, one forward
and one on the reversed sequence, each adding its own update: ``y = x + g_fwd(x) +
rev(g_bwd(rev(x)))`` (the sum of both directions, as in bidirectional Mamba/Vim), so depth and
width stay as in the unidirectional model. ``save_pretrained(dir)`` /
``Classifier.from_pretrained(dir)`` write and read config.json + model.safetensors.
"""
from __future__ import annotations

from typing import Optional

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..checks import check_bool, check_choice, check_int, check_number
from .block import ATTENTION, ResidualBlock, check_block, check_mixer, make_block

POOLINGS = ("mean", "last", "max")


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x (B, T, ...)`` within its own length: row ``b`` position ``t <
    lengths[b]`` takes position ``lengths[b] - 1 - t``; positions ``>= lengths[b]`` stay. An
    involution: applying it twice gives ``x`` back."""
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device).expand(B, T)  # (B, T)
    last = (lengths.to(x.device) - 1).unsqueeze(1)  # (B, 1)
    index = torch.where(t <= last, last - t, t)  # (B, T)
    index = index.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)  # (B, T, ...)


def _check_ids(ids) -> None:
    if not torch.is_tensor(ids) or ids.dim() != 2 \
            or ids.dtype not in (torch.long, torch.int32, torch.int64):
        got = f"{ids.dtype} {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids).__name__
        raise ValueError(f"Classifier: ids must be an integer tensor (B, T), got {got}")


def check_lengths(lengths, B: int, T: int, device) -> torch.Tensor:
    """``lengths (B,)`` ints in ``[1, T]`` as a long tensor; ``None`` means all ``T``."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (B,) or lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"Classifier: lengths must be integer ({B},), got {lengths.dtype} "
                         f"{tuple(lengths.shape)}")
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
        raise ValueError(f"Classifier: lengths must lie in [1, T={T}], got "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return lengths.long()


class Classifier(nn.Module, PyTorchModelHubMixin, library_name="rnnlab", tags=["rnnlab"]):
    """Embedding -> ``n_layers`` (bidirectional) blocks -> norm -> pooling over the valid
    positions -> dropout -> linear head.

    Args:
        vocab_size, n_classes: input tokens and output classes.
        cell: a registered cell name, or ``"attention"`` (a causal Transformer per direction).
        bidirectional: add a backward block to every layer (see the module docstring).
        pooling: ``"mean"`` / ``"max"`` over the valid positions, or ``"last"``: the last valid
            position (and, when bidirectional, the first one too, where the backward direction
            has read the whole sequence; the two are concatenated, ``(B, 2D)``).
        dropout: on the embeddings, between layers and before the head (0 = none).
        conv, dynamic_conv, fsmn, fsmn_dilation, heads, window, engine, cell_options,
        attention_every, block: block options, as in ``LM``.
    """

    def __init__(self, vocab_size: int, n_classes: int, d_model: int = 128, n_layers: int = 2,
                 cell: str = "gru", bidirectional: bool = False, pooling: str = "mean",
                 dropout: float = 0.0, conv: int = 0, dynamic_conv: bool = False, fsmn: int = 0,
                 fsmn_dilation: int = 1, attention_every: int = 0,
                 window: Optional[int] = None, heads: int = 4, engine: str = "auto",
                 cell_options: Optional[dict] = None, block: str = "default"):
        super().__init__()
        self._check_args(vocab_size, n_classes, d_model, n_layers, cell, bidirectional,
                         pooling, dropout, attention_every)
        if cell != ATTENTION:  # attention layers always take the default block
            check_block("Classifier", block, cell)
        self.vocab_size, self.n_classes = vocab_size, n_classes
        self.bidirectional, self.pooling = bidirectional, pooling
        self.embed = nn.Embedding(vocab_size, d_model)
        self.drop = nn.Dropout(dropout)

        def layer(i: int) -> ResidualBlock:
            attn = cell == ATTENTION or (attention_every and (i + 1) % attention_every == 0)
            return make_block(ATTENTION if attn else cell, d_model,
                              block="default" if attn else block, conv=conv,
                              dynamic_conv=dynamic_conv, fsmn=fsmn, fsmn_dilation=fsmn_dilation,
                              heads=heads, window=window, engine=engine,
                              cell_options=None if attn else cell_options)

        self.forward_blocks = nn.ModuleList(layer(i) for i in range(n_layers))
        self.backward_blocks = nn.ModuleList(layer(i) for i in range(n_layers)) \
            if bidirectional else None
        self.norm = nn.LayerNorm(d_model)
        width = 2 * d_model if bidirectional and pooling == "last" else d_model
        self.head = nn.Linear(width, n_classes)

    @staticmethod
    def _check_args(vocab_size, n_classes, d_model, n_layers, cell, bidirectional, pooling,
                    dropout, attention_every) -> None:
        owner = "Classifier"
        for name, value in (("vocab_size", vocab_size), ("n_classes", n_classes),
                            ("d_model", d_model), ("n_layers", n_layers)):
            check_int(owner, name, value, 1)
        check_mixer(owner, "cell", cell)
        check_bool(owner, "bidirectional", bidirectional)
        check_choice(owner, "pooling", pooling, POOLINGS)
        check_number(owner, "dropout", dropout, 0, 1, high_open=True)
        check_int(owner, "attention_every", attention_every, 0)

    def encode(self, ids: torch.Tensor, lengths=None) -> torch.Tensor:
        """Per-position features ``(B, T, D)`` of ``ids (B, T)``; with ``lengths (B,)`` only
        positions ``t < lengths[b]`` are meaningful (the others hold junk and are ignored by
        pooling). Position ``t`` sees tokens ``<= t`` (unidirectional) or the whole valid
        sequence (bidirectional)."""
        _check_ids(ids)
        B, T = ids.shape
        lengths = check_lengths(lengths, B, T, ids.device)
        x = self.drop(self.embed(ids))  # (B, T, D)
        for i, fwd in enumerate(self.forward_blocks):
            y, _ = fwd(x)  # (B, T, D) = x + g_fwd(x)
            if self.backward_blocks is not None:
                back, _ = self.backward_blocks[i](reverse_within(x, lengths))
                y = y + reverse_within(back, lengths) - x  # x + g_fwd(x) + rev(g_bwd(rev(x)))
            x = self.drop(y) if i + 1 < len(self.forward_blocks) else y
        return self.norm(x)  # (B, T, D)

    def pool(self, h: torch.Tensor, lengths=None) -> torch.Tensor:
        """Pool features ``h (B, T, D)`` over the valid positions: ``(B, D)`` (``(B, 2D)`` for
        bidirectional ``"last"``)."""
        B, T, _ = h.shape
        lengths = check_lengths(lengths, B, T, h.device)
        valid = torch.arange(T, device=h.device) < lengths.unsqueeze(1)  # (B, T)
        if self.pooling == "mean":
            # A select, not a mask product: 0 * NaN is NaN, so a non-finite padded feature
            # would reach the logits and every gradient.
            summed = torch.where(valid.unsqueeze(-1), h, h.new_zeros(())).sum(1)  # (B, D)
            return summed / lengths.unsqueeze(1).to(h.dtype)
        if self.pooling == "max":
            return h.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(1)  # (B, D)
        last = h[torch.arange(B, device=h.device), lengths - 1]  # (B, D)
        return torch.cat([last, h[:, 0]], dim=-1) if self.bidirectional else last

    def forward(self, ids: torch.Tensor, lengths=None) -> torch.Tensor:
        """``ids (B, T)`` long, ``lengths (B,)`` (default: all ``T``) -> ``logits (B,
        n_classes)``; positions ``t >= lengths[b]`` have no influence on row ``b``."""
        _check_ids(ids)
        lengths = check_lengths(lengths, ids.shape[0], ids.shape[1], ids.device)
        h = self.encode(ids, lengths)  # (B, T, D)
        return self.head(self.drop(self.pool(h, lengths)))  # (B, n_classes)
