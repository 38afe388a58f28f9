"""ParaLSTM (ParaRNN, apple/ml-pararnn): a CIFG LSTM (coupled input gate i = 1 - f) with diagonal
recurrent vectors a and diagonal peepholes C, so channel i of c and channel i of h mix only with
each other: the step Jacobian is a 2 x 2 block per channel (``Block(2)``).

    f  = sigmoid(a_f * h + C_f * c  + B_f x + b_f)
    c~ = tanh(a_c * h + B_c x + b_c)
    c' = f * c + (1 - f) * c~
    o  = sigmoid(a_o * h + C_o * c' + B_o x + b_o)
    h' = o * tanh(c')

State ``(h, c)``, h first as in rnnlab's LSTM; ``readout`` returns h. B is the same multi-head,
block-diagonal input projection as ParaGRU's (``heads`` defaults to 2 when it divides D and H,
else 1).

Init (concrete readings, as in ``paragru``):

- ``xlstm`` for a and for the peepholes C: N(0, std = sqrt(2 / (5 H))).
- ``xavier_uniform`` for B, per (gate, head) block.
- ``bias_minus_linspace``: CIFG's write gate is 1 - f = sigmoid(-(.. + b_f)), so the write gate
  gets the bias -linspace(1, 4) within each head, i.e. b_f = +linspace(1, 4); ParaGRU's z and this
  1 - f then start with the same retention spectrum. b_c = b_o = 0.

``a_max`` (default None): clamp |a| and |C| <= a_max inside the step (ParaRNN's |a| <= 0.5
recipe, extended to the peepholes, which are diagonal recurrent weights too).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .base import Block, Cell, NewtonWins
from .paragru import HeadwiseLinear, check_a_max, minus_linspace, resolve_heads, xlstm_normal_
from .registry import register


@register("paralstm")
class ParaLSTM(Cell):
    """ParaRNN's diagonal CIFG-LSTM. State ``(h: (B, H), c: (B, H))``; ``u_t: (B, 3H)`` =
    [B_f x + b_f, B_c x + b_c, B_o x + b_o].

    Paper: Danieli, Rodriguez, Sarabia, Suau, Zappella, "ParaRNN: Unlocking Parallel Training of
    Nonlinear RNNs for Large Language Models", 2025, https://arxiv.org/abs/2510.21450

    Example (Newton over the whole sequence, 2 x 2 blocks per channel, gives the sequential
    outputs):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("paralstm", 4, 8)
    >>> x = torch.randn(2, 16, 4)  # (B, T, D)
    >>> y, (h, c) = rnnlab.Recurrent(cell, engine="newton")(x)
    >>> y.shape, h.shape, c.shape
    (torch.Size([2, 16, 8]), torch.Size([2, 8]), torch.Size([2, 8]))
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    structure = Block(2)
    # fwd+bwd: 2.2-5.7x the sequential engine at B*S = 1024 from T = 256, 0.7x at 4096;
    # fwd only: 2.4-7.2x at B*S = 128, 1.65x at 512 (H = 64; rnnlab bench cells)
    newton_wins = NewtonWins(min_steps=256, train=1024, infer=128)

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 a_max: float | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.heads = resolve_heads("ParaLSTM", heads, input_size, hidden_size)
        self.a_max = check_a_max("ParaLSTM", a_max)
        kw = dict(device=device, dtype=dtype)
        self.proj = HeadwiseLinear(input_size, hidden_size, 3, self.heads, **kw)
        self.a = nn.Parameter(torch.empty(3, hidden_size, **kw))  # rows a_f, a_c, a_o
        self.peephole = nn.Parameter(torch.empty(2, hidden_size, **kw))  # rows C_f, C_o
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.hidden_size
        self.proj.reset_parameters()
        xlstm_normal_(self.a, H)
        xlstm_normal_(self.peephole, H)
        with torch.no_grad():
            self.proj.bias[:H].copy_(-minus_linspace(H, self.heads, self.a.device, self.a.dtype))

    def recurrent(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(a (3, H), C (2, H))`` as the step uses them (clamped to a_max when set)."""
        if self.a_max is None:
            return self.a, self.peephole
        m = self.a_max
        return self.a.clamp(-m, m), self.peephole.clamp(-m, m)

    def state_shapes(self):
        return ((self.hidden_size,), (self.hidden_size,))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, T, D) -> (B, T, 3H)

    def step(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        h, c = state  # (B, H) each
        (a_f, a_c, a_o), (C_f, C_o) = self.recurrent()  # (H,) each
        u_f, u_c, u_o = u_t.chunk(3, dim=-1)  # 3 x (B, H)
        f = torch.sigmoid(a_f * h + C_f * c + u_f)
        c_tilde = torch.tanh(a_c * h + u_c)
        c_new = c_tilde + f * (c - c_tilde)  # = f * c + (1 - f) * c~
        o = torch.sigmoid(a_o * h + C_o * c_new + u_o)
        return o * torch.tanh(c_new), c_new

    def jacobian(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        """``step`` and its 2 x 2 per-channel Jacobian in closed form, in ``linearize``'s
        column layout for ``Block(2)``: ``((h', c'), cols)``, ``cols[l]: (B, 2, H)`` with
        ``cols[l][:, l', i] = d new_l[i] / d state_l'[i]`` (leaves h, c). One pass instead of
        two JVPs (each recomputing the step)."""
        h, c = state  # (B, H) each
        (a_f, a_c, a_o), (C_f, C_o) = self.recurrent()  # (H,) each
        u_f, u_c, u_o = u_t.chunk(3, dim=-1)  # 3 x (B, H)
        f = torch.sigmoid(a_f * h + C_f * c + u_f)
        c_tilde = torch.tanh(a_c * h + u_c)
        c_new = c_tilde + f * (c - c_tilde)
        o = torch.sigmoid(a_o * h + C_o * c_new + u_o)
        th = torch.tanh(c_new)
        df = f * (1 - f) * (c - c_tilde)  # d c_new / d (f's pre-activation)
        dc_dh = (1 - c_tilde * c_tilde) * a_c * (1 - f) + df * a_f
        dc_dc = f + df * C_f
        do = o * (1 - o) * th  # d h_new / d (o's pre-activation)
        through_c = do * C_o + o * (1 - th * th)  # d h_new / d c_new
        cols_h = torch.stack((do * a_o + through_c * dc_dh, through_c * dc_dc), 1)
        return (o * th, c_new), (cols_h, torch.stack((dc_dh, dc_dc), 1))

    def readout(self, h, u_t: torch.Tensor) -> torch.Tensor:
        return h[0]  # the h of (h, c): (B, H)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, a_max={self.a_max}"
