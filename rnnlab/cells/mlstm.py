"""mLSTM (xLSTM, Beck et al. 2024), stabilized: a matrix memory per head with exponential input
gate and sigmoid forget gate.

    C_t = f_t C_{t-1} + i_t k_t v_t^T,  n_t = f_t n_{t-1} + i_t k_t,
    h_t = o_t * C_t^T q_t / max(|n_t^T q_t|, 1),   i = exp(i~), f = sigmoid(f~), k scaled by K^-1/2

kept as (C~, n~, m) = (C, n) e^{-m} with the stabilizer m_t = max(log f_t + m_{t-1}, i~_t), so no
exponential overflows. Init as the reference code: forget bias linspace(3, 6) over heads, input
bias ~ N(0, 0.1), gate weights 0.

The published block around it (up-projection x 2 to x and z; causal conv + SiLU on x feeding q
and k; v from x; gates from [q, k, v]; per-head norm; learnable skip; SiLU(z) output gate;
down-projection) is ``rnnlab.models.mixers.MLSTMLayer``: it feeds the cell [q, k, v, i~, f~]
with ``in_proj=False, output_gate=False`` (the block's SiLU(z) replaces the sigmoid o gate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool
from ..ops.monoids import mlstm_combine, mlstm_identity
from .factors import StabilizedOuterProduct
from .monoid import MonoidCell
from .projection import check_in_proj
from .registry import register


@torch.no_grad()
def init_gates_(weight: torch.Tensor, bias: torch.Tensor, heads: int) -> None:
    """The reference init of the (i~, f~) gate projection ``(2 heads, ...)``, in place: weights
    0, input bias ~ N(0, 0.1), forget bias linspace(3, 6) over heads."""
    nn.init.zeros_(weight)
    nn.init.normal_(bias[:heads], std=0.1)
    bias[heads:].copy_(torch.linspace(3.0, 6.0, heads))


@register("mlstm")
class MLSTM(MonoidCell):
    """mLSTM cell (xLSTM, https://arxiv.org/abs/2405.04517). State ``(C (B, heads, K, V),
    n (B, heads, K), m (B, heads))``; H = heads * V; ``u_t`` = [q, k, v, o~, i~, f~].

    ``output_gate=False`` drops o~ (no sigmoid gate on the output); ``in_proj=False`` reads the
    input as ``u`` itself (needs ``input_size == 2 heads K + H (+ H) + 2 heads``).

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("mlstm", input_size=8, hidden_size=16, heads=2)
    >>> y, (C, n, m) = layer(torch.randn(2, 5, 8))
    >>> tuple(y.shape), tuple(C.shape), tuple(m.shape)
    ((2, 5, 16), (2, 2, 8, 8), (2, 2))
    """

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, output_gate: bool = True, in_proj: bool = True,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.init_heads(heads, key_dim)
        check_bool("MLSTM", "output_gate", output_gate)
        kw = dict(device=device, dtype=dtype)
        nk = heads * self.key_dim
        self.output_gate = output_gate
        width = 2 * nk + (1 + output_gate) * hidden_size  # q, k, v[, o~]
        check_in_proj("MLSTM", in_proj, input_size, width + 2 * heads,
                      f"[q, k, v{', o' if output_gate else ''}, i, f]")
        self.qkvo = self.gates = None
        if in_proj:
            self.qkvo = nn.Linear(input_size, width, bias=False, **kw)
            self.gates = nn.Linear(input_size, 2 * heads, **kw)  # i~, f~
            init_gates_(self.gates.weight, self.gates.bias, heads)

    def state_shapes(self):
        return ((self.heads, self.key_dim, self.value_dim), (self.heads, self.key_dim),
                (self.heads,))

    def project(self, x):
        if self.qkvo is None:  # in_proj=False: x is u already
            return x
        return torch.cat([self.qkvo(x), self.gates(x)], dim=-1)  # (B, T, 2 nk + 2H + 2 heads)

    def _split(self, u):
        nk, H, n = self.heads * self.key_dim, self.hidden_size, self.heads
        q, k, v, o, i, f = u.split([nk, nk, H, H * self.output_gate, n, n], dim=-1)

        def heads(t):
            return t.unflatten(-1, (n, -1))  # (..., n * d) -> (..., n, d)
        return heads(q), heads(k) * self.key_dim ** -0.5, heads(v), o, i, F.logsigmoid(f)

    def elements(self, u):
        return self.factors(u).transition()  # the monoid leaves, from the one declaration

    def combine(self, a, b):
        return mlstm_combine(a, b)

    def identity(self, elems):
        return mlstm_identity(elems)

    def to_element(self, h):
        C, n, m = h
        return torch.zeros_like(m), m, C, n

    def from_element(self, e):
        _, m, C, n = e
        return C, n, m

    def factors(self, u):
        q, k, v, _, i, log_f = self._split(u)
        return StabilizedOuterProduct(q, k, v, i, log_f)

    def finish(self, o, u):
        o = o.flatten(-2)  # (..., heads, V) -> (..., H)
        return torch.sigmoid(self._split(u)[3]) * o if self.output_gate else o
