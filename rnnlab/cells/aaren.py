"""Aaren, attention as an RNN (Feng et al. 2024): softmax attention of a learned query over the
prefix, many-to-many.

    s_i = q . k_i / sqrt(K),   o_t = sum_{i<=t} e^{s_i} v_i / sum_{i<=t} e^{s_i}

computed as the (m, u, w) monoid with a max stabilizer. The query q (per head) is a parameter,
keys and values project the input. State per head: m, u (scalars) and w (V), d + 2 numbers.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.monoids import aaren_combine, aaren_identity, aaren_leaf
from .monoid import MonoidCell
from .registry import register


@register("aaren")
class Aaren(MonoidCell):
    """Aaren cell. State ``(m (B, heads), u (B, heads), w (B, heads, V))``; H = heads * V.

    Paper: Feng, Tung, Hajimirsadeghi, Ahmed, Bengio, Mori, "Attention as an RNN", 2024,
    https://arxiv.org/abs/2405.13956

    Example (the scan engine's prefix scan gives the step-by-step outputs):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("aaren", 3, 8, heads=2)
    >>> x = torch.randn(2, 5, 3)  # (B, T, D)
    >>> y, (m, u, w) = rnnlab.Recurrent(cell, engine="scan")(x)
    >>> y.shape, w.shape
    (torch.Size([2, 5, 8]), torch.Size([2, 2, 4]))
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.init_heads(heads, key_dim)
        kw = dict(device=device, dtype=dtype)
        self.query = nn.Parameter(torch.randn(heads, self.key_dim, **kw))
        self.kv = nn.Linear(input_size, heads * self.key_dim + hidden_size, **kw)

    def state_shapes(self):
        return ((self.heads,), (self.heads,), (self.heads, self.value_dim))

    def project(self, x):
        k, v = self.kv(x).split([self.heads * self.key_dim, self.hidden_size], dim=-1)
        k = k.unflatten(-1, (self.heads, self.key_dim))  # (B, T, heads, K)
        s = (k * self.query).sum(-1) * self.key_dim ** -0.5  # (B, T, heads)
        return torch.cat([s, v], dim=-1)  # (B, T, heads + H)

    def elements(self, u):
        s, v = u.split([self.heads, self.hidden_size], dim=-1)
        return aaren_leaf(s, v.unflatten(-1, (self.heads, self.value_dim)))

    def combine(self, a, b):
        return aaren_combine(a, b)

    def identity(self, elems):
        return aaren_identity(elems)

    def to_element(self, h):
        return h  # the state is the running (m, u, w); zeros act as the identity (u = w = 0)

    def from_element(self, e):
        return tuple(e)

    def readout(self, h, u_t):
        _, u, w = h
        # u >= 1 after any step; the clamp only keeps the (unused) empty state finite.
        return (w / u.clamp_min(1e-30).unsqueeze(-1)).flatten(-2)  # (B, heads, V) -> (B, H)
