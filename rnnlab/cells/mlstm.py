"""mLSTM (xLSTM, Beck et al. 2024), stabilized: a matrix memory per head with exponential input
gate and sigmoid forget gate.

    C_t = f_t C_{t-1} + i_t k_t v_t^T,  n_t = f_t n_{t-1} + i_t k_t,
    h_t = o_t * C_t^T q_t / max(|n_t^T q_t|, 1),   i = exp(i~), f = sigmoid(f~), k scaled by K^-1/2

kept as (C~, n~, m) = (C, n) e^{-m} with the stabilizer m_t = max(log f_t + m_{t-1}, i~_t), so no
exponential overflows. Init as the reference code: forget bias linspace(3, 6) over heads, input
bias ~ N(0, 0.1), gate weights 0. Per-head norms belong to the block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.monoids import mlstm_combine, mlstm_identity
from .factors import StabilizedOuterProduct
from .monoid import MonoidCell
from .registry import register


@register("mlstm")
class MLSTM(MonoidCell):
    """mLSTM cell. State ``(C (B, heads, K, V), n (B, heads, K), m (B, heads))``; H = heads * V."""

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.init_heads(heads, key_dim)
        kw = dict(device=device, dtype=dtype)
        nk = heads * self.key_dim
        self.qkvo = nn.Linear(input_size, 2 * nk + 2 * hidden_size, bias=False, **kw)
        self.gates = nn.Linear(input_size, 2 * heads, **kw)  # i~, f~
        with torch.no_grad():
            nn.init.zeros_(self.gates.weight)
            nn.init.normal_(self.gates.bias[:heads], std=0.1)
            self.gates.bias[heads:].copy_(torch.linspace(3.0, 6.0, heads))

    def state_shapes(self):
        return ((self.heads, self.key_dim, self.value_dim), (self.heads, self.key_dim),
                (self.heads,))

    def project(self, x):
        return torch.cat([self.qkvo(x), self.gates(x)], dim=-1)  # (B, T, 2 nk + 2H + 2 heads)

    def _split(self, u):
        nk, H, n = self.heads * self.key_dim, self.hidden_size, self.heads
        q, k, v, o, i, f = u.split([nk, nk, H, H, n, n], dim=-1)

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
        return torch.sigmoid(self._split(u)[3]) * o.flatten(-2)  # (..., heads, V) -> (..., H)
