"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``, elementwise over features.

``linear_scan`` is the fast op: on CPU a numba kernel (optional dependency) that makes one pass
over memory with the time loop inside, threaded over sequences and feature blocks with
``torch.get_num_threads()`` threads; elsewhere (GPU, or numba absent) a pure-torch chunked scan.
``backend(device)`` says which. The backward is the analytic reverse scan, never autograd
through a loop. ``linear_scan_reference`` is the plain loop over time both are tested against.

Shapes: ``a, b`` are ``(B, T, ...)``; ``a`` may hold size-1 trailing dims that broadcast against
``b`` (e.g. ``a (B, T, H, 1, 1)`` with ``b (B, T, H, K, V)``); states are ``(B, ...)``, or
``(N, ...)`` with ``cu_seqlens`` (see ``varlen.py``).
"""
from __future__ import annotations

import contextlib

import math

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .varlen import check_cu_seqlens, segments

try:  # optional: the fast CPU kernel; without it CPU runs the torch chunked scan
    import numba as _numba
except ImportError:  # pragma: no cover - exercised where numba is not installed
    _numba = None

USE_NUMBA = _numba is not None  # module-level switch (tests turn it off to test the torch path)
_MIN_BROADCAST = 16  # fewer b elements per broadcast `a` value: expanding `a` is faster


# ----------------------------------------------------------------------------- checks, dtypes

def _check(a, b, initial_state, cu_seqlens) -> torch.Tensor | None:
    """Validate the inputs; returns ``cu_seqlens`` as a CPU long tensor, or None."""
    for name, x in (("a", a), ("b", b), ("initial_state", initial_state)):
        if x is None and name == "initial_state":
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{name}: expected a floating or complex dtype, got {x.dtype}")
    if b.dim() < 2:
        raise ValueError(f"b: expected shape (B, T, ...) with at least 2 dims, got "
                         f"{tuple(b.shape)}")
    feats = tuple(b.shape[2:])
    if (a.dim() != b.dim() or a.shape[:2] != b.shape[:2]
            or any(m not in (1, n) for m, n in zip(a.shape[2:], feats))):
        raise ValueError(f"a: expected shape {tuple(b.shape)} (that of b), or with size-1 "
                         f"trailing dims that broadcast against it, got {tuple(a.shape)}")
    for name, x in (("b", b), ("initial_state", initial_state)):
        if x is not None and x.device != a.device:
            raise ValueError(f"{name}: expected device {a.device} (that of a), got {x.device}")
    cu = check_cu_seqlens(cu_seqlens, b.shape[0], b.shape[1])
    rows = b.shape[0] if cu is None else cu.numel() - 1
    if initial_state is not None and tuple(initial_state.shape) != (rows,) + feats:
        what = "(B, ...)" if cu is None else "(N, ...) with N = len(cu_seqlens) - 1"
        raise ValueError(f"initial_state: expected shape {what} = {(rows,) + feats}, got "
                         f"{tuple(initial_state.shape)}")
    return cu


def _dtypes(a, b, initial_state) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of h, compute dtype): h follows a and b (complex if the state is complex); the
    state and the arithmetic are at least fp32 (bf16/fp16 compute in fp32)."""
    io = torch.promote_types(a.dtype, b.dtype)
    compute = io if initial_state is None else torch.promote_types(io, initial_state.dtype)
    if compute.is_complex and not io.is_complex:
        io = compute
    return io, torch.promote_types(compute, torch.float32)


# ----------------------------------------------------------------------------- reference

