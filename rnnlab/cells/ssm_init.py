"""Initializations shared by the state-space cells (S4D, LSSL, Mamba)."""
from __future__ import annotations

import math

import torch

from .options import check_range


def farange(n: int, device=None, dtype=None) -> torch.Tensor:
    """``0., 1., ..., n-1`` as floats (``torch.arange`` with ``dtype=None`` gives integers)."""
    return torch.arange(n, device=device, dtype=dtype or torch.get_default_dtype())


def log_uniform(shape, low: float, high: float, **kw) -> torch.Tensor:
    """Samples whose log is uniform in [log low, log high] (SSM step sizes), within the dtype's
    positive normal numbers: a step below them would round to 0, whose log is -inf."""
    x = torch.exp(torch.empty(shape, **kw).uniform_(math.log(low), math.log(high)))
    return x.clamp(torch.finfo(x.dtype).tiny, torch.finfo(x.dtype).max)


def check_dt_range(owner: str, dt_min: float, dt_max: float) -> None:
    """The range of the init's step sizes: ``0 < dt_min <= dt_max``, both finite."""
    check_range(owner, "dt_max", dt_max, 0, low_open=True)
    check_range(owner, "dt_min", dt_min, 0, dt_max, low_open=True, note=" (at most dt_max)")


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """x with softplus(x) = y, stable for small y: y + log(-expm1(-y))."""
    return y + torch.log(-torch.expm1(-y))


def hippo_legs(n: int, **kw):
    """HiPPO-LegS (A, B): A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) on the diagonal, 0 above;
    B_n = sqrt(2n+1)."""
    q = torch.sqrt(2 * farange(n, **kw) + 1.0)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(farange(n, **kw) + 1.0)
    return A, q
