"""MinMax recurrent neural cascade neuron (Ronca 2026), elementwise:

    x_t = max(min(r_t, x_{t-1}), s_t),   r = W_r u,  s = W_s u,   x_0 = 0
    y_t = x_t * sigmoid(W_g u)

Each map x -> max(min(r, x), s) is idempotent, so the neuron is aperiodic: it latches and resets
but cannot count (no parity). The maps compose associatively (not commutatively) as
(r, s) then (r', s') = (min(r', r), max(min(r', s), s')), which the scan engine prefix-scans.
Init: "small init" std sqrt(2 / (5 D)) for W_r and W_s.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.monoids import minmax_combine, minmax_identity
from .factors import MinMaxBounds
from .monoid import MonoidCell
from .registry import register


@register("minmax")
class MinMax(MonoidCell):
    """MinMax cell. State ``x: (B, H)``; ``u_t: (B, 3H)`` = [r, s, gate].

    Paper: Ronca, "MinMax Recurrent Neural Cascades", 2026, https://arxiv.org/abs/2605.06384

    Example (the scan engine's fused min/max scan gives the step-by-step outputs exactly):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("minmax", 3, 8)
    >>> x = torch.randn(2, 5, 3)  # (B, T, D)
    >>> y, state = rnnlab.Recurrent(cell, engine="scan")(x)
    >>> y.shape, state.shape
    (torch.Size([2, 5, 8]), torch.Size([2, 8]))
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0])
    True
    """

    def __init__(self, input_size: int, hidden_size: int, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.proj = nn.Linear(input_size, 3 * hidden_size, device=device, dtype=dtype)
        with torch.no_grad():
            nn.init.normal_(self.proj.weight[:2 * hidden_size], std=math.sqrt(2 / (5 * input_size)))

    def project(self, x):
        return self.proj(x)  # (B, T, D) -> (B, T, 3H)

    def elements(self, u):
        return self.factors(u).transition()  # the monoid leaves, from the one declaration

    def combine(self, a, b):
        return minmax_combine(a, b)

    def identity(self, elems):
        return minmax_identity(elems)

    def to_element(self, h):
        return h, h  # the constant map to h: max(min(h, .), h) = h

    def from_element(self, e):
        return e[1]  # applied after to_element(h), the second bound is the new state

    def factors(self, u):
        r, s, _ = u.chunk(3, dim=-1)
        return MinMaxBounds(r, s)

    def finish(self, o, u):
        return o * torch.sigmoid(u.chunk(3, dim=-1)[2])  # (..., H)
