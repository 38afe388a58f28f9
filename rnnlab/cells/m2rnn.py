"""M²RNN (Mishra, Tan, Stoica, Gonzalez, Dao 2026): a nonlinear RNN with a matrix state per head,
recurring through an input-independent V x V matrix W.

Per head, with state H in R^{K x V}:

    f_t = exp(-exp(A_log) * softplus(x_f + dt_bias))        (one scalar per head, Mamba-2 style)
    Z_t = tanh(H_{t-1} W + k_t v_t^T)
    H_t = f_t H_{t-1} + (1 - f_t) Z_t
    y_t = H_t^T q_t + D * v_t                                (in R^V; H = heads V, concatenated)

q, k (K each), v (V) and x_f come from one bias-free input projection; ``shared_qk=True`` uses
one q/k head for all value heads (the paper's 400M config: one q/k head, 84 value heads). The
layer around the cell (causal depthwise conv + SiLU on q, k, v; out_proj(RMSNorm(y * silu(g))))
belongs to the block, and so does the backward clipping of the state gradient at 1.

Init as the notes: W = identity, A ~ U(1e-3, 16) stored as A_log (the notes' U(0, 16), kept off
0 so the log is finite), dt log-uniform in [1e-3, 0.1] stored as dt_bias = softplus^-1(dt), D = 1,
the input projection as ``nn.Linear``'s default.

Structure. The state (heads, K, V) flattens with flat index (head K + row) V + column. Row r of
head g, H[g, r, :], depends only on itself: H W mixes the V columns of a row, tanh and the gate
are elementwise, nothing mixes rows or heads. So the step Jacobian is block-diagonal with
heads*K blocks of V x V: ``Heads(heads * K, V)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool, check_int
from .base import Cell, Heads
from .registry import register
from .ssm_init import inverse_softplus, log_uniform

DT_RANGE = (1e-3, 1e-1)  # dt log-uniform in this range at init
A_RANGE = (1e-3, 16.0)  # A = exp(A_log) uniform in this range at init


@register("m2rnn")
class M2RNN(Cell):
    """M²RNN cell. State ``(B, heads, K, V)``; ``u_t: (B, 2 qk_heads K + H + heads)`` =
    [q, k, v, x_f]; ``readout``: ``(B, H)`` with ``H = heads * V``.

    Paper: Mishra, Tan, Stoica, Gonzalez, Dao, M²RNN, 2026, https://arxiv.org/abs/2603.14360

    Example:

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("m2rnn", input_size=3, hidden_size=8, heads=2, key_dim=3)
    >>> y, H = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, H.shape  # H: (B, heads, K, V)
    (torch.Size([2, 5, 8]), torch.Size([2, 2, 3, 4]))
    """

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, shared_qk: bool = False, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_int("M2RNN", "heads", heads, 1)
        check_int("M2RNN", "key_dim", key_dim, 1, optional=True)
        if hidden_size % heads:
            raise ValueError(f"M2RNN: heads must divide hidden_size={hidden_size}, got {heads}")
        check_bool("M2RNN", "shared_qk", shared_qk)
        kw = dict(device=device, dtype=dtype)
        self.heads, self.value_dim = heads, hidden_size // heads
        self.key_dim = self.value_dim if key_dim is None else key_dim
        self.qk_heads = 1 if shared_qk else heads
        self.structure = Heads(heads * self.key_dim, self.value_dim)
        nk = self.qk_heads * self.key_dim
        self.in_proj = nn.Linear(input_size, 2 * nk + hidden_size + heads, bias=False, **kw)
        V = self.value_dim
        self.W = nn.Parameter(torch.eye(V, **kw).repeat(heads, 1, 1))  # (heads, V, V)
        self.A_log = nn.Parameter(torch.log(torch.empty(heads, **kw).uniform_(*A_RANGE)))
        self.dt_bias = nn.Parameter(inverse_softplus(log_uniform((heads,), *DT_RANGE, **kw)))
        self.D = nn.Parameter(torch.ones(hidden_size, **kw))  # (heads * V,) skip weights

    def state_shapes(self):
        return ((self.heads, self.key_dim, self.value_dim),)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.in_proj(x)  # (B, T, D) -> (B, T, 2 qk_heads K + H + heads)

    def split(self, u: torch.Tensor):
        """``u: (B, P)`` -> q, k ``(B, qk_heads, K)``, v ``(B, heads, V)``, f ``(B, heads)``."""
        nk, H, n = self.qk_heads * self.key_dim, self.hidden_size, self.heads
        q, k, v, x_f = u.split([nk, nk, H, n], dim=-1)
        q = q.unflatten(-1, (self.qk_heads, self.key_dim))  # (B, nk) -> (B, qk_heads, K)
        k = k.unflatten(-1, (self.qk_heads, self.key_dim))  # (B, nk) -> (B, qk_heads, K)
        v = v.unflatten(-1, (n, self.value_dim))  # (B, H) -> (B, heads, V)
        f = torch.exp(-torch.exp(self.A_log) * F.softplus(x_f + self.dt_bias))  # (B, heads)
        return q, k, v, f

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        Z, f = self._mix(u_t, h)
        return Z + f * (h - Z)  # = f H + (1 - f) Z

    def _mix(self, u_t: torch.Tensor, h: torch.Tensor):
        """The step's candidate Z ``(B, heads, K, V)`` and gate f ``(B, heads, 1, 1)``."""
        _, k, v, f = self.split(u_t)
        write = k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, qk_heads, K, 1) * (B, heads, 1, V)
        Z = torch.tanh(h @ self.W + write)  # (B, heads, K, V) @ (heads, V, V) -> (B, heads, K, V)
        return Z, f[..., None, None]  # f: (B, heads) -> (B, heads, 1, 1)

    def quasi_jacobian(self, u_t: torch.Tensor, h: torch.Tensor):
        """``(step(u_t, h), (d,))`` with ``d: (B, 1, heads K V)`` the diagonal of the step
        Jacobian: ``(H W)[g, r, v]`` moves with ``H[g, r, v]`` by ``W[g, v, v]``, so
        ``d H'[g, r, v] / d H[g, r, v] = f + (1 - f)(1 - Z^2) W[g, v, v]``."""
        Z, f = self._mix(u_t, h)
        wd = self.W.diagonal(dim1=-2, dim2=-1).unsqueeze(-2)  # (heads, V, V) -> (heads, 1, V)
        d = f + (1 - f) * (1 - Z * Z) * wd  # (B, heads, K, V)
        return Z + f * (h - Z), (d.flatten(1).unsqueeze(1),)  # -> (B, 1, heads K V)

    def readout(self, h: torch.Tensor, u_t: torch.Tensor) -> torch.Tensor:
        q, _, v, _ = self.split(u_t)
        y = (h * q.unsqueeze(-1)).sum(-2)  # H^T q: (B, heads, K, V), (B, qk, K, 1) -> (B, heads, V)
        return y.flatten(-2) + self.D * v.flatten(-2)  # (B, heads, V) -> (B, H)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, heads={self.heads}, key_dim={self.key_dim}, "
                f"shared_qk={self.qk_heads == 1 and self.heads > 1}")
