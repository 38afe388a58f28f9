"""Mamba-2's SSD layer (Dao & Gu 2024): one scalar decay per head, a matrix state per head.

    a_t = exp(dt_t A_h),   H_t = a_t H_{t-1} + (dt_t x_t) B_t^T  in R^{P x N}
    y_t = H_t C_t + D_h x_t

with x, dt, B, C from one input projection, dt = softplus(. + dt_bias). Init: A_h ~ U[1, 16]
(stored as a log, A = -exp(A_log)), dt log-uniform in [dt_min, dt_max], D = 1.
``allow_neg_eigval=True`` maps a to 2a - 1. H = heads * head_dim.

``decay_scale``, ``state_norm`` and ``window`` are the training-free state-collapse mitigations of
Chen et al. 2024 (``mitigations.py``), off by default.

The block around it (in_proj to z, [x, B, C] and dt; causal conv + SiLU on [x, B, C]; the scan;
gated RMSNorm ``norm(y * SiLU(z))``; out_proj) is ``rnnlab.models.mixers.Mamba2Layer``, which
feeds the cell [x, dt, B, C] with ``in_proj=False``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Linear
from .factors import OuterProduct
from .linear import LinearCell
from .mitigations import Mitigated
from .options import check_range
from .projection import input_projection
from .registry import register
from .ssm_init import check_dt_range, inverse_softplus, log_uniform


@register("mamba2")
class Mamba2(Mitigated, LinearCell):
    """SSD cell (Mamba-2, https://arxiv.org/abs/2405.21060). State ``(B, heads, P, N)``;
    ``u_t: (B, H + heads + 2N)`` = [x, dt, B_t, C_t].

    ``in_proj=False``: no input projection, the input is [x, dt, B_t, C_t] itself (needs
    ``input_size == H + heads + 2N``), as the published block gives it.

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("mamba2", input_size=8, hidden_size=16, head_dim=8)
    >>> y, h = layer(torch.randn(2, 5, 8))
    >>> tuple(y.shape), tuple(h.shape)
    ((2, 5, 16), (2, 2, 8, 16))
    """

    structure = Linear("scalar")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 16,
                 head_dim: int | None = None, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 allow_neg_eigval: bool = False, in_proj: bool = True, decay_scale: float = 1.0,
                 state_norm: float | None = None, window: int = 0, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_range("Mamba2", "state_size", state_size, 1)
        check_range("Mamba2", "head_dim", head_dim, 1, optional=True)
        check_dt_range("Mamba2", dt_min, dt_max)
        P = min(hidden_size, 64) if head_dim is None else head_dim
        if hidden_size % P:
            raise ValueError(f"Mamba2: head_dim must divide hidden_size={hidden_size}, got {P}")
        kw = dict(device=device, dtype=dtype)
        self.heads, self.head_dim, self.state_size = hidden_size // P, P, state_size
        self.allow_neg_eigval = allow_neg_eigval
        width = hidden_size + self.heads + 2 * state_size
        self.in_proj = input_projection("Mamba2", in_proj, input_size, width, "[x, dt, B, C]", **kw)
        self.dt_bias = nn.Parameter(inverse_softplus(log_uniform((self.heads,), dt_min, dt_max,
                                                                 **kw)))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads, **kw).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(self.heads, **kw))
        self.init_mitigations(decay_scale, state_norm, window)

    def state_shapes(self):
        return self.with_ring(((self.heads, self.head_dim, self.state_size),))

    def window_shapes(self):
        n = self.heads
        return ((n, self.state_size), (n, self.head_dim), (n,))  # k = B_t, v = dt x, decay

    def project(self, x):
        return self.in_proj(x)  # (B, T, D) -> (B, T, H + heads + 2N)

    def _split(self, u):
        H, n, N = self.hidden_size, self.heads, self.state_size
        x, dt, b_t, c_t = u.split([H, n, N, N], dim=-1)
        x = x.unflatten(-1, (n, self.head_dim))  # (..., H) -> (..., heads, P)
        return x, F.softplus(dt + self.dt_bias), b_t, c_t

    def factors(self, u):
        x, dt, b_t, c_t = self._split(u)
        heads = (*b_t.shape[:-1], self.heads, self.state_size)
        q = c_t.unsqueeze(-2).expand(heads)  # (..., N) -> (..., heads, N): shared by the heads
        k = b_t.unsqueeze(-2).expand(heads)
        v = dt.unsqueeze(-1) * x  # (..., heads, P)
        log_a = self.scaled(-torch.exp(self.A_log) * dt)  # (..., heads)
        if self.allow_neg_eigval:  # a = 2 e^{log a} - 1 may be negative: no real log
            return OuterProduct(q, k, v, a=2 * torch.exp(log_a) - 1, transposed=True)
        return OuterProduct(q, k, v, g=log_a, transposed=True)

    def finish(self, o, u):
        x = self._split(u)[0]
        return (o + self.D[:, None] * x).flatten(-2)  # (..., heads, P) -> (..., H)
