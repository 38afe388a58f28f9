"""sLSTM (xLSTM, Beck et al. 2024): scalar memory with an exponential input gate, a sigmoid forget
gate kept in log space, a normalizer n and a stabilizer m; the recurrence R is block-diagonal per
head.

    i~, f~, z~, o~ = W x_t + b + R h_{t-1}          (gate order i, f, z, o; R per head)
    log f = logsigmoid(f~)
    m_t  = i~                              where n_{t-1} == 0 (empty memory)
         = max(i~, log f + m_{t-1})        elsewhere
    i' = exp(i~ - m_t),   f' = exp(log f + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' tanh(z~),   n_t = f' n_{t-1} + i'
    h_t = sigmoid(o~) * c_t / max(n_t, 1)

(c, n) are the plain exponential-gate memories scaled by exp(-m_t), so c_t / n_t is the
unstabilized ratio and no exponential overflows. From the zero state, n_t >= 1 exactly at every
step (one of i', f' is exp(0) = 1: either n_t = f' n + 1, or n_t = n + i' with n >= 1; the first
step has n_t = i' = 1), so ``max(n_t, 1)`` equals n_t on every reachable state; it only guards
n = 0 and the arbitrary states a Newton iterate or a random test state may hold. On the empty-
memory branch, f' is capped at 1 (``exp(min(., 0))``, inactive elsewhere, where the exponent is
<= 0 by construction) so f' c stays finite whatever m_{t-1} holds.

Structure. The state is (h, c, n, m), each (B, H). Channel j of head g in any of the four leaves
depends on all of h's channels in head g (through R h) and on channel j of c, n, m: within a
head, across all four leaves. That is rnnlab's ``Heads(heads, H / heads)``: over the flattened
state (flat index = leaf * H + channel), it allows the entries whose channels (index mod H) fall
in the same head, whatever their leaves.

Init (the notes' names, with the concrete reading used here): R = 0; W ~ N(0, sqrt(2 / (5 D)))
(small init); b_i = b_z = b_o = 0; forget bias ``powerlaw_blockdependent`` read as, within each
head of d channels, b_f[j] = 6 - 5 (j / (d - 1))^p with p = 0.3 + 1.3 * depth, where ``depth`` in
[0, 1] is the block's relative position in the stack (0 first, 1 last). So every head starts with
retentions from sigmoid(6) = 0.998 down to sigmoid(1) = 0.73, and deeper blocks (larger p) keep
more channels near the long end.

The layer around the cell (causal conv + SiLU feeding i and f, head-wise LayerNorm on the output,
the gated FFN) belongs to the block, not here.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Cell, Heads
from .registry import register


def powerlaw_forget_bias(hidden_size: int, heads: int, depth: float,
                         device=None, dtype=None) -> torch.Tensor:
    """``powerlaw_blockdependent`` forget bias (H,): 6 - 5 (j / (d-1))^(0.3 + 1.3 depth) for the
    d = H / heads channels j of each head, repeated over heads."""
    d = hidden_size // heads
    frac = torch.arange(d, device=device, dtype=dtype or torch.get_default_dtype()) / max(d - 1, 1)
    return (6.0 - 5.0 * frac ** (0.3 + 1.3 * depth)).repeat(heads)  # (d,) -> (H,)


@register("slstm")
class SLSTM(Cell):
    """sLSTM cell. State ``(h, c, n, m)``, each ``(B, H)``; ``u_t: (B, 4H)`` = W x + b in gate
    order (i, f, z, o); ``readout`` is h."""

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 depth: float = 0.0, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        if heads is None:
            heads = 1 if H % 4 else 4
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or H % heads:
            raise ValueError(f"SLSTM: heads must be an int >= 1 dividing hidden_size={H}, "
                             f"got {heads!r}")
        if isinstance(depth, bool) or not isinstance(depth, (int, float)) \
                or not 0.0 <= depth <= 1.0:
            raise ValueError(f"SLSTM: depth must be a number in [0, 1], got {depth!r}")
        kw = dict(device=device, dtype=dtype)
        self.heads, self.head_dim, self.depth = heads, H // heads, float(depth)
        self.structure = Heads(heads, H // heads)
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size, **kw))  # W, rows i, f, z, o
        self.bias = nn.Parameter(torch.empty(4 * H, **kw))
        # R[g, n]: head n's (d, d) recurrent block of gate g; pre[g, n, j] += R[g, n, j, k] h[n, k]
        self.weight_hh = nn.Parameter(torch.empty(4, heads, self.head_dim, self.head_dim, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.hidden_size
        nn.init.normal_(self.weight_ih, 0.0, math.sqrt(2.0 / (5.0 * self.input_size)))
        nn.init.zeros_(self.weight_hh)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[H:2 * H].copy_(powerlaw_forget_bias(H, self.heads, self.depth,
                                                          self.bias.device, self.bias.dtype))

    def state_shapes(self):
        return ((self.hidden_size,),) * 4

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_ih, self.bias)  # (B, T, D) -> (B, T, 4H)

    def recur(self, h: torch.Tensor) -> torch.Tensor:
        """``R h``, block-diagonal per head: ``(B, H) -> (B, 4H)`` in gate order (i, f, z, o)."""
        hh = h.unflatten(-1, (self.heads, self.head_dim))  # (B, H) -> (B, heads, d)
        pre = torch.einsum("bnk,gnjk->bgnj", hh, self.weight_hh)  # (B, 4, heads, d)
        return pre.flatten(-3)  # (B, 4, heads, d) -> (B, 4H)

    def step(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, ...]):
        h, c, n, m = state  # (B, H) each
        i_pre, f_pre, z_pre, o_pre = (u_t + self.recur(h)).chunk(4, dim=-1)  # 4 x (B, H)
        log_f = F.logsigmoid(f_pre)
        empty = n == 0
        m_new = torch.where(empty, i_pre, torch.maximum(i_pre, log_f + m))
        i_gate = torch.exp(i_pre - m_new)
        f_gate = torch.exp((log_f + m - m_new).clamp(max=0.0))
        c_new = f_gate * c + i_gate * torch.tanh(z_pre)
        n_new = f_gate * n + i_gate
        h_new = torch.sigmoid(o_pre) * c_new / n_new.clamp(min=1.0)
        return h_new, c_new, n_new, m_new

    def readout(self, h, u_t: torch.Tensor) -> torch.Tensor:
        return h[0]  # the h of (h, c, n, m): (B, H)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, depth={self.depth}"
