"""LRU, the linear recurrent unit (Orvieto et al. 2023): complex diagonal, ring init, gamma
normalization.

    x_t = lam * x_{t-1} + gamma * (B u_t),   y_t = Re(C x_t) + D u_t

lam_j = exp(-exp(nu_log_j) + i exp(theta_log_j)); ring init: |lam| uniform on the ring
[r_min, r_max] (in squared radius), phase uniform in [0, max_phase]; gamma = sqrt(1 - |lam|^2)
(trainable, stored as a log). B ~ N(0, 1/(2D)), C ~ N(0, 1/N) per real/imaginary part,
D ~ N(0, 1/D).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Linear
from .linear import LinearCell
from .options import check_range
from .registry import register


@register("lru")
class LRU(LinearCell):
    """LRU cell. State ``(B, N)`` complex; ``u_t: (B, 2N + H)`` = [Re, Im of gamma B x, D x].

    Paper: Orvieto et al., "Resurrecting Recurrent Neural Networks for Long Sequences",
    ICML 2023, https://arxiv.org/abs/2303.06349

    Example (eigenvalues on the ring ``0.9 <= |lam| <= 1``):

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("lru", input_size=3, hidden_size=8, state_size=16, r_min=0.9)
    >>> y, h = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, h.shape, h.dtype
    (torch.Size([2, 5, 8]), torch.Size([2, 16]), torch.complex64)
    """

    structure = Linear("complex_diagonal")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 64,
                 r_min: float = 0.0, r_max: float = 1.0, max_phase: float = 2 * math.pi,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_range("LRU", "state_size", state_size, 1)
        check_range("LRU", "r_min", r_min, 0, 1, high_open=True)
        check_range("LRU", "r_max", r_max, r_min, 1, low_open=True, note=" (above r_min)")
        check_range("LRU", "max_phase", max_phase, 0, low_open=True)
        kw = dict(device=device, dtype=dtype)
        D, H, N = input_size, hidden_size, state_size
        self.state_size = N
        u1, u2 = torch.rand(N, **kw), torch.rand(N, **kw)
        # Radius^2, nu and phase kept >= the smallest normal number, so that the logs stored are
        # finite (a draw of 0, a tiny r_max or max_phase, or r_min near 1 would round them to 0).
        tiny = torch.finfo(u1.dtype).tiny
        nu = -0.5 * torch.log((u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2).clamp_min(tiny))
        nu = nu.clamp_min(tiny)
        self.nu_log = nn.Parameter(torch.log(nu))
        self.theta_log = nn.Parameter(torch.log((u2 * max_phase).clamp_min(tiny)))
        self.gamma_log = nn.Parameter(0.5 * torch.log(-torch.expm1(-2 * nu)))  # sqrt(1-|lam|^2)
        self.b_re = nn.Parameter(torch.randn(N, D, **kw) / math.sqrt(2 * D))
        self.b_im = nn.Parameter(torch.randn(N, D, **kw) / math.sqrt(2 * D))
        self.c_re = nn.Parameter(torch.randn(H, N, **kw) / math.sqrt(N))
        self.c_im = nn.Parameter(torch.randn(H, N, **kw) / math.sqrt(N))
        self.skip = nn.Parameter(torch.randn(H, D, **kw) / math.sqrt(D))

    def state_shapes(self):
        return ((self.state_size,),)

    def project(self, x):
        gamma = torch.exp(self.gamma_log)
        bx_re = (x @ self.b_re.T) * gamma  # (B, T, D) -> (B, T, N)
        bx_im = (x @ self.b_im.T) * gamma
        return torch.cat([bx_re, bx_im, x @ self.skip.T], dim=-1)  # (B, T, 2N + H)

    def transition(self, u):
        N = self.state_size
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        b = torch.complex(u[..., :N], u[..., N:2 * N])  # (B, T, N)
        return lam.expand_as(b), b

    def readout(self, h, u_t):
        c = torch.complex(self.c_re, self.c_im)
        return (h @ c.T).real + u_t[..., 2 * self.state_size:]  # (B, N) -> (B, H)
