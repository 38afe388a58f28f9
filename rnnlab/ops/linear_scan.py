"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``, elementwise over features.

``linear_scan`` is the fast op: a numba kernel on CPU (one pass over memory, time loop inside,
threads over batch and feature blocks) or a pure-torch chunked scan elsewhere (GPU, or numba
absent). Its backward is the analytic reverse scan, never autograd through a loop.
``linear_scan_reference`` is the plain loop over time that both are tested against.

Shapes: ``a, b`` are ``(B, T, ...)``; ``a`` may hold size-1 trailing dims that broadcast against
``b`` (e.g. ``a (B, T, H, 1, 1)`` with ``b (B, T, H, K, V)``); states are ``(B, ...)``, or
``(N, ...)`` with ``cu_seqlens`` (see ``varlen.py``).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .varlen import check_cu_seqlens, segments

try:  # optional: the fast CPU kernel; without it CPU runs the torch chunked scan
    import numba as _numba
except ImportError:  # pragma: no cover - exercised where numba is not installed
    _numba = None

USE_NUMBA = _numba is not None  # module-level switch (tests turn it off to test the torch path)
_MIN_BROADCAST = 16  # below this many broadcast elements per `a` value, expanding `a` is faster


# ----------------------------------------------------------------------------- checks, dtypes

def _check(a, b, initial_state, cu_seqlens) -> Optional[torch.Tensor]:
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


def _dtypes(a, b, initial_state) -> Tuple[torch.dtype, torch.dtype]:
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
    return h.to(io), (torch.cat(finals) if output_final_state else None)


# ----------------------------------------------------------------------------- numba kernels
# Layout: segments of rows (a batch row is a segment of T rows), features contiguous in a row.
# Each work item is one segment x one block of features and walks its rows in order, so every
# stream it touches is read front to back and the state never leaves the cache.

if _numba is not None:
    _jit = _numba.njit(parallel=True, cache=True)

    @_jit
    def _fwd_full(a, b, h0, starts, block, h, hT):  # a, b, h: (rows, F); h0, hT: (N, F)
        width = b.shape[1]
        nblk = (width + block - 1) // block
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s = item // nblk
            f0 = (item % nblk) * block
            f1 = min(f0 + block, width)
            t0, t1 = starts[s], starts[s + 1]
            if t1 == t0:
                hT[s, f0:f1] = h0[s, f0:f1]
                continue
            for f in range(f0, f1):
                h[t0, f] = a[t0, f] * h0[s, f] + b[t0, f]
            for t in range(t0 + 1, t1):
                for f in range(f0, f1):
                    h[t, f] = a[t, f] * h[t - 1, f] + b[t, f]
            hT[s, f0:f1] = h[t1 - 1, f0:f1]

    @_jit
    def _bwd_full(a, h, h0, dh, dhT, starts, block, da, db, dh0):  # as _fwd_full
        width = h.shape[1]
        nblk = (width + block - 1) // block
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s = item // nblk
            f0 = (item % nblk) * block
            f1 = min(f0 + block, width)
            t0, t1 = starts[s], starts[s + 1]
            if t1 == t0:
                dh0[s, f0:f1] = dhT[s, f0:f1]
                continue
            for f in range(f0, f1):  # db holds the running reverse-scan state g
                db[t1 - 1, f] = dh[t1 - 1, f] + dhT[s, f]
            for t in range(t1 - 1, t0, -1):  # g_{t-1} from g_t, and da_t
                for f in range(f0, f1):
                    da[t, f] = db[t, f] * np.conj(h[t - 1, f])
                    db[t - 1, f] = dh[t - 1, f] + np.conj(a[t, f]) * db[t, f]
            for f in range(f0, f1):
                da[t0, f] = db[t0, f] * np.conj(h0[s, f])
                dh0[s, f] = np.conj(a[t0, f]) * db[t0, f]
