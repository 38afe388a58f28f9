"""The delta-rule family: DeltaNet, Gated DeltaNet, DeltaProduct. A matrix state per head, updated
by one (or n_h) online regression steps on 1/2 ||S^T k - v||^2:

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T  in R^{K x V}
    o_t = S_t^T q_t

q, k pass SiLU then L2 normalization per head (needed: the eigenvalues of the transition are 1
and 1 - beta ||k||^2); beta = sigmoid(.) in (0, 1), or 2 sigmoid(.) in (0, 2) with
``allow_neg_eigval=True`` (Grazzi et al. 2024), which lets a layer track parity. H = heads * V,
K = V = head dim unless ``key_dim`` says otherwise.

The published layer around a cell (q, k, v, beta projections; short causal convs on q, k, v with
SiLU; the output RMSNorm per head, gated in Gated DeltaNet and DeltaProduct; o_proj) is
``rnnlab.models.mixers.DeltaLayer``: it feeds the cell its projected input with ``in_proj=False``.
The convs' SiLU on q and k is the cell's own (``_qk``), so the layer leaves them linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int
from .base import Linear
from .linear import LinearCell
from .projection import check_in_proj, input_projection
from .registry import register
from .ssm_init import check_dt_range, inverse_softplus, log_uniform


class DeltaCell(LinearCell):
    """Base of the family: subclasses write ``project`` and ``delta_inputs(u) -> (q, k, v, beta,
    g)`` with q, k ``(B, T, heads, K)``, v ``(B, T, heads, V)``, beta ``(B, T, heads)``,
    g ``(B, T, heads)`` log-decay or None. State ``(B, heads, K, V)``."""

    structure = Linear("householder")
    substeps = 1  # Householder steps per token (DeltaProduct's n_h); all but the last unread

    def state_shapes(self):
        return ((self.heads, self.key_dim, self.value_dim),)

    def _beta(self, raw: torch.Tensor) -> torch.Tensor:
        return (2 if self.allow_neg_eigval else 1) * torch.sigmoid(raw)

    def _qk(self, raw: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.silu(raw.unflatten(-1, (-1, self.key_dim))), dim=-1)  # (.., heads, K)

    def transition(self, u):
        """Dense ``A: (B, T, heads, K, K)`` and ``b: (B, T, heads, K, V)`` (one token's steps
        multiplied out); the scan engine uses the factored ``delta_inputs`` instead."""
        q, k, v, beta, g = self.delta_inputs(u)
        n = self.substeps
        eye = torch.eye(self.key_dim, dtype=k.dtype, device=k.device)
        A = b = None
        for j in range(n):  # sub-step j of every token: rows j, j + n, ...
            kj, vj, bj = k[:, j::n], v[:, j::n], beta[:, j::n, :, None, None]
            Aj = eye - bj * kj.unsqueeze(-1) * kj.unsqueeze(-2)  # (B, T, heads, K, K)
            bj = bj * kj.unsqueeze(-1) * vj.unsqueeze(-2)  # (B, T, heads, K, V)
            if g is not None:
                Aj = Aj * torch.exp(g[:, j::n, :, None, None])
            A, b = (Aj, bj) if A is None else (Aj @ A, Aj @ b + bj)
        return A, b

    def step(self, u_t, S):
        q, k, v, beta, g = self.delta_inputs(u_t.unsqueeze(1))  # one token, n sub-steps
        for j in range(self.substeps):
            kj, vj, bj = k[:, j], v[:, j], beta[:, j, :, None, None]
            if g is not None:
                S = torch.exp(g[:, j, :, None, None]) * S
            kS = torch.einsum("bnk,bnkv->bnv", kj, S)
            S = S + bj * kj.unsqueeze(-1) * (vj - kS).unsqueeze(-2)  # (B, heads, K, V)
        return S

    def readout(self, S, u_t):
        q = self.delta_inputs(u_t.unsqueeze(1))[0][:, -1]  # (B, heads, K)
        return torch.einsum("bnkv,bnk->bnv", S, q).flatten(-2)  # (B, heads, V) -> (B, H)


@register("deltanet")
class DeltaNet(DeltaCell):
    """DeltaNet (Yang et al. 2024, https://arxiv.org/abs/2406.06484):
    S_t = (I - beta k k^T) S + beta k v^T. ``u_t`` = [q~, k~, v, beta~] (pre-activations).

    ``in_proj=False``: no input projection, the input is ``u`` itself (needs ``input_size ==
    2 heads K + H + heads``), as ``DeltaLayer`` gives it.

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("deltanet", input_size=8, hidden_size=16, heads=2)
    >>> y, S = layer(torch.randn(2, 5, 8))
    >>> tuple(y.shape), tuple(S.shape)
    ((2, 5, 16), (2, 2, 8, 8))
    """

    gated = False  # Gated DeltaNet's u_t has a decay input after beta

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, allow_neg_eigval: bool = False,
                 in_proj: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.init_heads(heads, key_dim)
        self.allow_neg_eigval = allow_neg_eigval
        check_in_proj(type(self).__name__, in_proj, input_size, self.input_width(),
                      f"[q, k, v, beta{', a' if self.gated else ''}]")
        width = 2 * heads * self.key_dim + hidden_size + heads  # q, k, v, beta
        self.proj = nn.Linear(input_size, width, bias=False, device=device, dtype=dtype) \
            if in_proj else nn.Identity()

    def input_width(self) -> int:
        """P, the width of ``u``: what ``in_proj=False`` needs as ``input_size``."""
        return 2 * self.heads * self.key_dim + self.hidden_size + self.heads * (1 + self.gated)

    def project(self, x):
        return self.proj(x)  # (B, T, D) -> (B, T, 2 heads K + H + heads)

    def delta_inputs(self, u):
        nk = self.heads * self.key_dim
        q, k, v, beta = u.split([nk, nk, self.hidden_size, self.heads], dim=-1)
        v = v.unflatten(-1, (self.heads, self.value_dim))
        return self._qk(q), self._qk(k), v, self._beta(beta), None


@register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025, https://arxiv.org/abs/2412.06464):
    S_t = alpha_t (I - beta k k^T) S + beta k v^T with alpha_t = exp(-exp(A_log) softplus(W_a x +
    dt_bias)), A ~ U(0, 16). ``u_t`` = [q~, k~, v, beta~, a~]; ``in_proj=False`` as DeltaNet's.

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("gated_deltanet", input_size=8, hidden_size=16, heads=2)
    >>> tuple(layer(torch.randn(2, 5, 8))[0].shape)
    (2, 5, 16)
    """

    gated = True

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, allow_neg_eigval: bool = False,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, in_proj: bool = True,
                 device=None, dtype=None):
        check_dt_range("GatedDeltaNet", dt_min, dt_max)
        super().__init__(input_size, hidden_size, heads, key_dim, allow_neg_eigval,
                         in_proj=in_proj, device=device, dtype=dtype)
        kw = dict(device=device, dtype=dtype)
        self.decay = nn.Linear(input_size, heads, bias=False, **kw) if in_proj else None
        self.A_log = nn.Parameter(torch.log(torch.empty(heads, **kw).uniform_(1e-3, 16)))
        self.dt_bias = nn.Parameter(inverse_softplus(log_uniform((heads,), dt_min, dt_max, **kw)))

    def project(self, x):
        if self.decay is None:  # in_proj=False: x is u already
            return x
        return torch.cat([self.proj(x), self.decay(x)], dim=-1)  # (B, T, P + heads)

    def delta_inputs(self, u):
        q, k, v, beta, _ = super().delta_inputs(u[..., :-self.heads])
        g = -torch.exp(self.A_log) * F.softplus(u[..., -self.heads:] + self.dt_bias)
        return q, k, v, beta, g


