"""Mamba's selective state-space layer S6 (Gu & Dao 2023), as in the reference code:

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d]     (ZOH A, Euler B)
    y_t[d]    = sum_n C_t[n] h_t[d, n] + D[d] x_t[d]

with x = W_in u, dt = softplus(W_up W_down x + b_dt) (rank ceil(D/16)), B_t = W_B x, C_t = W_C x.
Init: A = -exp(A_log), A_log[d, n] = log(n + 1); b_dt = softplus^-1(dt), dt log-uniform in
[dt_min, dt_max] floored at dt_floor; D = 1. ``allow_neg_eigval=True`` maps the decay a to
2a - 1 in (-1, 1] (Grazzi et al. 2024), which lets the cell track parity.

The block around it (in_proj to x and z, causal conv + SiLU on x, the scan, ``y * SiLU(z)``,
out_proj) is ``rnnlab.models.mixers.MambaLayer`` (``block="published"`` in the models); it feeds
the cell the conv's output with ``in_proj=False``, so W_in is the identity there.

``decay_scale``, ``state_norm``, ``window``: Stuffed Mamba's training-free state-collapse
mitigations (off by default), as ``mamba2.py``'s docstring describes them; here a "head" of
``state_norm`` is one channel's N numbers, and the ring of ``window`` holds x, dt, B and the
decay (H, N) of each step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Linear
from .factors import Selective
from .linear import LinearCell
from .mitigations import Mitigated
from .options import check_range
from .projection import input_projection
from .registry import register
from .ssm_init import check_dt_range, farange, inverse_softplus, log_uniform


@register("mamba")
class Mamba(Mitigated, LinearCell):
    """S6 cell (Mamba, https://arxiv.org/abs/2312.00752). State ``(B, H, N)`` real;
    ``u_t: (B, 2H + 2N)`` = [x, dt, B_t, C_t].

    ``in_proj=False``: no W_in, x is the input itself (needs ``input_size == hidden_size``); the
    published block's conv output feeds the cell this way.

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("mamba", input_size=8, hidden_size=16)
    >>> y, h = layer(torch.randn(2, 5, 8))
    >>> tuple(y.shape), tuple(h.shape)
    ((2, 5, 16), (2, 16, 16))
    """

    structure = Linear("diagonal")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 16,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_floor: float = 1e-4, allow_neg_eigval: bool = False, in_proj: bool = True,
                 decay_scale: float = 1.0, state_norm: float | None = None, window: int = 0,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_range("Mamba", "state_size", state_size, 1)
        check_range("Mamba", "dt_rank", dt_rank, 1, optional=True)
        check_dt_range("Mamba", dt_min, dt_max)
        check_range("Mamba", "dt_floor", dt_floor, 0)
        kw = dict(device=device, dtype=dtype)
        H, N = hidden_size, state_size
        R = math.ceil(input_size / 16) if dt_rank is None else dt_rank
        self.state_size, self.dt_rank, self.allow_neg_eigval = N, R, allow_neg_eigval
        self.in_proj = input_projection("Mamba", in_proj, input_size, H, "x", **kw)  # W_in
        self.x_proj = nn.Linear(H, R + 2 * N, bias=False, **kw)
        self.dt_proj = nn.Linear(R, H, **kw)
        with torch.no_grad():
            dt = log_uniform((H,), dt_min, dt_max, **kw).clamp(min=dt_floor)
            self.dt_proj.bias.copy_(inverse_softplus(dt))
        self.A_log = nn.Parameter(torch.log(farange(N, **kw) + 1).repeat(H, 1))
        self.D = nn.Parameter(torch.ones(H, **kw))
        self.init_mitigations(decay_scale, state_norm, window)

    def state_shapes(self):
        return self.with_ring(((self.hidden_size, self.state_size),))

    def window_shapes(self):
        H, N = self.hidden_size, self.state_size
        return ((H,), (H,), (N,), (H, N))  # x, dt, B, the decay

    def project(self, x):
        xin = self.in_proj(x)  # (B, T, D) -> (B, T, H)
        low, b_t, c_t = self.x_proj(xin).split([self.dt_rank, self.state_size, self.state_size], -1)
        dt = F.softplus(self.dt_proj(low))  # (B, T, H)
        return torch.cat([xin, dt, b_t, c_t], dim=-1)  # (B, T, 2H + 2N)

    def _split(self, u):
        H, N = self.hidden_size, self.state_size
        return u.split([H, H, N, N], dim=-1)

    def factors(self, u):
        xin, dt, b_t, c_t = self._split(u)
        # a^s = exp(dt s A): decay_scale scales A (untouched at s = 1)
        A = self.scaled(-torch.exp(self.A_log))
        return Selective(xin, dt, A, b_t, c_t, self.allow_neg_eigval)

    def finish(self, o, u):
        return o + self.D * self._split(u)[0]  # (..., H)
