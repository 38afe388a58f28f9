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

The published layer around the cell (causal conv + SiLU feeding i and f; head-wise projections;
head-wise norm on the output) is ``rnnlab.models.mixers.SLSTMLayer`` and the block adds the gated
FFN; the layer feeds the cell the four gate pre-activations with ``in_proj=False``.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_int, check_number
from .base import Cell, Heads
from .projection import check_in_proj
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
    """sLSTM cell (xLSTM, https://arxiv.org/abs/2405.04517). State ``(h, c, n, m)``, each
    ``(B, H)``; ``u_t: (B, 4H)`` = W x + b in gate order (i, f, z, o); ``readout`` is h.

    ``in_proj=False``: no W, the input is the four gates' pre-activations ``(B, T, 4H)`` (b is
    still added), as the published block gives them.

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("slstm", input_size=8, hidden_size=16)
    >>> y, (h, c, n, m) = layer(torch.randn(2, 5, 8))
    >>> tuple(y.shape), tuple(c.shape)
    ((2, 5, 16), (2, 16))
    """

    def __init__(self, input_size: int, hidden_size: int, heads: int | None = None,
                 depth: float = 0.0, in_proj: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        if heads is None:
            heads = 1 if H % 4 else 4
        check_int("SLSTM", "heads", heads, 1)
        if H % heads:
            raise ValueError(f"SLSTM: heads must be an int >= 1 dividing hidden_size={H}, "
                             f"got {heads!r}")
        check_number("SLSTM", "depth", depth, 0.0, 1.0)
        check_in_proj("SLSTM", in_proj, input_size, 4 * H, "the pre-activations of i, f, z, o")
        kw = dict(device=device, dtype=dtype)
        self.heads, self.head_dim, self.depth = heads, H // heads, float(depth)
        self.structure = Heads(heads, H // heads)
        self.weight_ih = None  # in_proj=False: the input is W x already
        if in_proj:
            self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size, **kw))  # rows i, f, z, o
        self.bias = nn.Parameter(torch.empty(4 * H, **kw))
        # R[g, n]: head n's (d, d) recurrent block of gate g; pre[g, n, j] += R[g, n, j, k] h[n, k]
        self.weight_hh = nn.Parameter(torch.empty(4, heads, self.head_dim, self.head_dim, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        H = self.hidden_size
        if self.weight_ih is not None:
            nn.init.normal_(self.weight_ih, 0.0, math.sqrt(2.0 / (5.0 * self.input_size)))
        nn.init.zeros_(self.weight_hh)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[H:2 * H].copy_(powerlaw_forget_bias(H, self.heads, self.depth,
                                                          self.bias.device, self.bias.dtype))

    def state_shapes(self):
        return ((self.hidden_size,),) * 4

    def project(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_ih is None:
            return x + self.bias  # (B, T, 4H)
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

    def jacobian(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, ...]):
        """``step`` and its Jacobian in closed form, in ``linearize``'s column layout for
        ``Heads(n, d)``: ``(new state, cols)`` with ``cols[l]: (B, 4d, H)``,
        ``cols[l][:, l' d + k, g d + j] = d new_l[g d + j] / d state_l'[g d + k]`` (leaves
        h, c, n, m). One pass instead of 4d JVPs. Every output depends on the gates' pre-
        activations (through R, the only mixing inside a head) and elementwise on c, n, m; m
        and log f enter only as ``b = log f + m``. The derivative takes the branches torch's
        autograd takes: a tie of ``maximum`` splits evenly, ``clamp`` passes at its bound, the
        empty-memory test ``n == 0`` is a constant."""
        new, coef, g = self._derivatives(u_t, state)
        return new, self._columns(coef, g)

    def quasi_jacobian(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, ...]):
        """``(step(u_t, state), cols)``: the same-channel entries of ``jacobian``'s, channel
        blocks ``cols[l]: (B, 4, H)``, ``cols[l][:, k, c] = d new_l[c] / d state_k[c]`` (leaves
        h, c, n, m), dropping R's within-head cross-channel terms. Through h only R's diagonal
        ``R[gate, head, j, j]`` remains; c, n and m enter elementwise already (m as b's
        coefficient)."""
        new, coef, g = self._derivatives(u_t, state)
        r = self.weight_hh.diagonal(dim1=-2, dim2=-1).flatten(1)  # (4, heads, d) -> (4, H)
        cols = tuple(torch.stack((k[0] * r[0] + k[1] * g * r[1] + k[2] * r[2] + k[3] * r[3],
                                  k[4], k[5], k[1]), 1) for k in coef)  # 4 x (B, 4, H)
        return new, cols

    def _derivatives(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, ...]):
        """The step ``(h, c, n, m)`` and, per output leaf, its coefficients on (d i_pre, d b,
        d z_pre, d o_pre, d c, d n), each ``(B, H)``, with ``g = d b / d f_pre``: what
        ``jacobian`` and ``quasi_jacobian`` build their columns from."""
        h, c, n, m = state  # (B, H) each
        i_pre, f_pre, z_pre, o_pre = (u_t + self.recur(h)).chunk(4, dim=-1)  # 4 x (B, H)
        log_f = F.logsigmoid(f_pre)
        b = log_f + m
        empty = n == 0
        m_new = torch.where(empty, i_pre, torch.maximum(i_pre, b))
        x = b - m_new
        i_gate = torch.exp(i_pre - m_new)
        f_gate = torch.exp(x.clamp(max=0.0))
        tz, so = torch.tanh(z_pre), torch.sigmoid(o_pre)
        c_new = f_gate * c + i_gate * tz
        n_new = f_gate * n + i_gate
        q = n_new.clamp(min=1.0)
        h_new = so * c_new / q
        # d m_new = s_a d i_pre + s_b d b (the weights autograd gives torch.where/maximum)
        s_a = torch.where(empty | (i_pre > b), 1.0, 0.5 * (i_pre == b).to(h.dtype))
        s_b = torch.where(empty, 0.0, 1.0 - s_a)
        fk = f_gate * (x <= 0)  # d f_gate = fk (d b - d m_new)
        di = (i_gate * (1 - s_a), -i_gate * s_b)  # d i_gate over (d i_pre, d b)
        df = (-fk * s_a, fk * (1 - s_b))  # d f_gate over (d i_pre, d b)
        dc = [c * df[k] + tz * di[k] for k in range(2)]  # d c_new over (d i_pre, d b)
        dn = [n * df[k] + di[k] for k in range(2)]
        dcz = i_gate * (1 - tz * tz)  # d c_new / d z_pre
        p, qn = so / q, h_new / q * (n_new >= 1)  # d h_new = p d c_new - qn d n_new + ...
        zero = torch.zeros_like(h)
        # per output leaf: coefficients on (d i_pre, d b, d z_pre, d o_pre, d c, d n)
        coef = [(p * dc[0] - qn * dn[0], p * dc[1] - qn * dn[1], p * dcz, (1 - so) * h_new,
                 p * f_gate, -qn * f_gate),
                (dc[0], dc[1], dcz, zero, f_gate, zero),
                (dn[0], dn[1], zero, zero, zero, f_gate),
                (s_a, s_b, zero, zero, zero, zero)]
        return (h_new, c_new, n_new, m_new), coef, torch.sigmoid(-f_pre)

    def _columns(self, coef, g: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The columns of every output leaf from its coefficients on (d i_pre, d b, d z_pre,
        d o_pre, d c, d n), each (B, H), and ``g = d b / d f_pre``: one buffer
        ``(B, out leaf, in leaf, k, head, j)``, the h block through R, the c, n and m blocks
        on their diagonal k == j (m's coefficient is b's), everything else zero."""
        n, d, B = self.heads, self.head_dim, g.shape[0]
        out = g.new_zeros(B, 4, 4, d, n, d)
        gates = torch.stack([torch.stack((k[0], k[1] * g, k[2], k[3]), 1) for k in coef], 1)
        out[:, :, 0] = torch.einsum("bxqgj,qgjk->bxkgj", gates.unflatten(-1, (n, d)),
                                    self.weight_hh)  # (B, 4, 4, n, d) @ R -> (B, 4, d, n, d)
        for leaf, slot in ((1, 4), (2, 5), (3, 1)):  # c, n, m
            diag = out[:, :, leaf].diagonal(dim1=2, dim2=4)  # (B, 4, n, d): k == j
            diag.copy_(torch.stack([k[slot] for k in coef], 1).unflatten(-1, (n, d)))
        return tuple(out[:, i].reshape(B, 4 * d, n * d) for i in range(4))

    def readout(self, h, u_t: torch.Tensor) -> torch.Tensor:
        return h[0]  # the h of (h, c, n, m): (B, H)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, heads={self.heads}, depth={self.depth}"
