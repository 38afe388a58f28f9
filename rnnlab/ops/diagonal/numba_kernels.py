"""The numba CPU kernels of ``linear_scan`` (fla's ``fused_recurrent``): one pass over memory
with the time loop inside, threaded over sequences and feature blocks; forward and the
analytic reverse scan. Only ``__init__`` calls them, on CPU tensors in one compute dtype.

Rows: the packed (B T) time steps, features contiguous within a row; a batch row is a segment
of T rows. A work item is one segment x one block of features and walks its rows in time
order (backward: reversed), so each stream it touches is one sequential sweep of memory and
the state stays in cache. ``a`` is either (rows, F) like b ("full"), or (rows, G) with b
(rows, G, R) ("bcast": one a value per group of R contiguous features). Full and bcast
kernels differ in their inner loops only (a bcast kernel with R = 1 would lose the
vectorization over features), so they stay separate; ``item_span`` is their shared part.
"""
from __future__ import annotations

import numpy as np

from ..numba_pool import empty_contiguous, np_view, plan_rows, torch_threads_kept
from ..numba_pool import numba as _numba

if _numba is not None:
    from ..numba_pool import item_span

    _jit = _numba.njit(parallel=True, cache=True)

    @_jit
    def _fwd_full(a, b, h0, starts, nblk, h, hT):  # a, b, h: (rows, F); h0, hT: (N, F)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, f0, f1 = item_span(item, nblk, b.shape[1])
            prev = h0[s, f0:f1]
            for t in range(starts[s], starts[s + 1]):
                at, bt, ht = a[t, f0:f1], b[t, f0:f1], h[t, f0:f1]
                for f in range(f1 - f0):
                    ht[f] = at[f] * prev[f] + bt[f]
                prev = ht
            hT[s, f0:f1] = prev

    @_jit
    def _fwd_bcast(a, b, h0, starts, nblk, h, hT):  # a: (rows, G); b, h: (rows, G, R)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, g0, g1 = item_span(item, nblk, b.shape[1])
            prev = h0[s, g0:g1]
            for t in range(starts[s], starts[s + 1]):
                at, bt, ht = a[t, g0:g1], b[t, g0:g1], h[t, g0:g1]
                for g in range(g1 - g0):
                    for r in range(b.shape[2]):
                        ht[g, r] = at[g] * prev[g, r] + bt[g, r]
                prev = ht
            hT[s, g0:g1] = prev

    @_jit
    def _bwd_full(a, h, h0, dh, dhT, starts, nblk, da, db, dh0):  # shapes as in _fwd_full
        line = max(1, 64 // h.itemsize)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, f0, f1 = item_span(item, nblk, h.shape[1])
            g, a_next = dhT[s, f0:f1], np.ones(f1 - f0, a.dtype)  # g_{t+1}, a_{t+1}
            for t in range(starts[s + 1] - 1, starts[s] - 1, -1):
                gt, dht, dat = db[t, f0:f1], dh[t, f0:f1], da[t, f0:f1]  # db holds g
                hp = h[t - 1, f0:f1] if t > starts[s] else h0[s, f0:f1]
                hi = f1 - f0
                while hi > 0:  # 64-byte lines in reverse too: one backward sweep (~15% faster)
                    lo = max(0, hi - line)
                    for f in range(lo, hi):
                        gt[f] = dht[f] + np.conj(a_next[f]) * g[f]
                        dat[f] = gt[f] * np.conj(hp[f])
                    hi = lo
                g, a_next = gt, a[t, f0:f1]
            for f in range(f1 - f0):
                dh0[s, f0 + f] = np.conj(a_next[f]) * g[f]

    # reassociation lets LLVM vectorize the sum over the broadcast block
    @_numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
    def _bwd_bcast(a, h, h0, dh, dhT, starts, nblk, da, db, dh0):  # shapes as in _fwd_bcast
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, g0, g1 = item_span(item, nblk, h.shape[1])
            g, a_next = dhT[s, g0:g1], np.ones(g1 - g0, a.dtype)
            for t in range(starts[s + 1] - 1, starts[s] - 1, -1):
                gt, dht = db[t, g0:g1], dh[t, g0:g1]
                hp = h[t - 1, g0:g1] if t > starts[s] else h0[s, g0:g1]
                for j in range(g1 - g0):
                    c = np.conj(a_next[j])
                    for r in range(h.shape[2]):
                        gt[j, r] = dht[j, r] + c * g[j, r]
                    acc = gt[j, 0] * np.conj(hp[j, 0])  # da sums over the broadcast block
                    for r in range(1, h.shape[2]):
                        acc += gt[j, r] * np.conj(hp[j, r])
                    da[t, g0 + j] = acc
                g, a_next = gt, a[t, g0:g1]
            for j in range(g1 - g0):
                dh0[s, g0 + j] = np.conj(a_next[j]) * g[j]


def numba_forward(a, b, h0, cu):
    """h (B, T, ...), h_T (B or N, ...) by the forward kernel."""
    starts, nblk, a_shape, b_shape, s_shape = plan_rows(a, b, cu)
    h, hT = empty_contiguous(b), empty_contiguous(h0)  # (B, T, ...), (N, ...)
    kernel = _fwd_full if len(b_shape) == 2 else _fwd_bcast
    # dynamic scheduling: varlen segments differ in length
    with _numba.parallel_chunksize(1), torch_threads_kept():
        kernel(np_view(a, a_shape), np_view(b, b_shape), np_view(h0, s_shape), starts, nblk,
               np_view(h, b_shape), np_view(hT, s_shape))
    return h, hT


def numba_backward(a, h, h0, dh, dhT, cu):
    """da (a's shape), db (B, T, ...), dh0 (B or N, ...) by the reverse-scan kernel."""
    starts, nblk, a_shape, b_shape, s_shape = plan_rows(a, h, cu)
    da, db, dh0 = empty_contiguous(a), empty_contiguous(h), empty_contiguous(h0)
    kernel = _bwd_full if len(b_shape) == 2 else _bwd_bcast
    with _numba.parallel_chunksize(1), torch_threads_kept():
        kernel(np_view(a, a_shape), np_view(h, b_shape), np_view(h0, s_shape),
               np_view(dh, b_shape), np_view(dhT, s_shape), starts, nblk,
               np_view(da, a_shape), np_view(db, b_shape), np_view(dh0, s_shape))
    return da, db, dh0
