"""The residual LM block and its streaming state.

``LMBlock``: ``x + fsmn(mixer(conv(norm(x))))``, then ``x + GatedMLP(norm(x))``. The mixer is a
``Recurrent`` layer of any registered cell or causal attention (full or sliding-window); ``conv``
adds a short causal conv (static, or dynamic with ``dynamic_conv``) before it; ``fsmn`` adds an
FSMN memory block after it. The block's state is ``(conv window, mixer state, fsmn window)``
with ``None`` for absent parts; ``forward(x, state) -> (y, state)`` on chunks of any length equals
one full run.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn.conv import DynamicShortConv, FSMNMemory, ShortConv
from .attention import CausalSelfAttention
from .sequence import ATTENTION, RecurrentMixer


class GatedMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, hidden: Optional[int] = None):
        super().__init__()
        hidden = 8 * d_model // 3 if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"GatedMLP: hidden must be an int >= 1 or None, got {hidden!r}")
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def make_mixer(mixer: str, d_model: int, heads: int = 4, window: Optional[int] = None,
               engine="auto", cell_options: Optional[dict] = None) -> nn.Module:
    """Causal attention (``mixer="attention"``) or a ``Recurrent`` layer of a registered cell."""
    if mixer == ATTENTION:
        return CausalSelfAttention(d_model, heads, window)
    return RecurrentMixer(mixer, d_model, engine, **(cell_options or {}))


class LMBlock(nn.Module):
    """Pre-norm residual block with a recurrent or attention mixer and a gated MLP."""

    def __init__(self, d_model: int, mixer: str = "gru", conv: int = 0,
                 dynamic_conv: bool = False, fsmn: int = 0, fsmn_dilation: int = 1,
                 heads: int = 4, window: Optional[int] = None, engine="auto",
                 cell_options: Optional[dict] = None):
        super().__init__()
        if isinstance(conv, bool) or not isinstance(conv, int) or conv < 0:
            raise ValueError(f"LMBlock: conv must be an int >= 0 (kernel width, 0 = none), "
                             f"got {conv!r}")
        if dynamic_conv and conv == 0:
            conv = 4
        self.norm = nn.LayerNorm(d_model)
        self.conv = None
        if conv:
            self.conv = (DynamicShortConv(d_model, conv, heads) if dynamic_conv
                         else ShortConv(d_model, conv))
        self.mixer = make_mixer(mixer, d_model, heads, window, engine, cell_options)
        self.fsmn = FSMNMemory(d_model, fsmn, fsmn_dilation) if fsmn else None
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = GatedMLP(d_model)

    def initial_state(self, batch: int, device=None) -> tuple:
        conv = None if self.conv is None else self.conv.initial_state(batch, device)
        fsmn = None if self.fsmn is None else self.fsmn.initial_state(batch, device)
        return conv, self.mixer.initial_state(batch, device), fsmn

    def forward(self, x: torch.Tensor, state: Optional[tuple] = None):
        conv_s, mix_s, fsmn_s = state if state is not None else (None, None, None)
        h = self.norm(x)
        if self.conv is not None:
            h, conv_s = self.conv(h, conv_s)
        h, mix_s = self.mixer(h, mix_s)
        if self.fsmn is not None:
            h, fsmn_s = self.fsmn(h, fsmn_s)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, (conv_s, mix_s, fsmn_s)
