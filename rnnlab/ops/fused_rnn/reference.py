"""The plain fp32 loop over time for the fused head-wise cells: the reference the Triton kernels
are tested against, with ``fused_rnn``'s signature (gradients by autograd through the loop).

One step of every cell is ``pre_g = wx_g + (R_g h + b_g)`` per gate g, R block-diagonal over
heads, then the cell's pointwise update, written exactly as rnnlab's cells write it
(``cells/elman.py``, ``gru.py``, ``lstm.py``, ``slstm.py``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# cell -> (gates, state leaves); gate orders: gru (r, z, n), lstm (i, f, g, o), slstm (i, f, z, o)
CELLS = {"rnn_tanh": (1, 1), "gru": (3, 1), "lstm": (4, 2), "slstm": (4, 4)}


def recurrent(R: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``R h + b``: R ``(G, N, D, D)`` block-diagonal over N heads, h ``(B, N·D)`` ->
    ``(B, G·N·D)`` in gate-major order (as ``W_hh h + b_hh`` of a torch-style cell)."""
    G, N, D, _ = R.shape
    hh = h.unflatten(-1, (N, D))  # (B, H) -> (B, N, D)
    pre = torch.einsum("bnk,gnjk->bgnj", hh, R)  # (B, G, N, D)
    return pre.flatten(-3) + bias  # (B, G, N, D) -> (B, G·H)


def step(cell: str, u: torch.Tensor, rh: torch.Tensor, state: Tuple[torch.Tensor, ...]):
    """One step of ``cell`` from ``u = wx_t (B, G·H)`` and ``rh = R h + b (B, G·H)``."""
    if cell == "rnn_tanh":
        return (torch.tanh(u + rh),)
    if cell == "gru":
        h = state[0]
        H = h.shape[-1]
        r, z = torch.sigmoid(u[:, :2 * H] + rh[:, :2 * H]).chunk(2, dim=-1)
        n = torch.tanh(u[:, 2 * H:] + r * rh[:, 2 * H:])  # reset after the matmul, as torch
        return (n + z * (h - n),)
    if cell == "lstm":
        c = state[1]
        i, f, g, o = (u + rh).chunk(4, dim=-1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    h, c, n, m = state  # slstm
    i_pre, f_pre, z_pre, o_pre = (u + rh).chunk(4, dim=-1)  # 4 x (B, H)
    log_f = F.logsigmoid(f_pre)
    m_new = torch.where(n == 0, i_pre, torch.maximum(i_pre, log_f + m))
    i_gate = torch.exp(i_pre - m_new)
    f_gate = torch.exp((log_f + m - m_new).clamp(max=0.0))
    c_new = f_gate * c + i_gate * torch.tanh(z_pre)
    n_new = f_gate * n + i_gate
    return torch.sigmoid(o_pre) * c_new / n_new.clamp(min=1.0), c_new, n_new, m_new


def fused_rnn_reference(cell: str, wx: torch.Tensor, R: torch.Tensor,
                        bias: Optional[torch.Tensor], state: Tuple[torch.Tensor, ...],
                        lengths: Optional[torch.Tensor] = None):
    """``fused_rnn``'s contract as a loop (see ``rnnlab.ops.fused_rnn.fused_rnn``): wx
    ``(B, T, G·H)``, R ``(G, N, D, D)``, bias ``(G·H,)`` or None, state S x ``(B, H)``, lengths
    ``(B,)`` or None -> y ``(B, T, H)`` (zero after a sequence's end), final state S x ``(B, H)``.
    Computed in fp32 (fp64 stays fp64); y and the state come back in that dtype."""
    dtype = torch.float64 if wx.dtype == torch.float64 else torch.float32
    wx, R = wx.to(dtype), R.to(dtype)
    bias = R.new_zeros(wx.shape[-1]) if bias is None else bias.to(dtype)
    state = tuple(s.to(dtype) for s in state)
    B, T = wx.shape[:2]
    ys = []
    for t in range(T):
        new = step(cell, wx[:, t], recurrent(R, bias, state[0]), state)
        if lengths is not None:
            alive = (t < lengths.to(wx.device)).unsqueeze(-1)  # (B,) -> (B, 1)
            new = tuple(torch.where(alive, a, b) for a, b in zip(new, state))
            ys.append(torch.where(alive, new[0], torch.zeros_like(new[0])))
        else:
            ys.append(new[0])
        state = new
    y = torch.stack(ys, 1) if ys else wx.new_zeros(B, 0, state[0].shape[-1])
    return y, state  # (B, T, H), S x (B, H)
