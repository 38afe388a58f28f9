"""Gated linear attention, chunkwise, as Triton kernels: ``ops/gla.py``'s contract on a GPU.

Per batch row and head, with state ``S_t (K, V)``: ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``,
``o_t = S_t^T (scale q_t)``; ``g`` is per key ``(B, T, H, K)`` (GLA) or per head ``(B, T, H)``
(Mamba-2 SSD, simple GLA). Time is cut in chunks of C steps (C = 32 unless ``chunk_size``), and
with S the state entering a chunk, ``G_i`` the log-decay summed from the chunk start to step i:

- ``_carry_kernel`` walks the chunks one after another, one program per (V block, b·h), the state
  in registers: it stores the state entering every chunk and the final one,
  ``S <- exp(G_C) S + (k exp(G_C - G_j))^T v``. Run in reverse on ``(q exp(G_i), dO)`` it is the
  backward's carry of dS, the gradient of the state leaving each chunk.
- ``_attention_kernel`` (per-key g only) writes the chunk's causal attention
  ``A_ij = sum_x q_ix k_jx exp(G_ix - G_jx)``, sub-chunk by sub-chunk of SUB rows: the columns
  before sub-chunk I are one matmul of ``q_i exp(G_i - r_I)`` and ``k_j exp(r_I - G_j)`` (r_I
  the log-decay just before I starts); the SUB columns inside I are built one column at a
  time. Per-head g needs no such split: ``A = (q k^T) * exp(seg)`` is formed where it is used.
- ``_output_kernel``: ``o = (q exp(G_i)) S + A v``, all chunks in parallel.
- ``_grad_key_kernel`` / ``_grad_head_kernel``: dq, dk, dv and ``dG = q dq - k dk`` per chunk
  (per sub-chunk for per-key g), from the recomputed states and the carried dS. The gradient of
  g is ``dg_t = sum_{s >= t} dG_s`` plus ``sum_v dS_T * S_T`` (g moves every later cumulative
  decay, and the final state), a reverse cumsum done by torch.

Numerics, as ``ops/gla.py``: every log-decay that is exponentiated is a direct sum of the g's it
spans (a cumsum that starts where the span starts, or the sum of two such same-sign sums), never
the difference of two cumulative sums, so with ``g <= 0`` no exponent is positive and
``g = -1e4`` forgets exactly, without inf or NaN. The one exception to "as exact as gla.py":
``dg`` comes from the reverse cumsum of ``q dq - k dk``, whose terms cancel, so a step that
forgets exactly gets a gradient of rounding size (~1e-7 relative in fp32) instead of 0.

Computed in the compute dtype (fp32, or fp64 when q, g or the initial state is fp64); fp32 matmuls
use ``input_precision="ieee"`` (no TF32), 8 warps a program. K and V are padded to powers of two
>= 16 (``tl.dot``'s least size) and held whole by the per-chunk kernels: correct for any size;
compiled for sm_90 at C = 32, K = V = 64 only the gradient kernels spill (0.6-1.5 KB a thread).

Registered as custom ops (``torch.ops.rnnlab.gla_chunk`` and its backward) with fake
implementations and autograd, so ``torch.compile`` traces through them. Under
``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors; that is
how the CPU suite checks them against ``gated_linear_attention_reference``.

**Dispatch**: ``ops/gla.py``'s ``gated_linear_attention`` calls
``gated_linear_attention_triton`` (imported lazily: importing triton is slow) when its
``backend(q.device)`` is "triton" (CUDA, triton importable, ``gla.USE_TRITON``), T > 0 and
``chunk_size`` is None or a power of two >= 16; any other chunk size keeps the torch path, which
takes any C. The scan engine reaches it through ``engines/factored.py`` (GLA, Mamba-2).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .delta import _pack_rows
from .gla import _check_inputs

Tensor = torch.Tensor

CHUNK = 32  # default C: at 64 the fp32 FMA matmuls of a (64, 64) tile spill registers
NUM_WARPS = 8  # per program: at 4, fp32 "ieee" (C, 64) x (64, 64) matmuls spill (sm_90 ptxas)
SUB = 16  # rows per sub-chunk of the per-key attention (tl.dot's least size)
CARRY_BV = 32  # V columns per program of the carry: B·H·V/32 programs keep a GPU busy


@triton.jit
def _tile(base, rows, live, cols, width, row_stride, col_stride):
    """The ``(R, BW)`` tile at ``base + row * row_stride + col * col_stride``, zero where a row
    is not ``live`` or ``col >= width``. A per-head g is read with ``col_stride = 0``: its value
    repeated over the key columns, so per-key code serves it unchanged."""
    mask = live[:, None] & (cols[None, :] < width)
    at = rows.to(tl.int64)[:, None] * row_stride + cols[None, :] * col_stride  # no int32 wrap
    return tl.load(base + at, mask=mask, other=0.0)


@triton.jit
def _cumsum0(x, R: tl.constexpr, REVERSE: tl.constexpr):
    """Cumulative sum down the R rows of ``x``, from the top (or the bottom with ``REVERSE``), as
    one matmul with a 0/1 triangle: each entry a sum of exactly the terms it spans. (A
    ``tl.cumsum`` along axis 0 compiles to a slow cross-thread scan with spills.)"""
    r = tl.arange(0, R)
    tri = (r[None, :] >= r[:, None]) if REVERSE else (r[None, :] <= r[:, None])  # (R, R)
    return tl.dot(tri.to(x.dtype), x, input_precision="ieee")


@triton.jit
def _carry_kernel(x, y, g, s0, states, sT, scale, T, H, K, V, N, C: tl.constexpr,
                  BK: tl.constexpr, BV: tl.constexpr, PER_KEY: tl.constexpr,
                  REVERSE: tl.constexpr):
    """Forward (``x = k, y = v``): ``S <- exp(G_C) S + (k exp(G_C - G_j))^T v`` chunk by chunk
    from ``s0``, the state entering chunk n stored at ``states[bh, n]``. Reverse (``x = q``,
    ``y = dO``, ``s0 = dS_T``): ``dS <- exp(G_C) dS + (scale q exp(G_i))^T dO`` from the last
    chunk back, the gradient of the state leaving chunk n stored at ``states[bh, n]``."""
    vb, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = bh // H, bh % H
    GK = K if PER_KEY else 1  # g's values per (t, h)
    GC = 1 if PER_KEY else 0  # g's column stride: a per-head g repeats over the key columns
    x_at, y_at, g_at = x + (b * T * H + h) * K, y + (b * T * H + h) * V, g + (b * T * H + h) * GK
    step = tl.arange(0, C)
    ks, vs = tl.arange(0, BK), vb * BV + tl.arange(0, BV)
    kv = ks[:, None] * V + vs[None, :]  # (BK, BV) offsets in a (K, V) state
    kv_live = (ks[:, None] < K) & (vs[None, :] < V)
    S = tl.load(s0 + bh * K * V + kv, mask=kv_live, other=0.0)
    for i in range(0, N):
        n = N - 1 - i if REVERSE else i
        tl.store(states + (bh * N + n) * K * V + kv, S, mask=kv_live)
        t = n * C + step  # (C,) the chunk's steps
        gc = _tile(g_at, t, t < T, ks, K, H * GK, GC)  # (C, BK)
        if REVERSE:
            w = _cumsum0(gc, C, False)  # G_i: g from the chunk start through i
            xw = _tile(x_at, t, t < T, ks, K, H * K, 1) * scale * tl.exp(w)
        else:
            after = _tile(g_at, t + 1, (step + 1 < C) & (t + 1 < T), ks, K, H * GK, GC)
            w = _cumsum0(after, C, True)  # G_C - G_j: g after j to the chunk end
            xw = _tile(x_at, t, t < T, ks, K, H * K, 1) * tl.exp(w)
        yc = _tile(y_at, t, t < T, vs, V, H * V, 1)  # (C, BV)
        decay = tl.exp(tl.sum(gc, axis=0))  # (BK,): exp(G_C)
        S = S * decay[:, None] + tl.dot(tl.trans(xw), yc, input_precision="ieee")
    tl.store(sT + bh * K * V + kv, S, mask=kv_live)


@triton.jit
def _attention_kernel(q, k, g, A, scale, T, H, K, N, C: tl.constexpr, SUB: tl.constexpr,
                      BK: tl.constexpr):
    """Per-key g: rows ``I`` (SUB of them) of chunk n's causal attention, stored at
    ``A[bh, t, :]`` (C columns, zeros above the diagonal)."""
    sub, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    at = (b * T * H + h) * K
    c0 = n * C
    s = c0 + sub * SUB  # first step of I
    rI, rC = s + tl.arange(0, SUB), c0 + tl.arange(0, C)
    ks = tl.arange(0, BK)
    qI = _tile(q + at, rI, rI < T, ks, K, H * K, 1) * scale  # (SUB, BK)
    gI = _tile(g + at, rI, rI < T, ks, K, H * K, 1)
    kC = _tile(k + at, rC, rC < T, ks, K, H * K, 1)  # (C, BK)
    # Columns j before I: exp(G_i - G_j) = exp(g from s through i) * exp(g after j before s).
    gap = _tile(g + at, rC + 1, (rC + 1 < s) & (rC + 1 < T), ks, K, H * K, 1)
    kw = tl.where((rC < s)[:, None], kC * tl.exp(_cumsum0(gap, C, True)), 0.0)
    Ar = tl.dot(qI * tl.exp(_cumsum0(gI, SUB, False)), tl.trans(kw), input_precision="ieee")
    # Columns j inside I, one at a time: exp(g after j through i) per key.
    for jj in range(SUB):
        j = s + jj
        kj = tl.load(k + at + j.to(tl.int64) * H * K + ks, mask=(ks < K) & (ks * 0 + j < T),
                     other=0.0)  # (BK,)
        seg = _cumsum0(tl.where((rI > j)[:, None], gI, 0.0), SUB, False)  # (SUB, BK)
        col = tl.sum(qI * kj[None, :] * tl.exp(seg), axis=1)  # (SUB,)
        col = tl.where(rI >= j, col, 0.0)
        Ar = tl.where((rC == j)[None, :], col[:, None], Ar)
    cs = tl.arange(0, C)
    tl.store(A + bh * N * C * C + rI[:, None] * C + cs[None, :], Ar)


@triton.jit
def _head_decay(g_at, rows, live, H, C: tl.constexpr):
    """Per-head g: ``exp(G_i - G_j)`` for i >= j within a chunk, 0 above: a (C, C) matrix, each
    exponent the cumsum of ``g_i [i > j]`` down a column (the g's after j through i)."""
    gr = tl.load(g_at + rows * H, mask=live, other=0.0)  # (C,)
    cs = tl.arange(0, C)
    below = cs[:, None] > cs[None, :]
    seg = _cumsum0(tl.where(below, gr[:, None], 0.0), C, False)  # (C, C)
    return tl.where(below | (cs[:, None] == cs[None, :]), tl.exp(seg), 0.0)


@triton.jit
def _output_kernel(q, k, v, g, states, A, o, scale, T, H, K, V, N, C: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, PER_KEY: tl.constexpr):
    """``o = (scale q exp(G_i)) S_n + A v`` for one chunk and block of V."""
    vb, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    GK = K if PER_KEY else 1
    GC = 1 if PER_KEY else 0
    qk_at, v_at, g_at = (b * T * H + h) * K, (b * T * H + h) * V, g + (b * T * H + h) * GK
    rC = n * C + tl.arange(0, C)
    live = rC < T
    ks, vs = tl.arange(0, BK), vb * BV + tl.arange(0, BV)
    qC = _tile(q + qk_at, rC, live, ks, K, H * K, 1) * scale  # (C, BK)
    gC = _tile(g_at, rC, live, ks, K, H * GK, GC)
    S = tl.load(states + (bh * N + n) * K * V + ks[:, None] * V + vs[None, :],
                mask=(ks[:, None] < K) & (vs[None, :] < V), other=0.0)  # (BK, BV)
    out = tl.dot(qC * tl.exp(_cumsum0(gC, C, False)), S, input_precision="ieee")
    if PER_KEY:
        cs = tl.arange(0, C)
        Ac = tl.load(A + bh * N * C * C + rC[:, None] * C + cs[None, :])  # (C, C)
    else:
        kC = _tile(k + qk_at, rC, live, ks, K, H * K, 1)
        Ac = tl.dot(qC, tl.trans(kC), input_precision="ieee") * _head_decay(g_at, rC, live, H, C)
    vC = _tile(v + v_at, rC, live, vs, V, H * V, 1)
    out += tl.dot(Ac, vC, input_precision="ieee")
    tl.store(o + v_at + rC.to(tl.int64)[:, None] * H * V + vs[None, :], out,
             mask=live[:, None] & (vs[None, :] < V))


@triton.jit
def _store_grads(dq, dk, dv, dG, at, v_at, rows, live, ks, vs, H, K, V, scale, qs, kr,
                 dq_s, dk_r, dv_r):
    """dq (of the unscaled q), dk, dv and ``dG = q dq - k dk`` (per key) for ``rows``."""
    kmask, vmask = live[:, None] & (ks[None, :] < K), live[:, None] & (vs[None, :] < V)
    r = rows.to(tl.int64)[:, None]
    kat, vat = at + r * H * K + ks[None, :], v_at + r * H * V + vs[None, :]
    tl.store(dq + kat, dq_s * scale, mask=kmask)
    tl.store(dk + kat, dk_r, mask=kmask)
    tl.store(dv + vat, dv_r, mask=vmask)
    tl.store(dG + kat, qs * dq_s - kr * dk_r, mask=kmask)


@triton.jit
def _grad_key_kernel(q, k, v, g, do, states, dstates, A, dq, dk, dv, dG, scale, T, H, K, V, N,
                     C: tl.constexpr, SUB: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Per-key g: the gradients of the SUB steps of sub-chunk I of chunk n. ``dA_ij = dO_i v_j``;
    ``dq_i`` sums over j <= i, ``dk_j`` and ``dv_j`` over i >= j, each split like the forward's
    attention: whole sub-chunks by matmul, the diagonal one step at a time."""
    sub, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    at, v_at = (b * T * H + h) * K, (b * T * H + h) * V
    c0 = n * C
    s = c0 + sub * SUB
    e = s + SUB - 1  # last step of I
    rI, rC = s + tl.arange(0, SUB), c0 + tl.arange(0, C)
    lI, lC = rI < T, rC < T
    ks, vs = tl.arange(0, BK), tl.arange(0, BV)
    qI = _tile(q + at, rI, lI, ks, K, H * K, 1) * scale  # (SUB, BK)
    kI = _tile(k + at, rI, lI, ks, K, H * K, 1)
    gI = _tile(g + at, rI, lI, ks, K, H * K, 1)
    vI = _tile(v + v_at, rI, lI, vs, V, H * V, 1)  # (SUB, BV)
    doI = _tile(do + v_at, rI, lI, vs, V, H * V, 1)
    qC = _tile(q + at, rC, lC, ks, K, H * K, 1) * scale  # (C, BK)
    kC = _tile(k + at, rC, lC, ks, K, H * K, 1)
    gC = _tile(g + at, rC, lC, ks, K, H * K, 1)
    vC = _tile(v + v_at, rC, lC, vs, V, H * V, 1)  # (C, BV)
    doC = _tile(do + v_at, rC, lC, vs, V, H * V, 1)
    kv = ks[:, None] * V + vs[None, :]
    kv_live = (ks[:, None] < K) & (vs[None, :] < V)
    S = tl.load(states + (bh * N + n) * K * V + kv, mask=kv_live, other=0.0)  # (BK, BV)
    dS = tl.load(dstates + (bh * N + n) * K * V + kv, mask=kv_live, other=0.0)

    # dq_i: from S, then from columns before I, then from I's own columns.
    u = _cumsum0(gI, SUB, False)  # g from s through i
    before = tl.sum(tl.where((rC < s)[:, None], gC, 0.0), axis=0)  # (BK,): g from c0 to s - 1
    dq_s = tl.exp(u + before[None, :]) * tl.dot(doI, tl.trans(S), input_precision="ieee")
    dAr = tl.dot(doI, tl.trans(vC), input_precision="ieee")  # (SUB, C): dO_i . v_j
    gap = _tile(g + at, rC + 1, (rC + 1 < s) & (rC + 1 < T), ks, K, H * K, 1)
    kw = tl.where((rC < s)[:, None], kC * tl.exp(_cumsum0(gap, C, True)), 0.0)
    dq_s += tl.exp(u) * tl.dot(dAr, kw, input_precision="ieee")
    for jj in range(SUB):
        j = s + jj
        kj = tl.load(k + at + j.to(tl.int64) * H * K + ks, mask=(ks < K) & (ks * 0 + j < T),
                     other=0.0)  # (BK,)
        seg = _cumsum0(tl.where((rI > j)[:, None], gI, 0.0), SUB, False)  # g after j through i
        coef = tl.sum(tl.where((rC == j)[None, :], dAr, 0.0), axis=1)  # (SUB,): dA_ij
        coef = tl.where(rI >= j, coef, 0.0)
        dq_s += coef[:, None] * kj[None, :] * tl.exp(seg)

    # dk_j, dv_j: from dS, then from rows after I, then from I's own rows.
    after = tl.sum(tl.where((rC > e)[:, None], gC, 0.0), axis=0)  # (BK,): g after I
    gIn = _tile(g + at, rI + 1, (rI + 1 <= e) & (rI + 1 < T), ks, K, H * K, 1)  # g_{j+1} in I
    rest = _cumsum0(gIn, SUB, True)  # g after j through e
    wk = tl.exp(rest + after[None, :])  # (SUB, BK): exp(G_C - G_j)
    dk_r = wk * tl.dot(vI, tl.trans(dS), input_precision="ieee")
    dv_r = tl.dot(kI * wk, dS, input_precision="ieee")
    dAc = tl.dot(doC, tl.trans(vI), input_precision="ieee")  # (C, SUB): dO_i . v_j
    z = _cumsum0(tl.where((rC > e)[:, None], gC, 0.0), C, False)  # g after e through i
    qz = tl.where((rC > e)[:, None], qC * tl.exp(z), 0.0)
    dk_r += tl.exp(rest) * tl.dot(tl.trans(dAc), qz, input_precision="ieee")
    for ii in range(SUB):
        i = s + ii
        qi = tl.load(q + at + i.to(tl.int64) * H * K + ks, mask=(ks < K) & (ks * 0 + i < T),
                     other=0.0) * scale
        seg = _cumsum0(tl.where((rI + 1 <= i)[:, None], gIn, 0.0), SUB, True)
        coef = tl.sum(tl.where((rC == i)[:, None], dAc, 0.0), axis=0)  # (SUB,): dA_ij
        coef = tl.where(rI <= i, coef, 0.0)
        dk_r += coef[:, None] * qi[None, :] * tl.exp(seg)
    Ac = tl.load(A + bh * N * C * C + rC[:, None] * C + (rI - c0)[None, :])  # (C, SUB): A_ij
    dv_r += tl.dot(tl.trans(Ac), doC, input_precision="ieee")
    _store_grads(dq, dk, dv, dG, at, v_at, rI, lI, ks, vs, H, K, V, scale, qI, kI, dq_s, dk_r,
                 dv_r)


@triton.jit
def _grad_head_kernel(q, k, v, g, do, states, dstates, dq, dk, dv, dG, scale, T, H, K, V, N,
                      C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Per-head g: the gradients of chunk n, the decay a (C, C) matrix E beside ``q k^T``."""
    n, bh = tl.program_id(1), tl.program_id(2).to(tl.int64)
    b, h = bh // H, bh % H
    at, v_at, g_at = (b * T * H + h) * K, (b * T * H + h) * V, g + b * T * H + h
    step = tl.arange(0, C)
    rC = n * C + step
    lC = rC < T
    ks, vs = tl.arange(0, BK), tl.arange(0, BV)
    qC = _tile(q + at, rC, lC, ks, K, H * K, 1) * scale  # (C, BK)
    kC = _tile(k + at, rC, lC, ks, K, H * K, 1)
    vC = _tile(v + v_at, rC, lC, vs, V, H * V, 1)  # (C, BV)
    doC = _tile(do + v_at, rC, lC, vs, V, H * V, 1)
    kv = ks[:, None] * V + vs[None, :]
    kv_live = (ks[:, None] < K) & (vs[None, :] < V)
    S = tl.load(states + (bh * N + n) * K * V + kv, mask=kv_live, other=0.0)  # (BK, BV)
    dS = tl.load(dstates + (bh * N + n) * K * V + kv, mask=kv_live, other=0.0)
    gr = tl.load(g_at + rC * H, mask=lC, other=0.0)  # (C,)
    nxt = tl.load(g_at + (rC + 1) * H, mask=(step + 1 < C) & (rC + 1 < T), other=0.0)
    into = tl.exp(tl.cumsum(gr, axis=0))  # exp(G_i)
    out = tl.exp(tl.cumsum(nxt, axis=0, reverse=True))  # exp(G_C - G_j)
    E = _head_decay(g_at, rC, lC, H, C)  # (C, C)
    dA = tl.dot(doC, tl.trans(vC), input_precision="ieee") * E
    dq_s = into[:, None] * tl.dot(doC, tl.trans(S), input_precision="ieee")
    dq_s += tl.dot(dA, kC, input_precision="ieee")
    dk_r = out[:, None] * tl.dot(vC, tl.trans(dS), input_precision="ieee")
    dk_r += tl.dot(tl.trans(dA), qC, input_precision="ieee")
    Ac = tl.dot(qC, tl.trans(kC), input_precision="ieee") * E
    dv_r = tl.dot(tl.trans(Ac), doC, input_precision="ieee")
    dv_r += tl.dot(kC * out[:, None], dS, input_precision="ieee")
    _store_grads(dq, dk, dv, dG, at, v_at, rC, lC, ks, vs, H, K, V, scale, qC, kC, dq_s, dk_r,
                 dv_r)


def _widths(K: int, V: int) -> Tuple[int, int]:
    return max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))