@register("deltaproduct")
class DeltaProduct(DeltaCell):
    """DeltaProduct (Siems et al. 2025, https://arxiv.org/abs/2502.10297): ``substeps`` (n_h)
    Householder steps per token, A_t = alpha_t prod_j (I - beta_j k_j k_j^T). Run as T * n_h
    sub-steps with the decay on the first sub-step and the query on the last. Defaults as the
    reference layer: n_h = 2, beta in (0, 2). ``gated=True`` adds Gated DeltaNet's decay.
    ``u_t`` = [q~, n_h x (k~_j, v_j, beta~_j), a~ if gated]; ``in_proj=False`` as DeltaNet's.

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("deltaproduct", input_size=8, hidden_size=16, heads=2)
    >>> tuple(layer(torch.randn(2, 5, 8))[0].shape)
    (2, 5, 16)
    """

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, substeps: int = 2, allow_neg_eigval: bool = True,
                 gated: bool = False, in_proj: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_int("DeltaProduct", "substeps", substeps, 1)
        self.init_heads(heads, key_dim)
        self.substeps, self.allow_neg_eigval, self.gated = substeps, allow_neg_eigval, gated
        kw = dict(device=device, dtype=dtype)
        nk = heads * self.key_dim
        self.per_step = nk + hidden_size + heads  # k, v, beta of one sub-step
        self.proj = input_projection("DeltaProduct", in_proj, input_size,
                                     nk + substeps * self.per_step + gated * heads,
                                     "[q, n_h x (k, v, beta), decay if gated]", bias=False, **kw)
        if gated:
            self.A_log = nn.Parameter(torch.log(torch.empty(heads, **kw).uniform_(1e-3, 16)))
            self.dt_bias = nn.Parameter(inverse_softplus(log_uniform((heads,), 1e-3, 1e-1, **kw)))

    def project(self, x):
        return self.proj(x)  # (B, T, D) -> (B, T, heads K + n_h (heads K + H + heads) [+ heads])

    def delta_inputs(self, u):
        """Sub-steps flattened into time: every output is ``(B, T * n_h, heads, ...)``."""
        n, nk, H = self.substeps, self.heads * self.key_dim, self.hidden_size
        q, steps, decay = u.split([nk, n * self.per_step, self.gated * self.heads], dim=-1)
        k, v, beta = steps.unflatten(-1, (n, self.per_step)).split([nk, H, self.heads], dim=-1)
        q = self._qk(q).unsqueeze(2)  # (B, T, 1, heads, K)
        q = torch.cat([torch.zeros_like(q).expand(-1, -1, n - 1, -1, -1), q], dim=2)  # last only
        g = None
        if self.gated:
            g0 = (-torch.exp(self.A_log) * F.softplus(decay + self.dt_bias)).unsqueeze(2)
            g = torch.cat([g0, torch.zeros_like(g0).expand(-1, -1, n - 1, -1)], dim=2)  # first only
            g = g.flatten(1, 2)  # (B, T, n_h, heads) -> (B, T * n_h, heads)
        v = v.unflatten(-1, (self.heads, self.value_dim))  # (B, T, n_h, heads, V)
        return (q.flatten(1, 2), self._qk(k).flatten(1, 2), v.flatten(1, 2),
                self._beta(beta).flatten(1, 2), g)