def linear_scan_reference(a, b, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Plain loop over time, the source of truth: ``h_t = a_t * h_{t-1} + b_t``.

    a: (B, T, ...) broadcasting against b: (B, T, ...); initial_state: (B, ...) or (N, ...)
    with cu_seqlens (zeros if None). Returns h: (B, T, ...) in the input dtype and
    h_T: (B, ...) or (N, ...) in the compute dtype (>= fp32), or None.
    """
    cu = _check(a, b, initial_state, cu_seqlens)
    io, compute = _dtypes(a, b, initial_state)
    a, b = a.to(compute), b.to(compute)
    h0 = None if initial_state is None else initial_state.to(compute)
    spans = [(0, b.shape[1])] if cu is None else segments(cu)
    outs, finals = [], []
    for i, (start, end) in enumerate(spans):
        rows = slice(None) if cu is None else slice(i, i + 1)
        h = b.new_zeros((b.shape[0] if cu is None else 1,) + b.shape[2:])  # (B, ...)
        h = h if h0 is None else h0[rows]
        for t in range(start, end):
            h = a[:, t] * h + b[:, t]
            outs.append(h)
        finals.append(h)
    h = torch.stack(outs, 1) if outs else b.clone()  # (B, T, ...)
    return h.to(io), (torch.cat(finals) if output_final_state else None)  # h_T (B or N, ...)


# ----------------------------------------------------------------------------- torch path

def _torch_scan(a, b, h0):
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


def _torch_forward(a, b, h0, cu):
    """h (B, T, ...), h_T (B or N, ...) by the chunked torch scan, one call per sequence."""
    if cu is None:
        return _torch_scan(a, b, h0)
    parts = [_torch_scan(a[:, s:e], b[:, s:e], h0[i:i + 1])
             for i, (s, e) in enumerate(segments(cu))]
    h, hT = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts])  # (1, T, ...)
    return h, hT  # hT (N, ...)


def _torch_backward_dense(a, h, h0, dh, dhT):
    """Reverse scan g_t = dh_t + conj(a_{t+1}) g_{t+1} from g_T = dh_T (the h_T gradient) as a
    forward scan on flipped time. Returns da (a's shape), db (B, T, ...), dh0 (B, ...)."""
    if h.shape[1] == 0:
        return torch.zeros_like(a), torch.zeros_like(h), dhT.clone()
    a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], 1).conj()  # (B, T, ...)
    g, _ = _torch_scan(a_next.flip(1), dh.flip(1), dhT)
    g = g.flip(1)  # (B, T, ...)
    h_prev = torch.cat([h0.unsqueeze(1), h[:, :-1]], 1)  # (B, T, ...)
    dh0 = a[:, 0].conj() * g[:, 0]  # (B, ...)
    return (g * h_prev.conj()).sum_to_size(a.shape), g, dh0  # da summed to a's shape


def _torch_backward(a, h, h0, dh, dhT, cu):
    """da, db, dh0 by the torch reverse scan, one call per sequence."""
    if cu is None:
        return _torch_backward_dense(a, h, h0, dh, dhT)
    parts = [_torch_backward_dense(a[:, s:e], h[:, s:e], h0[i:i + 1], dh[:, s:e], dhT[i:i + 1])
             for i, (s, e) in enumerate(segments(cu))]
    return tuple(torch.cat([p[k] for p in parts], 0 if k == 2 else 1)  # dh0 (N, ...) on dim 0
                 for k in range(3))


# ----------------------------------------------------------------------------- numba kernels
# Rows: the packed (B T) time steps, features contiguous within a row; a batch row is a segment
# of T rows. A work item is one segment x one block of features and walks its rows in time
# order (backward: reversed), so each stream it touches is one sequential sweep of memory and
# the state stays in cache. ``a`` is either (rows, F) like b ("full"), or (rows, G) with b
# (rows, G, R) ("bcast": one a value per group of R contiguous features).

