"""``MeterClassifier``: the stacked (Bi)RNN of Yousef et al. (2019) on fixed character codes.

    codes = tasks.meters.encoding_matrix("two_hot")        # (V, W)
    model = MeterClassifier(codes, n_classes=4, cell="lstm", bidirectional=True)
    logits = model(ids, lengths)              # (B, T), (B,) -> (B, n_classes)

Unlike ``models.Classifier`` (learned embeddings, residual blocks whose directions are summed),
this is the paper's network: the input is a fixed, non-trained code of each character (a
``(V, W)`` matrix whose row ``i`` codes symbol ``i``: ``tasks.meters.encoding_matrix`` gives the
one-hot, binary and two-hot codes the paper compares; it is passed in, as models import
nothing from tasks),
and each layer is a plain recurrent layer whose output feeds the next; a bidirectional layer
concatenates its forward and backward outputs, ``(B, T, 2H)``. The line is read out from the
last layer's forward output at the last valid character and (bidirectional) its backward
output at the first one, where each direction has read the whole line.

``BiRecurrent``: a forward ``rnnlab.Recurrent`` and, when bidirectional, a second one run on
each sequence reversed within its own length (``classifier.reverse_within``) and reversed back,
so padding after a line never reaches either direction.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import check_bool, check_int, check_number
from ..nn.recurrent import Recurrent
from .block import check_mixer
from .classifier import check_lengths, reverse_within


class BiRecurrent(nn.Module):
    """``y = [fwd(x) ; rev(bwd(rev(x)))]``: ``x (B, T, D)``, ``lengths (B,)`` -> ``y (B, T,
    H)`` or ``(B, T, 2H)`` when bidirectional (the forward half first)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int,
                 bidirectional: bool = True, engine: str = "auto"):
        super().__init__()
        self.forward_rnn = Recurrent(cell, engine, input_size=input_size,
                                     hidden_size=hidden_size)
        self.backward_rnn = Recurrent(cell, engine, input_size=input_size,
                                      hidden_size=hidden_size) if bidirectional else None

    @property
    def output_size(self) -> int:
        return self.forward_rnn.output_size * (2 if self.backward_rnn is not None else 1)

    def backward_half(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The backward direction alone, ``(B, T, H)`` in the input's order."""
        y, _ = self.backward_rnn(reverse_within(x, lengths), lengths=lengths)
        return reverse_within(y, lengths)  # (B, T, H)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y, _ = self.forward_rnn(x, lengths=lengths)  # (B, T, H)
        if self.backward_rnn is None:
            return y
        return torch.cat([y, self.backward_half(x, lengths)], dim=-1)  # (B, T, 2H)


class MeterClassifier(nn.Module):
    """Fixed character codes -> ``n_layers`` (Bi)RNN layers -> dropout -> linear head.

    Args:
        codes: ``(V, W)`` float, row ``i`` the fixed code of symbol ``i`` (ids lie in
            ``[0, V)``); kept as a buffer, never trained.
        n_classes: meters.
        cell: a registered cell name (the paper: ``"lstm"``, ``"gru"``).
        hidden: state width per direction; n_layers: stacked layers.
        bidirectional: a backward RNN beside each forward one, outputs concatenated.
        dropout: between layers and before the head.
    """

    def __init__(self, codes: torch.Tensor, n_classes: int, cell: str = "lstm",
                 hidden: int = 64, n_layers: int = 2, bidirectional: bool = True,
                 dropout: float = 0.0, engine: str = "auto"):
        super().__init__()
        owner = "MeterClassifier"
        for name, value in (("n_classes", n_classes), ("hidden", hidden),
                            ("n_layers", n_layers)):
            check_int(owner, name, value, 1)
        if not torch.is_tensor(codes) or codes.dim() != 2 or not codes.is_floating_point() \
                or min(codes.shape) < 1:
            got = f"{codes.dtype} {tuple(codes.shape)}" if torch.is_tensor(codes) \
                else type(codes).__name__
            raise ValueError(f"{owner}: codes must be a float tensor (V, W) with V, W >= 1, "
                             f"got {got}")
        check_mixer(owner, "cell", cell, attention=False)
        check_bool(owner, "bidirectional", bidirectional)
        check_number(owner, "dropout", dropout, 0, 1, high_open=True)
        self.bidirectional = bidirectional
        self.register_buffer("codes", codes.detach().clone())  # (V, W), fixed
        layers, width = [], self.codes.shape[1]
        for _ in range(n_layers):
            layers.append(BiRecurrent(cell, width, hidden, bidirectional, engine))
            width = layers[-1].output_size
        self.layers = nn.ModuleList(layers)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_classes)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (B, T)`` -> the fixed codes ``(B, T, W)``."""
        if not torch.is_tensor(ids) or ids.dim() != 2 or ids.is_floating_point():
            got = f"{ids.dtype} {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids)
            raise ValueError(f"MeterClassifier: ids must be an integer tensor (B, T), got {got}")
        V = self.codes.shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= V):
            raise ValueError(f"MeterClassifier: ids must lie in [0, {V}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return self.codes[ids]  # (B, T, W)

    def forward(self, ids: torch.Tensor, lengths=None) -> torch.Tensor:
        """``ids (B, T)``, ``lengths (B,)`` (default: all T) -> ``logits (B, n_classes)``."""
        x = self.encode(ids)  # (B, T, W)
        B, T = ids.shape
        lengths = check_lengths(lengths, B, T, ids.device)
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else self.drop(x), lengths)  # (B, T, H or 2H)
        rows = torch.arange(B, device=ids.device)
        H = self.layers[-1].forward_rnn.output_size
        features = x[rows, lengths - 1, :H]  # (B, H): forward, after the whole line
        if self.bidirectional:  # backward, after the whole line (read from its end)
            features = torch.cat([features, x[:, 0, H:]], dim=-1)  # (B, 2H)
        return self.head(self.drop(features))  # (B, n_classes)
