"""The torch path of ``linear_scan`` (any device; CPU too when numba is absent or switched
off): a chunked scan of ~2 sqrt(T) whole-tensor steps (fla's ``chunk``), and the analytic
backward as the same scan on flipped time."""
from __future__ import annotations

import math

import torch

from ..varlen import segments


def _scan(a, b, h0):
    """Chunked scan in torch (any device): a (B, T, ...) broadcasting against b (B, T, ...),
    h0 (B, ...). Python loops run ~2 sqrt(T) steps of whole-tensor ops; only products of a
    are formed (no division), so a = 0 is exact. Returns h (B, T, ...) and h_T (B, ...)."""
    batch, steps = b.shape[:2]
    if steps == 0:
        return b.clone(), h0.clone()
    size = math.isqrt(steps - 1) + 1  # chunk length L = ceil(sqrt(T)), n = ceil(T / L) chunks
    n = -(-steps // size)
    pad = n * size - steps
    if pad:  # identity steps (a = 1, b = 0) at the end leave every h_t and h_T unchanged
        a = torch.cat([a, a.new_ones((batch, pad) + a.shape[2:])], 1)  # (B, n L, ...)
        b = torch.cat([b, b.new_zeros((batch, pad) + b.shape[2:])], 1)  # (B, n L, ...)
    a = a.reshape((batch, n, size) + a.shape[2:])  # (B, n, L, ...)
    b = b.reshape((batch, n, size) + b.shape[2:])  # (B, n, L, ...)
    local, decay = torch.empty_like(b), torch.empty_like(a)  # chunk scans from 0; prod of a
    local[:, :, 0], decay[:, :, 0] = b[:, :, 0], a[:, :, 0]
    for j in range(1, size):  # all chunks advance together
        local[:, :, j] = a[:, :, j] * local[:, :, j - 1] + b[:, :, j]
        decay[:, :, j] = a[:, :, j] * decay[:, :, j - 1]
    carry, carries = h0, []
    for i in range(n):  # the state entering each chunk
        carries.append(carry)
        carry = decay[:, i, -1] * carry + local[:, i, -1]
    h = local + decay * torch.stack(carries, 1).unsqueeze(2)  # (B, n, L, ...)
    return h.reshape((batch, n * size) + b.shape[3:])[:, :steps], carry  # (B, T, ...)


def torch_forward(a, b, h0, cu):
    """h (B, T, ...), h_T (B or N, ...) by the chunked torch scan, one call per sequence."""
    if cu is None:
        return _scan(a, b, h0)
    parts = [_scan(a[:, s:e], b[:, s:e], h0[i:i + 1]) for i, (s, e) in enumerate(segments(cu))]
    h, hT = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts])  # (1, T, ...)
    return h, hT  # hT (N, ...)


def _backward_dense(a, h, h0, dh, dhT):
    """Reverse scan g_t = dh_t + conj(a_{t+1}) g_{t+1} from g_T = dh_T (the h_T gradient) as a
    forward scan on flipped time. Returns da (a's shape), db (B, T, ...), dh0 (B, ...)."""
    if h.shape[1] == 0:
        return torch.zeros_like(a), torch.zeros_like(h), dhT.clone()
    a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], 1).conj()  # (B, T, ...)
    g, _ = _scan(a_next.flip(1), dh.flip(1), dhT)
    g = g.flip(1)  # (B, T, ...)
    h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], 1)  # (B, T, ...)
    dh0 = a[:, 0].conj() * g[:, 0]  # (B, ...)
    return (g * h_prev.conj()).sum_to_size(a.shape), g, dh0  # da summed to a's shape


def torch_backward(a, h, h0, dh, dhT, cu):
    """da, db, dh0 by the torch reverse scan, one call per sequence."""
    if cu is None:
        return _backward_dense(a, h, h0, dh, dhT)
    parts = [_backward_dense(a[:, s:e], h[:, s:e], h0[i:i + 1], dh[:, s:e], dhT[i:i + 1])
             for i, (s, e) in enumerate(segments(cu))]
    return tuple(torch.cat([p[k] for p in parts], 0 if k == 2 else 1)  # dh0 (N, ...) on dim 0
                 for k in range(3))
