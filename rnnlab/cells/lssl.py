"""LSSL (Gu et al. 2021): a dense state matrix per channel, HiPPO-LegS init, bilinear
discretization, one single-input single-output copy per channel.

    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = C x_t + D u_t,   u = W_in x + b_in
    A_bar = (I - dt A / 2)^-1 (I + dt A / 2),   B_bar = (I - dt A / 2)^-1 dt B

dt log-uniform in [dt_min, dt_max] per channel; A and B start at HiPPO-LegS (A trainable unless
``learn_A=False``). Runs on the ``matrix`` scan: O(N^3) per combine, so keep N small.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Linear
from .factors import TimeInvariant
from .linear import LinearCell
from .options import check_range
from .registry import register
from .ssm_init import check_dt_range, hippo_legs, log_uniform


@register("lssl")
class LSSL(LinearCell):
    """LSSL cell. State ``(B, H, N)``; ``u_t: (B, H)``.

    Paper: Gu et al., "Combining Recurrent, Convolutional, and Continuous-time Models with
    Linear State-Space Layers", NeurIPS 2021, https://arxiv.org/abs/2110.13985

    Example:

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("lssl", input_size=3, hidden_size=8, state_size=4)
    >>> y, h = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, h.shape
    (torch.Size([2, 5, 8]), torch.Size([2, 8, 4]))
    """

    structure = Linear("matrix")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 16,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, learn_A: bool = True,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_range("LSSL", "state_size", state_size, 1)
        check_dt_range("LSSL", dt_min, dt_max)
        kw = dict(device=device, dtype=dtype)
        H, N = hidden_size, state_size
        self.state_size = N
        self.in_proj = nn.Linear(input_size, H, **kw)
        A, B = hippo_legs(N, **kw)
        if learn_A:
            self.A = nn.Parameter(A)
        else:
            self.register_buffer("A", A)
        self.B = nn.Parameter(B)
        self.log_dt = nn.Parameter(torch.log(log_uniform((H,), dt_min, dt_max, **kw)))
        self.C = nn.Parameter(torch.randn(H, N, **kw) / N ** 0.5)
        self.D = nn.Parameter(torch.ones(H, **kw))

    def state_shapes(self):
        return ((self.hidden_size, self.state_size),)

    def project(self, x):
        return self.in_proj(x)  # (B, T, D) -> (B, T, H)

    def discrete(self):
        """(A_bar (H, N, N), B_bar (H, N)) by the bilinear transform."""
        dt = torch.exp(self.log_dt)[:, None, None]  # (H, 1, 1)
        eye = torch.eye(self.state_size, dtype=self.A.dtype, device=self.A.device)
        left = eye - dt * self.A / 2  # (H, N, N)
        a_bar = torch.linalg.solve(left, eye + dt * self.A / 2)
        b_bar = torch.linalg.solve(left, (dt[..., 0] * self.B).unsqueeze(-1)).squeeze(-1)
        return a_bar, b_bar

    def factors(self, u):
        a_bar, b_bar = self.discrete()
        return TimeInvariant(u, a_bar, b_bar, self.C)

    def finish(self, o, u):
        return o + self.D * u  # (..., H)
