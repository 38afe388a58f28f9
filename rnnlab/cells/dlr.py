"""DLR, the diagonal linear RNN (Gupta, Mehta, Berant 2022): no discretization, complex state.

    x_t = Lambda * x_{t-1} + 1 * u_t,   y_t = Re(sum_n w_n x_{t,n}),   u = W_in x + b_in

per channel (H channels, N complex modes each). ``Lambda = exp(-exp(log_decay) + i theta)``; the
"omega" init puts log Lambda_n = -delta_n / 2 + 2 pi i n / N with delta log-uniform in
[1e-4, 1e-1] (|Lambda| near 1, phases at the roots of unity); w ~ CN(0, 1) / N.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Linear
from .factors import TimeInvariant
from .linear import LinearCell
from .options import check_range
from .registry import register
from .ssm_init import farange, log_uniform


@register("dlr")
class DLR(LinearCell):
    """DLR cell. State ``(B, H, N)`` complex; ``u_t: (B, H)``; output ``(B, H)``.

    Paper: Gupta, Mehta, Berant, "Simplifying and Understanding State Space Models with
    Diagonal Linear RNNs", 2022, https://arxiv.org/abs/2212.00768

    Example:

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("dlr", input_size=3, hidden_size=8, state_size=16)
    >>> y, h = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, h.shape, h.dtype
    (torch.Size([2, 5, 8]), torch.Size([2, 8, 16]), torch.complex64)
    """

    structure = Linear("complex_diagonal")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 64,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_range("DLR", "state_size", state_size, 1)
        kw = dict(device=device, dtype=dtype)
        H, N = hidden_size, state_size
        self.state_size = N
        self.in_proj = nn.Linear(input_size, H, **kw)
        self.log_decay = nn.Parameter(torch.log(log_uniform((H, N), 1e-4, 1e-1, **kw) / 2))
        self.theta = nn.Parameter((2 * math.pi / N * farange(N, **kw)).repeat(H, 1))
        self.w_re = nn.Parameter(torch.randn(H, N, **kw) / (math.sqrt(2) * N))
        self.w_im = nn.Parameter(torch.randn(H, N, **kw) / (math.sqrt(2) * N))

    def state_shapes(self):
        return ((self.hidden_size, self.state_size),)

    def project(self, x):
        return self.in_proj(x)  # (B, T, D) -> (B, T, H)

    def factors(self, u):
        lam = torch.exp(torch.complex(-torch.exp(self.log_decay), self.theta))  # (H, N)
        ones = torch.ones_like(lam)  # B = 1: every mode takes the channel's input
        return TimeInvariant(u, lam, ones, torch.complex(self.w_re, self.w_im))

    def finish(self, o, u):
        return o  # (..., H)
