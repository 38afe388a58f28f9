"""GLA, gated linear attention (Yang et al. 2024): a matrix state per head with a data-dependent
decay on its key dimension.

    S_t = diag(alpha_t) S_{t-1} + k_t v_t^T  in R^{K x V},   o_t = S_t^T q_t

q, k, v, alpha from the input; log alpha_t = logsigmoid(W_2 W_1 x_t + b) / tau with a rank-16
W_2 W_1 and tau = 16 (slow forgetting at init); q scaled by K^-1/2. H = heads * V. The output
norm and gate of the GLA block belong to the model layer.

``decay_scale``, ``state_norm``, ``window``: Stuffed Mamba's training-free state-collapse
mitigations (off by default), as ``mamba2.py``'s docstring describes them; the ring of
``window`` holds k, v and the per-key decay.
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
from .registry import register


@register("gla")
class GLA(Mitigated, LinearCell):
    """GLA cell. State ``(B, heads, K, V)``; ``u_t: (B, heads * (3K + V))`` = [q, k, log a, v].

    Paper: Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training",
    ICML 2024, https://arxiv.org/abs/2312.06635

    Example (the scan engine runs the chunkwise form; the states are never materialised):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("gla", 4, 8, heads=2)
    >>> x = torch.randn(2, 5, 4)  # (B, T, D)
    >>> y, S = rnnlab.Recurrent(cell, engine="scan")(x)
    >>> y.shape, S.shape  # S: (B, heads, K, V) with K = V / 2
    (torch.Size([2, 5, 8]), torch.Size([2, 2, 2, 4]))
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    structure = Linear("diagonal")

    def __init__(self, input_size: int, hidden_size: int, heads: int = 1,
                 key_dim: int | None = None, gate_rank: int = 16, tau: float = 16.0,
                 decay_scale: float = 1.0, state_norm: float | None = None, window: int = 0,
                 device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        self.init_heads(heads, key_dim)
        check_range("GLA", "gate_rank", gate_rank, 1)
        check_range("GLA", "tau", tau, 0, low_open=True)
        if key_dim is None:
            self.key_dim = max(1, self.value_dim // 2)  # d_k = d_v / 2 as the paper
        kw = dict(device=device, dtype=dtype)
        self.tau = tau
        nk = heads * self.key_dim
        self.qkv = nn.Linear(input_size, 2 * nk + hidden_size, bias=False, **kw)
        self.gate = nn.Sequential(nn.Linear(input_size, gate_rank, bias=False, **kw),
                                  nn.Linear(gate_rank, nk, **kw))
        self.init_mitigations(decay_scale, state_norm, window)

    def state_shapes(self):
        return self.with_ring(((self.heads, self.key_dim, self.value_dim),))

    def window_shapes(self):
        n, K = self.heads, self.key_dim
        return ((n, K), (n, self.value_dim), (n, K, 1))  # k, v, the decay per key

    def project(self, x):
        nk = self.heads * self.key_dim
        q, k, v = self.qkv(x).split([nk, nk, self.hidden_size], dim=-1)
        log_a = F.logsigmoid(self.gate(x)) / self.tau
        return torch.cat([q * self.key_dim ** -0.5, k, log_a, v], dim=-1)  # (B, T, P)

    def _split(self, u):
        """q, k, log a: (..., heads, K); v: (..., heads, V)."""
        nk = self.heads * self.key_dim
        q, k, log_a, v = u.split([nk, nk, nk, self.hidden_size], dim=-1)
        heads = (self.heads, -1)
        return (q.unflatten(-1, heads), k.unflatten(-1, heads), log_a.unflatten(-1, heads),
                v.unflatten(-1, heads))

    def factors(self, u):
        q, k, log_a, v = self._split(u)
        return OuterProduct(q, k, v, g=self.scaled(log_a))  # decays per key, broadcast over V

    def finish(self, o, u):
        return o.flatten(-2)  # (..., heads, V) -> (..., H)
