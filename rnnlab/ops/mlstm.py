"""The stabilized mLSTM (xLSTM, Beck et al. 2024), chunkwise, beside its plain loop reference.

Per batch row and head, with the stabilized state ``(C~ (K, V), n~ (K,), m)``::

    m_t  = max(log_f_t + m_{t-1}, i_t)
    C~_t = exp(log_f_t + m_{t-1} - m_t) C~_{t-1} + exp(i_t - m_t) k_t v_t^T
    n~_t = exp(log_f_t + m_{t-1} - m_t) n~_{t-1} + exp(i_t - m_t) k_t
    h_t  = C~_t^T q_t / max(|n~_t^T q_t|, exp(-m_t))

the semantics of rnnlab's ``mlstm`` cell (``ops.monoids.mlstm_*``): ``i`` is the input gate's
pre-activation, ``log_f = logsigmoid(forget pre-activation) <= 0``, k is scaled by the caller.
Every exponent is ``<= 0``, so gates of any size cannot overflow.

Chunkwise form: within a chunk of C steps, with ``seg_ij = log_f_{j+1} + ... + log_f_i`` and
``F_i = seg_i,-1`` (the decay since the chunk start), ``m_i = max(m_prev + F_i, max_{j<=i}
(seg_ij + i_j))`` (the closed form of the recurrence), the decay matrix ``D_ij = exp(seg_ij + i_j
- m_i)`` (0 above the diagonal) gives ``[num, n~^T q] = ((Q K^T) * D) [V, 1] + exp(m_prev + F_i
- m_i) Q [C~_prev, n~_prev]``. C~ and n~ share every scale factor, so they travel together as one
``(K, V + 1)`` state; a Python loop over chunks carries it with elementwise scalings only.

Conventions: ``q, k: (B, T, H, K)``, ``v: (B, T, H, V)``, ``i, log_f: (B, T, H)``, state
``(C (B, H, K, V), n (B, H, K), m (B, H))``, None meaning zeros (m_0 = 0, as the cell's
``init_state``). A step with ``i = -inf, log_f = 0`` leaves the state exactly unchanged (padding).
Computed in fp32 (fp64 stays fp64); h in q's dtype, the final state in the compute dtype.
``cu_seqlens`` (``B == 1``): N packed sequences, the states with N rows.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .checks import check_chunk_size, check_qkv, check_tensor
from .delta import _pack_rows, _segsum, _to_chunks
from .varlen import check_cu_seqlens, segments

Tensor = torch.Tensor
State = Tuple[Tensor, Tensor, Tensor]

DEFAULT_CHUNK = 64  # chunk_size=None: min(64, T); 64 was fastest at K = V = 128 on CPU


def _check_state(initial_state, rows: int, H: int, K: int, V: int, packed: bool, device):
    if initial_state is None:
        return
    if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
        raise TypeError(f"initial_state: expected a tuple (C, n, m) or None, got "
                        f"{type(initial_state).__name__}"
                        + (f" of length {len(initial_state)}"
                           if isinstance(initial_state, (tuple, list)) else ""))
    b = "N" if packed else "B"
    for name, x, shape, pattern in zip(
            ("C", "n", "m"), initial_state, ((rows, H, K, V), (rows, H, K), (rows, H)),
            (f"({b}, H, K, V)", f"({b}, H, K)", f"({b}, H)")):
        check_tensor(f"initial_state {name}", x, shape, pattern, device)


def _check_inputs(q, k, v, i, log_f, initial_state, cu_seqlens, chunk_size):
    """Validate the arguments; returns ``(cu, compute_dtype)``."""
    B, T, H, K, V = check_qkv(q, k, v)
    check_tensor("i", i, (B, T, H), "(B, T, H)", q.device)
    check_tensor("log_f", log_f, (B, T, H), "(B, T, H)", q.device)
    cu = check_cu_seqlens(cu_seqlens, B, T)
    rows = B if cu is None else len(cu) - 1
    _check_state(initial_state, rows, H, K, V, cu is not None, q.device)
    check_chunk_size(chunk_size, optional=True)
    present = [q, i, log_f, *(initial_state or ())]
    wide = any(x.dtype == torch.float64 for x in present)
    return cu, torch.float64 if wide else torch.float32


def _prepare(q, k, v, i, log_f, initial_state, cu_seqlens, chunk_size):
    """Checks, then ``(cu, (q, k, v, i, log_f), (C0, n0, m0), out_dtype)`` in the compute dtype,
    the state zeros when None."""
    cu, dt = _check_inputs(q, k, v, i, log_f, initial_state, cu_seqlens, chunk_size)
    rows, H, K, V = (q.shape[0] if cu is None else len(cu) - 1), q.shape[2], q.shape[3], \
        v.shape[3]
    if initial_state is None:
        state = (q.new_zeros(rows, H, K, V, dtype=dt), q.new_zeros(rows, H, K, dtype=dt),
                 q.new_zeros(rows, H, dtype=dt))
    else:
        state = tuple(x.to(dt) for x in initial_state)
    return cu, tuple(x.to(dt) for x in (q, k, v, i, log_f)), state, q.dtype


def _offset(m: Tensor) -> Tensor:
    """m, but 0 where m is -inf, to subtract before exponentiating: ``-inf - offset`` is -inf
    (exponential 0), never ``-inf - (-inf) = nan``."""
    return torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def _chunk_operands(k, v1, i, log_f):
    """All chunks at once: ``k (N, BH, C, K)``, ``v1 = [v, 1] (N, BH, C, V + 1)``, ``i, log_f
    (N, BH, C)``. Returns ``logD (N, BH, C, C)`` (seg_ij + i_j, -inf above the diagonal),
    ``Fc (N, BH, C)`` (cumulative log_f), ``m_loc (N, BH, C)`` (row max of logD) and ``Z_loc
    (N, BH, K, V + 1)``: the chunk's own writes into ``[C~, n~]`` at its end, scaled by
    ``exp(-m_loc)`` of the last row."""
    logD = _segsum(log_f) + i.unsqueeze(-2)  # (N, BH, C, C)
    m_loc = logD.amax(-1)  # (N, BH, C)
    w = torch.exp(logD[..., -1, :] - _offset(m_loc[..., -1:]))  # (N, BH, C)
    Z_loc = (k * w.unsqueeze(-1)).transpose(-1, -2) @ v1  # (N, BH, K, V + 1)
    return logD, log_f.cumsum(-1), m_loc, Z_loc


def _carry(F_end, m_end, Z_loc, Z, m):
    """Carry ``Z = [C~, n~] (BH, K, V + 1)`` and ``m (BH,)`` across the N chunks; returns the
    states entering each chunk ``(N, BH, K, V + 1)``, their m ``(N, BH)`` and the final Z, m.
    Chunks are taken by ``unbind`` (one stacking backward), not by indexing."""
    states, ms = [], []
    for f, ml, zl in zip(F_end.unbind(0), m_end.unbind(0), Z_loc.unbind(0)):
        states.append(Z)
        ms.append(m)
        carried = m + f  # (BH,)
        m = torch.maximum(carried, ml)
        off = _offset(m)
        a, b = torch.exp(carried - off), torch.exp(ml - off)  # (BH,)
        Z = Z * a[:, None, None] + zl * b[:, None, None]  # (BH, K, V + 1)
    return torch.stack(states), torch.stack(ms), Z, m


def _chunked(q, k, v, i, log_f, state: State, C: int):
    """Chunkwise mLSTM on compute-dtype tensors ``(B, T, H, ·)``; returns ``h (B, T, H, V)``
    and the final ``(C~, n~, m)``. T is padded to N * C with identity steps (i = -inf)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = -(-T // C)
    i = F.pad(i, [0, 0, 0, N * C - T], value=-math.inf)  # (B, NC, H)
    v1 = torch.cat([v, v.new_ones(B, T, H, 1)], -1)  # (B, T, H, V + 1)
    q, k, v1, i, log_f = (_to_chunks(x, C) for x in (q, k, v1, i, log_f))  # (N, BH, C, ...)
    logD, Fc, m_loc, Z_loc = _chunk_operands(k, v1, i, log_f)
    C0, n0, m0 = state
    Z0 = torch.cat([C0, n0.unsqueeze(-1)], -1).reshape(B * H, K, V + 1)  # (BH, K, V + 1)
    Zp, mp, Z, m = _carry(Fc[..., -1], m_loc[..., -1], Z_loc, Z0, m0.reshape(B * H))
    carried = mp.unsqueeze(-1) + Fc  # (N, BH, C)
    m_i = torch.maximum(carried, m_loc)  # (N, BH, C): the stabilizer at each step
    off = _offset(m_i)
    D = torch.exp(logD - off.unsqueeze(-1))  # (N, BH, C, C), 0 above the diagonal
    inter = torch.exp(carried - off).unsqueeze(-1)  # (N, BH, C, 1)
    out = ((q @ k.transpose(-1, -2)) * D) @ v1 + inter * (q @ Zp)  # (N, BH, C, V + 1)
    den = torch.maximum(out[..., V].abs(), torch.exp(-off))  # (N, BH, C)
    h = out[..., :V] / den.unsqueeze(-1)  # (N, BH, C, V)
    h = h.reshape(N, B, H, C, V).permute(1, 0, 3, 2, 4)  # (B, N, C, H, V)
    h = h.reshape(B, N * C, H, V)[:, :T]  # (B, T, H, V)
    Z = Z.reshape(B, H, K, V + 1)  # (B, H, K, V + 1)
    return h, (Z[..., :V], Z[..., V], m.reshape(B, H))


def mlstm_chunkwise(q: Tensor, k: Tensor, v: Tensor, i: Tensor, log_f: Tensor,
                    initial_state: Optional[State] = None, output_final_state: bool = False,
                    cu_seqlens: Optional[Tensor] = None, chunk_size: Optional[int] = None
                    ) -> Tuple[Tensor, Optional[State]]:
    """Stabilized mLSTM, chunkwise: a loop over ``ceil(T / C)`` chunks of matmuls.

    q, k: ``(B, T, H, K)`` (k scaled by the caller); v: ``(B, T, H, V)``; i: ``(B, T, H)``
    input-gate pre-activations; log_f: ``(B, T, H)`` log forget gates (<= 0);
    initial_state: ``(C (B, H, K, V), n (B, H, K), m (B, H))`` or None (zeros), N rows instead
    of B with ``cu_seqlens`` (N + 1,), B == 1; chunk_size: C, any positive int, None meaning
    ``min(64, T)``.

    Returns ``h (B, T, H, V)`` in q's dtype and, if ``output_final_state``, the final
    ``(C~, n~, m)`` in the compute dtype (fp32, or fp64 for fp64 inputs), else None.
    Autograd flows through all inputs and every leaf of ``initial_state``."""
    cu, (q, k, v, i, log_f), state, out_dtype = _prepare(
        q, k, v, i, log_f, initial_state, cu_seqlens, chunk_size)
    T = q.shape[1]
    C = max(1, min(DEFAULT_CHUNK, T)) if chunk_size is None else chunk_size
    if T == 0:
        h = v.new_zeros(v.shape)
    elif cu is None:
        h, state = _chunked(q, k, v, i, log_f, state, C)
    else:
        mask, (q, k, v, i, log_f) = _pack_rows(cu, q, k, v, i, log_f)  # (N, L), (N, L, H, ..)
        i = torch.where(mask.unsqueeze(-1), i, -math.inf)  # padded steps are identities
        h, state = _chunked(q, k, v, i, log_f, state, C)  # (N, L, H, V)
        h = h[mask].unsqueeze(0)  # (1, T, H, V)
    return h.to(out_dtype), (state if output_final_state else None)


def _reference_run(q, k, v, i, log_f, state: State):
    """One step at a time: ``q, k (b, L, H, K)``, ``v (b, L, H, V)``, ``i, log_f (b, L, H)``
    -> ``h (b, L, H, V)`` and the final ``(C~, n~, m)``."""
    C, n, m = state
    outs = []
    for qt, kt, vt, it, ft in zip(*(x.unbind(1) for x in (q, k, v, i, log_f))):
        carried = ft + m  # (b, H)
        m = torch.maximum(carried, it)
        off = _offset(m)
        a, b = torch.exp(carried - off), torch.exp(it - off)  # (b, H)
        C = a[..., None, None] * C + b[..., None, None] * kt.unsqueeze(-1) * vt.unsqueeze(-2)
        n = a.unsqueeze(-1) * n + b.unsqueeze(-1) * kt  # (b, H, K)
        num = torch.einsum("bhk,bhkv->bhv", qt, C)  # (b, H, V)
        den = torch.maximum((n * qt).sum(-1).abs(), torch.exp(-off))  # (b, H)
        outs.append(num / den.unsqueeze(-1))
    h = torch.stack(outs, 1) if outs else v.new_zeros(v.shape)  # (b, L, H, V)
    return h, (C, n, m)


def mlstm_chunkwise_reference(q: Tensor, k: Tensor, v: Tensor, i: Tensor, log_f: Tensor,
                              initial_state: Optional[State] = None,
                              output_final_state: bool = False,
                              cu_seqlens: Optional[Tensor] = None,
                              chunk_size: Optional[int] = None
                              ) -> Tuple[Tensor, Optional[State]]:
    """The source of truth: a plain loop over time. Same signature, shapes and dtypes as
    :func:`mlstm_chunkwise` (``chunk_size`` is checked, then unused); each sequence of
    ``cu_seqlens`` runs on its own from its row of ``initial_state``."""
    cu, inputs, state, out_dtype = _prepare(q, k, v, i, log_f, initial_state, cu_seqlens,
                                            chunk_size)
    if cu is None:
        h, state = _reference_run(*inputs, state)
    else:
        runs = [_reference_run(*(x[:, s:e] for x in inputs),  # (1, l_j, H, ...)
                               tuple(x[j:j + 1] for x in state))
                for j, (s, e) in enumerate(segments(cu))]
        h = torch.cat([r[0] for r in runs], 1)  # (1, T, H, V)
        state = tuple(torch.cat(leaf) for leaf in zip(*(r[1] for r in runs)))  # N rows
    return h.to(out_dtype), (state if output_final_state else None)