if _numba is not None:
    _jit = _numba.njit(parallel=True, cache=True)

    @_jit
    def _fwd_full(a, b, h0, starts, nblk, h, hT):  # a, b, h: (rows, F); h0, hT: (N, F)
        block = -(-b.shape[1] // nblk)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, f0 = item // nblk, (item % nblk) * block
            f1 = min(f0 + block, b.shape[1])
            prev = h0[s, f0:f1]
            for t in range(starts[s], starts[s + 1]):
                at, bt, ht = a[t, f0:f1], b[t, f0:f1], h[t, f0:f1]
                for f in range(f1 - f0):
                    ht[f] = at[f] * prev[f] + bt[f]
                prev = ht
            hT[s, f0:f1] = prev

    @_jit
    def _fwd_bcast(a, b, h0, starts, nblk, h, hT):  # a: (rows, G); b, h: (rows, G, R)
        block = -(-b.shape[1] // nblk)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, g0 = item // nblk, (item % nblk) * block
            g1 = min(g0 + block, b.shape[1])
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
        block, line = -(-h.shape[1] // nblk), max(1, 64 // h.itemsize)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, f0 = item // nblk, (item % nblk) * block
            f1 = min(f0 + block, h.shape[1])
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
        block = -(-h.shape[1] // nblk)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, g0 = item // nblk, (item % nblk) * block
            g1 = min(g0 + block, h.shape[1])
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


def backend(device="cpu") -> str:
    """The path ``linear_scan`` takes on ``device``: "numba" (CPU kernel) or "torch" (chunked)."""
    return "numba" if USE_NUMBA and _numba is not None and torch.device(device).type == "cpu" \
        else "torch"


def _numba_ready(*tensors) -> bool:
    return all(backend(t.device) == "numba" for t in tensors)


def _blocks(nseg: int, groups: int, threads: int) -> int:
    """Feature blocks per row. Whole rows stream best; rows are split (blocks >= 64 wide)
    only when there are too few sequences to keep the threads evenly busy."""
    if nseg % threads == 0 or nseg >= 4 * threads:
        return 1
    return max(1, min(threads, groups // 64))


@contextlib.contextmanager
def _torch_threads_kept():
    """Numba's OpenMP layer shares the OpenMP runtime with torch: launching its pool resets the
    thread count torch sees (1 became 2). Put torch's back after every kernel."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def numba_threads():
    """Run numba kernels with torch's thread count, and give torch its count back afterwards."""
    with _torch_threads_kept():  # the first call starts numba's pool
        _numba.set_num_threads(min(torch.get_num_threads(), _numba.config.NUMBA_NUM_THREADS))
        yield


def _plan(a, b, cu):
    """Kernel arguments shared by forward and backward: starts (N + 1,), feature blocks per
    row, and the kernel shapes of a-like (BT, G), b-like (BT, G, R) and state-like (N, G, R)
    arrays, without the R axis when a is not broadcast."""
    with numba_threads():
        pass  # numba's pool now runs torch's thread count
    batch, steps = b.shape[:2]
    groups = a[:1, :1].numel()
    rep = b[:1, :1].numel() // groups
    starts = np.arange(batch + 1, dtype=np.int64) * steps if cu is None else cu.numpy()
    nseg = len(starts) - 1
    nblk = _blocks(nseg, groups, _numba.get_num_threads())
    tail = (groups, rep) if rep > 1 else (groups,)
    return starts, nblk, (batch * steps, groups), (batch * steps,) + tail, (nseg,) + tail


def _empty(x):
    """A contiguous tensor like x (empty_like would keep a permuted or expanded layout)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _np(x, shape):
    """Zero-copy numpy view of a CPU tensor made contiguous (conj/neg views resolved first)."""
    return x.detach().resolve_conj().resolve_neg().contiguous().numpy().reshape(shape)  # shape


def _numba_forward(a, b, h0, cu):
    starts, nblk, a_shape, b_shape, s_shape = _plan(a, b, cu)
    h, hT = _empty(b), _empty(h0)  # (B, T, ...), (N, ...)
    kernel = _fwd_full if len(b_shape) == 2 else _fwd_bcast
    # dynamic scheduling: varlen segments differ in length
    with _numba.parallel_chunksize(1), _torch_threads_kept():
        kernel(_np(a, a_shape), _np(b, b_shape), _np(h0, s_shape), starts, nblk,
               _np(h, b_shape), _np(hT, s_shape))
    return h, hT


def _numba_backward(a, h, h0, dh, dhT, cu):
    starts, nblk, a_shape, b_shape, s_shape = _plan(a, h, cu)
    da, db, dh0 = _empty(a), _empty(h), _empty(h0)
    kernel = _bwd_full if len(b_shape) == 2 else _bwd_bcast
    with _numba.parallel_chunksize(1), _torch_threads_kept():
        kernel(_np(a, a_shape), _np(h, b_shape), _np(h0, s_shape), _np(dh, b_shape),
               _np(dhT, s_shape), starts, nblk,
               _np(da, a_shape), _np(db, b_shape), _np(dh0, s_shape))
    return da, db, dh0


# ----------------------------------------------------------------------------- autograd, API

def _kernel_layout(a_feats, b_feats) -> bool:
    """Whether the kernels take ``a`` as it is: like b, or one value per group broadcast over
    a trailing block of >= 16 elements (fewer is faster expanded to b's shape)."""
    if a_feats == b_feats:
        return True
    k = next(i for i, (m, n) in enumerate(zip(a_feats, b_feats)) if m != n)
    return all(m == 1 for m in a_feats[k:]) and math.prod(b_feats[k:]) >= _MIN_BROADCAST


class _LinearScan(torch.autograd.Function):
    """a (B, T, ...) broadcasting against b (B, T, ...), h0 (B or N, ...), all in one compute
    dtype -> h (B, T, ...), h_T (B or N, ...). Backward is the analytic reverse scan."""

    @staticmethod
    def forward(ctx, a, b, h0, cu):
        ctx.set_materialize_grads(False)  # an unused h or h_T gets no zero-filled gradient
        fast = _numba_ready(a, b, h0) and b.numel() > 0
        h, hT = (_numba_forward if fast else _torch_forward)(a, b, h0, cu)
        ctx.save_for_backward(a, h, h0)
        ctx.cu, ctx.fast = cu, fast
        return h, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dhT):
        a, h, h0 = ctx.saved_tensors
        dh = torch.zeros_like(h) if dh is None else dh
        dhT = torch.zeros_like(h0) if dhT is None else dhT
        backward = _numba_backward if ctx.fast else _torch_backward
        da, db, dh0 = backward(a, h, h0, dh, dhT, ctx.cu)
        return da, db, dh0, None


_run_linearscan = torch.compiler.disable(_LinearScan.apply)  # graph break under torch.compile


def linear_scan(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None,
                output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None):
    """Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` with ``h_0 = initial_state``.

    Args:
        a: (B, T, ...) decays; size-1 trailing dims broadcast against b, e.g. (B, T, H, 1, 1)
            with b (B, T, H, K, V). Real (fp16/bf16/fp32/fp64) or complex.
        b: (B, T, ...) inputs.
        initial_state: (B, ...), or (N, ...) with cu_seqlens; zeros if None.
        output_final_state: also return h_T.
        cu_seqlens: (N + 1,) cumulative lengths of N sequences packed along T (B == 1); each
            restarts from its own initial_state row.
    Returns:
        h: (B, T, ...) in the dtype of a and b (bf16/fp16 are computed in fp32);
        h_T: (B, ...) or (N, ...) in the compute dtype (>= fp32), or None.
    Gradients flow to a, b and initial_state, through h and h_T (not twice differentiable).
    On CPU with numba installed the kernel moves each tensor through memory once (forward:
    read a, b, write h; backward: read dh, a, h, write da, db).
    """
    cu = _check(a, b, initial_state, cu_seqlens)
    io, compute = _dtypes(a, b, initial_state)
    feats = b.shape[2:]
    if _numba_ready(a) and not _kernel_layout(tuple(a.shape[2:]), tuple(feats)):
        a = a.expand(b.shape)  # (B, T, ...) like b; autograd sums the gradient back
    h0 = (b.new_zeros((b.shape[0] if cu is None else cu.numel() - 1,) + feats, dtype=compute)
          if initial_state is None else initial_state.to(compute))  # (B or N, ...)
    h, hT = _run_linearscan(a.to(compute), b.to(compute), h0, cu)
    return h.to(io), (hT if output_final_state else None)
