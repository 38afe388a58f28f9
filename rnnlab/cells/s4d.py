"""S4D (Gu et al. 2022): diagonal state-space model, discretized per channel.

    x_t = A_bar x_{t-1} + B_bar u_t,   y_t = 2 Re(C x_t) + D u_t,   u = W_in x + b_in

with M = N/2 complex modes per channel (conjugate pairs folded into the factor 2).
Discretization ``zoh``: A_bar = exp(dt lam), B_bar = (exp(dt lam) - 1) / lam * B;
``bilinear``: A_bar = (1 + dt lam / 2) / (1 - dt lam / 2), B_bar = dt B / (1 - dt lam / 2).
Inits (lam = -exp(a_re_log) + i a_im): ``lin`` -1/2 + i pi n; ``inv`` -1/2 + i (N/pi)(N/(2n+1) - 1);
``real`` -(n+1). B = 1, C ~ CN(0, 1), dt log-uniform in [dt_min, dt_max].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import check_choice, check_int
from .base import Linear
from .factors import TimeInvariant
from .linear import LinearCell
from .registry import register
from .ssm_init import check_dt_range, farange, log_uniform

INITS = ("lin", "inv", "real")
DISCRETIZATIONS = ("zoh", "bilinear")


def s4d_eigenvalues(init: str, n_modes: int, **kw):
    """(log(-Re lam), Im lam) of the S4D init, each ``(M,)``; N = 2M in the formulas."""
    n = farange(n_modes, **kw)
    N = 2 * n_modes
    if init == "real":
        return torch.log(n + 1.0), torch.zeros_like(n)
    re = torch.full_like(n, math.log(0.5))
    im = math.pi * n if init == "lin" else (N / math.pi) * (N / (2 * n + 1) - 1)
    return re, im


@register("s4d")
class S4D(LinearCell):
    """S4D cell. State ``(B, H, M)`` complex with M = state_size // 2; ``u_t: (B, H)``.

    Paper: Gu, Gupta, Goel, Ré, "On the Parameterization and Initialization of Diagonal State
    Space Models", NeurIPS 2022, https://arxiv.org/abs/2206.11893

    Example (the scan engine runs the FFT convolution):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("s4d", 3, 8, state_size=16, discretization="bilinear")
    >>> x = torch.randn(2, 5, 3)  # (B, T, D)
    >>> y, h = rnnlab.Recurrent(cell, engine="scan")(x)
    >>> y.shape, h.shape, h.dtype
    (torch.Size([2, 5, 8]), torch.Size([2, 8, 8]), torch.complex64)
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    structure = Linear("complex_diagonal")

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 64,
                 init: str = "lin", discretization: str = "zoh", dt_min: float = 1e-3,
                 dt_max: float = 1e-1, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_choice("S4D", "init", init, INITS)
        check_choice("S4D", "discretization", discretization, DISCRETIZATIONS)
        check_int("S4D", "state_size", state_size, 2)
        if state_size % 2:
            raise ValueError(f"S4D: state_size must be even and >= 2, got {state_size}")
        check_dt_range("S4D", dt_min, dt_max)
        kw = dict(device=device, dtype=dtype)
        H, M = hidden_size, state_size // 2
        self.n_modes, self.discretization = M, discretization
        self.in_proj = nn.Linear(input_size, H, **kw)
        self.log_dt = nn.Parameter(torch.log(log_uniform((H,), dt_min, dt_max, **kw)))
        re, im = s4d_eigenvalues(init, M, **kw)
        self.a_re_log = nn.Parameter(re.repeat(H, 1))
        self.a_im = nn.Parameter(im.repeat(H, 1))
        self.b_re = nn.Parameter(torch.ones(H, M, **kw))
        self.b_im = nn.Parameter(torch.zeros(H, M, **kw))
        self.c_re = nn.Parameter(torch.randn(H, M, **kw) / math.sqrt(2))
        self.c_im = nn.Parameter(torch.randn(H, M, **kw) / math.sqrt(2))
        self.skip = nn.Parameter(torch.randn(H, **kw))

    def state_shapes(self):
        return ((self.hidden_size, self.n_modes),)

    def project(self, x):
        return self.in_proj(x)  # (B, T, D) -> (B, T, H)

    def discrete(self):
        """(A_bar, B_bar), each ``(H, M)`` complex."""
        lam = torch.complex(-torch.exp(self.a_re_log), self.a_im)
        dt_lam = torch.exp(self.log_dt)[:, None] * lam  # (H, M)
        b = torch.complex(self.b_re, self.b_im)
        if self.discretization == "zoh":
            return torch.exp(dt_lam), torch.expm1(dt_lam) / lam * b
        dt = torch.exp(self.log_dt)[:, None]  # (H, 1)
        return (1 + dt_lam / 2) / (1 - dt_lam / 2), dt * b / (1 - dt_lam / 2)

    def factors(self, u):
        a_bar, b_bar = self.discrete()
        return TimeInvariant(u, a_bar, b_bar, 2 * torch.complex(self.c_re, self.c_im))

    def finish(self, o, u):
        return o + self.skip * u  # (..., H)