def _states(k, v, g, h0, C: int):
    """States entering each chunk ``(B·H, N, K, V)`` and the final state, from h0."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    N = triton.cdiv(T, C)
    BK, _ = _widths(K, V)
    BV = min(CARRY_BV, _widths(K, V)[1])
    states, hT = k.new_empty(B * H, N, K, V), torch.empty_like(h0)
    _carry_kernel[(triton.cdiv(V, BV), B * H)](k, v, g, h0, states, hT, 1.0, T, H, K, V, N,
                                                C=C, BK=BK, BV=BV, PER_KEY=g.dim() == 4,
                                                REVERSE=False, num_warps=NUM_WARPS)
    return states, hT


def _attention(q, k, g, scale: float, C: int):
    """Per-key g: every chunk's causal attention ``(B·H, N·C, C)``; per-head: None."""
    if g.dim() == 3:
        return None
    B, T, H, K = q.shape
    N = triton.cdiv(T, C)
    A = q.new_empty(B * H, N * C, C)
    sub = min(SUB, C)
    _attention_kernel[(C // sub, N, B * H)](q, k, g, A, scale, T, H, K, N, C=C, SUB=sub,
                                            BK=_widths(K, 1)[0], num_warps=NUM_WARPS)
    return A


@torch.library.custom_op("rnnlab::gla_chunk", mutates_args=())
def gla_chunk(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h0: Tensor, scale: float,
              chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Contiguous compute-dtype q, k ``(B, T, H, K)``, v ``(B, T, H, V)``, g ``(B, T, H, K)``
    or ``(B, T, H)``, h0 ``(B, H, K, V)``; T >= 1, chunk_size a power of two >= 16 ->
    o ``(B, T, H, V)``, the final state ``(B, H, K, V)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    states, hT = _states(k, v, g, h0, C)
    A = _attention(q, k, g, scale, C)
    o = torch.empty_like(v)
    BK, BV = _widths(K, V)
    N = triton.cdiv(T, C)
    _output_kernel[(triton.cdiv(V, BV), N, B * H)](q, k, v, g, states, hT if A is None else A, o,
                                                   scale, T, H, K, V, N, C=C, BK=BK, BV=BV,
                                                   PER_KEY=g.dim() == 4, num_warps=NUM_WARPS)
    return o, hT


@gla_chunk.register_fake
def _(q, k, v, g, h0, scale, chunk_size):
    return torch.empty_like(v), torch.empty_like(h0)


@torch.library.custom_op("rnnlab::gla_chunk_backward", mutates_args=())
def gla_chunk_backward(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h0: Tensor, do: Tensor,
                       dhT: Tensor, scale: float, chunk_size: int
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The gradients of :func:`gla_chunk` given ``do`` and ``dhT``: dq, dk, dv, dg, dh0. The
    chunk states (and per-key attention) are recomputed, not saved by the forward."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    N = triton.cdiv(T, C)
    BK, BV = _widths(K, V)
    per_key = g.dim() == 4
    states, hT = _states(k, v, g, h0, C)
    A = _attention(q, k, g, scale, C)
    dstates, dh0 = q.new_empty(B * H, N, K, V), torch.empty_like(h0)
    carry_bv = min(CARRY_BV, BV)
    _carry_kernel[(triton.cdiv(V, carry_bv), B * H)](q, do, g, dhT, dstates, dh0, scale, T, H,
                                                      K, V, N, C=C, BK=BK, BV=carry_bv,
                                                      PER_KEY=per_key, REVERSE=True,
                                                      num_warps=NUM_WARPS)
    dq, dk, dv, dG = (torch.empty_like(x) for x in (q, k, v, q))
    if per_key:
        sub = min(SUB, C)
        _grad_key_kernel[(C // sub, N, B * H)](q, k, v, g, do, states, dstates, A, dq, dk, dv,
                                               dG, scale, T, H, K, V, N, C=C, SUB=sub, BK=BK,
                                               BV=BV, num_warps=NUM_WARPS)
        last = (dhT * hT).sum(-1)  # (B, H, K): every g_t moves S_T = exp(G_T) S_0 + ...
    else:
        _grad_head_kernel[(1, N, B * H)](q, k, v, g, do, states, dstates, dq, dk, dv, dG, scale,
                                         T, H, K, V, N, C=C, BK=BK, BV=BV, num_warps=NUM_WARPS)
        dG = dG.sum(-1)  # (B, T, H): one decay per head
        last = (dhT * hT).sum((-1, -2))  # (B, H)
    dg = dG.flip(1).cumsum(1).flip(1) + last.unsqueeze(1)  # dg_t = sum_{s >= t} dG_s + last
    return dq, dk, dv, dg, dh0


@gla_chunk_backward.register_fake
def _(q, k, v, g, h0, do, dhT, scale, chunk_size):
    return tuple(torch.empty_like(x) for x in (q, k, v, g, h0))


def _setup_context(ctx, inputs, output):
    q, k, v, g, h0, scale, chunk_size = inputs
    ctx.save_for_backward(q, k, v, g, h0)
    ctx.scale, ctx.chunk_size = scale, chunk_size


def _backward(ctx, do, dhT):
    q, k, v, g, h0 = ctx.saved_tensors
    do = torch.zeros_like(v) if do is None else do.contiguous()
    dhT = torch.zeros_like(h0) if dhT is None else dhT.contiguous()
    grads = gla_chunk_backward(q, k, v, g, h0, do, dhT, ctx.scale, ctx.chunk_size)
    return (*grads, None, None)


gla_chunk.register_autograd(_backward, setup_context=_setup_context)


def _check_chunk(chunk_size) -> int:
    """C: CHUNK for None, else a power of two >= 16 (tl.arange and tl.dot's sizes)."""
    if chunk_size is None:
        return CHUNK
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size: expected a power of two >= 16 for the Triton kernels, "
                         f"got {chunk_size}")
    return int(chunk_size)


def _run(q, k, v, g, S0, scale: float, C: int):
    """The op on ``(B, T, H, ·)`` compute-dtype tensors; T == 0 needs no kernel."""
    if q.shape[1] == 0:
        return v.new_zeros(v.shape), S0
    q, k, v, g, S0 = (x.contiguous() for x in (q, k, v, g, S0))
    return gla_chunk(q, k, v, g, S0, scale, C)


def gated_linear_attention_triton(q: Tensor, k: Tensor, v: Tensor, g: Tensor,
                                  scale: Optional[float] = None,
                                  initial_state: Optional[Tensor] = None,
                                  output_final_state: bool = False,
                                  cu_seqlens: Optional[Tensor] = None,
                                  chunk_size: Optional[int] = None
                                  ) -> Tuple[Tensor, Optional[Tensor]]:
    """:func:`rnnlab.ops.gated_linear_attention` on the Triton kernels: the same arguments,
    checks, shapes, dtypes and gradients, except ``chunk_size``: None for CHUNK (32), else a
    power of two >= 16. ``cu_seqlens`` packs are run as zero-padded rows (a padded step has
    k = g = 0 and leaves the state as it is), then unpadded."""
    B, T, H, K, V, cu, dt = _check_inputs(q, k, v, g, scale, initial_state, cu_seqlens,
                                          chunk_size)
    C = _check_chunk(chunk_size)
    out_dtype = q.dtype
    q, k, v, g = (x.to(dt) for x in (q, k, v, g))
    scale = 1.0 if scale is None else float(scale)
    rows = B if cu is None else len(cu) - 1
    S0 = q.new_zeros(rows, H, K, V) if initial_state is None else initial_state.to(dt)
    if cu is None:
        o, S = _run(q, k, v, g, S0, scale, C)
    else:
        mask, packed = _pack_rows(cu, q, k, v, g)  # (N, L), (N, L, H, ...)
        o, S = _run(*packed, S0, scale, C)  # (N, L, H, V)
        o = o[mask].unsqueeze(0)  # (1, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)
