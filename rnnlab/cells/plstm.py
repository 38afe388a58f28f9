"""pLSTM, 1-D (Pöppel et al. 2025): a linear recurrence whose state sits on the edges of the
chain graph, with source, transition, mark and direct gates.

    C_t = T_t C_{t-1} + S_t k_t v_t^T          C_t in R^{K x V x J}: the edge t -> t+1
    y_t = M_t (C_{t-1}^T q_t) + D_t (q_t . k_t) v_t

Node t reads the edge that comes *in* (C_{t-1}) through its mark M_t (a J-vector) and adds a
direct term; it writes its out-edge through its source S_t (a J-vector) and the J x J
transition T_t = U_out diag(tanh(5 (W x_t + b))) U_in with U_in, U_out orthogonal (the matrix
exponential of a skew-symmetric parameter): the "long-range" transition, norm <= 1.

The engines' contract reads the output from the *new* state, so the state carries both edges,
``h_t = [C_t, C_{t-1}]`` on a last axis of 2J, and A_t = [[T_t, 0], [I, 0]] (kind ``matrix``).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import Linear
from .linear import LinearCell
from .options import check_range
from .registry import register


def orthogonal(skew_param: torch.Tensor) -> torch.Tensor:
    """exp(A - A^T): orthogonal, ``(..., J, J)``, in the dtype of ``skew_param``.

    Computed in float64 (where the device has it): the backward of ``matrix_exp`` in float32 is
    accurate to only ~1e-5, and the skew-symmetric projection cancels most of the gradient of U
    (|dL/dU| ~ 10 |dL/dA|), so the parameters' gradients came out 2e-5 off between two runs that
    differ by rounding alone. The matrices are tiny (heads x J x J), so this costs nothing."""
    work = torch.float32 if skew_param.device.type == "mps" else torch.float64
    A = skew_param.to(work)
    return torch.linalg.matrix_exp(A - A.transpose(-1, -2)).to(skew_param.dtype)


@register("plstm")
class PLSTM(LinearCell):
    """pLSTM cell on a line. State ``(B, heads, K, V, 2J)`` (out-edge and in-edge);
    ``u_t: (B, P)`` = [q, k, v, transition, source, mark, direct] pre-activations.

    Paper: Pöppel et al., "pLSTM: parallelizable Linear Source Transition Mark networks",
    2025, https://arxiv.org/abs/2506.11997

    Example:

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("plstm", 4, 8, heads=2, edge_dim=2)
    >>> x = torch.randn(2, 5, 4)  # (B, T, D)
    >>> y, C = rnnlab.Recurrent(cell, engine="scan")(x)
    >>> y.shape, C.shape  # C: (B, heads, K, V, 2 edge_dim)
    (torch.Size([2, 5, 8]), torch.Size([2, 2, 4, 4, 4]))
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    structure = Linear("matrix")

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, edge_dim: int = 2, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.init_heads(heads, key_dim)
        check_range("PLSTM", "edge_dim", edge_dim, 1)
        kw = dict(device=device, dtype=dtype)
        self.edge_dim = J = edge_dim
        n, nk = heads, heads * self.key_dim
        self.widths = [nk, nk, hidden_size, n * J, n * J, n * J, n]
        self.proj = nn.Linear(input_size, sum(self.widths), **kw)
        # U_in, U_out per head; a small skew part starts them near the identity
        self.skew_in = nn.Parameter(0.1 * torch.randn(n, J, J, **kw))
        self.skew_out = nn.Parameter(0.1 * torch.randn(n, J, J, **kw))

    def state_shapes(self):
        return ((self.heads, self.key_dim, self.value_dim, 2 * self.edge_dim),)

    def project(self, x):
        return self.proj(x)  # (B, T, D) -> (B, T, P)

    def _split(self, u):
        """q, k: (..., n, K); v: (..., n, V); t, s, m: (..., n, J); d: (..., n)."""
        q, k, v, t, s, m, d = u.split(self.widths, dim=-1)
        n = (self.heads, -1)
        q, k, v, t, s, m = (z.unflatten(-1, n) for z in (q, k, v, t, s, m))
        return q * self.key_dim ** -0.5, k, v, t, torch.sigmoid(s), torch.sigmoid(m), d

    def transition(self, u):
        q, k, v, t, s, _, _ = self._split(u)
        J = self.edge_dim
        T = orthogonal(self.skew_out) @ (torch.tanh(5 * t).unsqueeze(-1)
                                         * orthogonal(self.skew_in))  # (B, T, n, J, J)
        A = T.new_zeros(*T.shape[:-2], 2 * J, 2 * J)
        A[..., :J, :J] = T
        A[..., J:, :J] = torch.eye(J, dtype=T.dtype, device=T.device)  # in-edge <- out-edge
        kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # (B, T, n, K, V)
        b_out = kv.unsqueeze(-1) * s[..., None, None, :]  # (B, T, n, K, V, J)
        b = torch.cat([b_out, torch.zeros_like(b_out)], dim=-1)  # (B, T, n, K, V, 2J)
        K, V = self.key_dim, self.value_dim
        A = A[..., None, None, :, :].expand(*A.shape[:-2], K, V, 2 * J, 2 * J)  # a view
        return A, b  # A: (B, T, n, K, V, 2J, 2J)

    def readout(self, h, u_t):
        q, k, v, _, _, m, d = self._split(u_t)
        c_in = h[..., self.edge_dim:]  # (..., n, K, V, J): C_{t-1}
        read = torch.einsum("...kvj,...k,...j->...v", c_in, q, m)  # M_t C_{t-1}^T q_t
        direct = torch.sigmoid(d).unsqueeze(-1) * (q * k).sum(-1, keepdim=True) * v
        return (read + direct).flatten(-2)  # (..., n, V) -> (..., H)
