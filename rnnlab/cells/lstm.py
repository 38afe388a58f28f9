"""LSTM as torch.nn.LSTM: gate order (i, f, g, o), two biases, optional projection.

    i, f, o = sigmoid(.),  g = tanh(.)   of  W_ih x + b_ih + W_hh h + b_hh
    c' = f * c + i * g
    h' = o * tanh(c'),  then  h' <- W_hr h'  when proj_size > 0

``peephole=True`` adds Gers & Schmidhuber's peephole connections (diagonal weights p_i, p_f on
the old cell c, p_o on the new one): i, f = sigmoid(. + p_{i,f} * c), o = sigmoid(. + p_o * c').
SR-LSTM-P (Wang & Niepert 2019) uses them so that memory can live in c. Off by default, when
the cell holds no extra parameter and its numbers are torch.nn.LSTM's.

Torch adds nothing to the forget bias at init; ``forget_bias`` (default 0) opts in to the +1 trick.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool, check_int
from .base import Dense, NewtonWins
from .options import check_range
from .registry import register
from .torch_style import TorchStyleCell


@register("lstm")
class LSTM(TorchStyleCell):
    """LSTM cell. State ``(h: (B, H_out), c: (B, H))`` with ``H_out = proj_size or H``;
    ``u_t: (B, 4H)``.

    Paper: Hochreiter, Schmidhuber, "Long Short-Term Memory", Neural Computation 9(8), 1997,
    https://doi.org/10.1162/neco.1997.9.8.1735

    Example (with a projection, as ``torch.nn.LSTM(proj_size=4)``):

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("lstm", input_size=3, hidden_size=8, proj_size=4)
    >>> y, (h, c) = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, h.shape, c.shape
    (torch.Size([2, 5, 4]), torch.Size([2, 4]), torch.Size([2, 8]))
    """

    structure = Dense()
    # quasi-Newton (8 iterations at init), fwd+bwd: 2.4-3.9x the sequential engine at
    # B*S = 128-256 from T = 1024, 0.6x at 1024; fwd only: 0.9-1.4x, so never (H = 64)
    newton_wins = NewtonWins(min_steps=1024, train=256, quasi=True)
    gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, proj_size: int = 0,
                 forget_bias: float = 0.0, peephole: bool = False, device=None, dtype=None):
        check_int("LSTM", "proj_size", proj_size, 0)
        check_bool("LSTM", "peephole", peephole)
        if proj_size >= hidden_size:
            raise ValueError(f"LSTM: proj_size must be smaller than hidden_size={hidden_size}, "
                             f"got {proj_size}")
        check_range("LSTM", "forget_bias", forget_bias)
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype,
                         recurrent_size=proj_size or hidden_size)
        self.proj_size = proj_size
        self.forget_bias = float(forget_bias)
        kw = dict(device=device, dtype=dtype)
        self.weight_hr = (nn.Parameter(torch.empty(proj_size, hidden_size, **kw)) if proj_size
                          else None)
        # (3, H): the peephole weights p_i, p_f, p_o; None keeps the default cell torch's
        self.weight_peep = (nn.Parameter(torch.empty(3, hidden_size, **kw)) if peephole
                            else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias and self.forget_bias:
            H = self.hidden_size
            with torch.no_grad():
                self.bias_ih[H:2 * H] += self.forget_bias

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def state_shapes(self):
        return ((self.output_size,), (self.hidden_size,))

    def step(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        return self._step(u_t, state)[0]

    def _step(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        """``(h', c')``, the activated gates ``(i, f, g, o)`` and ``tanh(c')``, each ``(B, H)``."""
        h, c = state
        i, f, g, o = (u_t + self.recur(h)).chunk(4, dim=-1)  # 4 x (B, H)
        p = self.weight_peep
        if p is not None:  # i and f peek at the old cell, o (below) at the new one
            i, f = i + p[0] * c, f + p[1] * c
        i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
        c = f * c + i * g
        if p is not None:
            o = o + p[2] * c
        gates = i, f, g, torch.sigmoid(o)
        tc = torch.tanh(c)
        h = gates[3] * tc
        if self.weight_hr is not None:
            h = F.linear(h, self.weight_hr)  # (B, H) -> (B, P)
        return (h, c), gates, tc

    def quasi_jacobian(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        """``(step(u_t, state), cols)``: the same-channel entries of the step Jacobian. The gate
        pre-activations move with h[c] through W_hh[:, c]; c' and y = o tanh(c') are elementwise
        in them (coefficients ``dc``, ``dy`` below) and in c (``dc'/dc = f``).

        - ``proj_size == 0``: leaves h, c both H wide, channel blocks ``cols[l]: (B, 2, H)``
          over (h, c): ``dh'/dh = sum_gates dy W_hh[gH + c, c]``, ``dh'/dc = o (1 - tanh^2 c')
          f``, ``dc'/dh = sum_gates dc W_hh[gH + c, c]``, ``dc'/dc = f``.
        - ``proj_size = P``: h' = W_hr y (P wide) and c (H wide) differ, so the diagonals,
          ``(B, 1, P)`` and ``(B, 1, H)``: ``dh'[p]/dh[p] = sum_{gates, j} W_hr[p, j] dy[gH + j]
          W_hh[gH + j, p]``, one matmul the size of the step's own ``W_hh h``; ``dc'/dc = f``.

        Peepholes change two coefficients only: c moves i and f too, so ``dc'/dc = f + dc_f p_f
        + dc_i p_i`` (``dcc``), and c' moves o, so ``dy/dc' = e + o (1 - o) tanh(c') p_o``
        (``ey``) replaces e wherever a path runs through c'."""
        H, c = self.hidden_size, state[1]
        (h_new, c_new), (i, f, g, o), tc = self._step(u_t, state)
        dc = (g * i * (1 - i), c * f * (1 - f), i * (1 - g * g))  # d c' / d (i, f, g) pre-acts
        so = o * (1 - o) * tc  # d y / d (o's pre-activation)
        e = o * (1 - tc * tc)  # d y / d c' with o fixed
        dcc, ey = f, e
        if self.weight_peep is not None:
            p = self.weight_peep
            dcc = f + dc[0] * p[0] + dc[1] * p[1]
            ey = e + so * p[2]
        dy = torch.cat([ey * k for k in dc] + [so], -1)  # (B, 4H) on (i, f, g, o)
        w = self.weight_hh.unflatten(0, (4, H))  # (4H, R) -> (4, H, R)
        if self.weight_hr is not None:
            dh = dy @ (w * self.weight_hr.T).flatten(0, 1)  # (B, 4H) @ (4H, P) -> (B, P)
            return (h_new, c_new), (dh.unsqueeze(1), dcc.unsqueeze(1))
        wd = w.diagonal(dim1=1, dim2=2)  # (4, H): W_hh[gH + c, c]
        dh = (dy.unflatten(-1, (4, H)) * wd).sum(1)  # (B, 4, H) -> (B, H)
        dch = dc[0] * wd[0] + dc[1] * wd[1] + dc[2] * wd[2]
        return (h_new, c_new), (torch.stack((dh, ey * dcc), 1), torch.stack((dch, dcc), 1))
