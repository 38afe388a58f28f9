"""The MinMax neuron's recurrence ``x_t = max(min(r_t, x_{t-1}), s_t)``, elementwise over features.

``minmax_scan`` is the fast op: on CPU a numba kernel (optional dependency) that makes one pass
over memory with the time loop inside, threaded over sequences and feature blocks like
:func:`rnnlab.ops.linear_scan`; elsewhere (GPU, or numba absent) a torch path: the (min, max)
monoid by :func:`rnnlab.ops.associative_scan` forward, and the backward as one reverse diagonal
linear scan. ``backend(device)`` says which. ``minmax_scan_reference`` is the plain loop over time
both are tested against.

Gradients route through whichever argument each min/max selected; on a tie they split in half,
exactly as ``torch.minimum`` / ``torch.maximum`` do, so the op equals autograd through the
reference everywhere. With ``m_t = min(r_t, x_{t-1})``, ``a_t`` (m's share of max(m, s)) and
``b_t`` (x_{t-1}'s share of min(r, x)) in {0, 1/2, 1}, the gradient ``g_t`` of x_t obeys
``g_{t-1} = dx_{t-1} + a_t b_t g_t``, with ``dr_t = a_t (1 - b_t) g_t``, ``ds_t = (1 - a_t) g_t``.
A step with ``r = +inf, s = -inf`` is the identity map (padding): the state passes unchanged.

Shapes: ``r, s: (B, T, ...)``; states ``(B, ...)``, or ``(N, ...)`` with ``cu_seqlens``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .associative import associative_scan
from .diagonal import linear_scan
from .monoids import minmax_combine
from .numba_pool import empty_contiguous, np_view, plan_rows, torch_threads_kept
from .numba_pool import numba as _numba
from .varlen import check_cu_seqlens, segments

USE_NUMBA = _numba is not None  # module-level switch (tests turn it off to test the torch path)


# ----------------------------------------------------------------------------- checks, reference

def _check(r, s, initial_state, cu_seqlens) -> torch.Tensor | None:
    """Validate the inputs; returns ``cu_seqlens`` as a CPU long tensor, or None."""
    for name, x in (("r", r), ("s", s), ("initial_state", initial_state)):
        if x is None and name == "initial_state":
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a real floating dtype, got {x.dtype}")
    if r.dim() < 2:
        raise ValueError(f"r: expected shape (B, T, ...) with at least 2 dims, got "
                         f"{tuple(r.shape)}")
    if s.shape != r.shape:
        raise ValueError(f"s: expected shape {tuple(r.shape)} (that of r), got {tuple(s.shape)}")
    for name, x in (("s", s), ("initial_state", initial_state)):
        if x is not None and x.device != r.device:
            raise ValueError(f"{name}: expected device {r.device} (that of r), got {x.device}")
    cu = check_cu_seqlens(cu_seqlens, r.shape[0], r.shape[1])
    rows = r.shape[0] if cu is None else cu.numel() - 1
    expected = (rows,) + tuple(r.shape[2:])
    if initial_state is not None and tuple(initial_state.shape) != expected:
        what = "(B, ...)" if cu is None else "(N, ...) with N = len(cu_seqlens) - 1"
        raise ValueError(f"initial_state: expected shape {what} = {expected}, got "
                         f"{tuple(initial_state.shape)}")
    return cu


def _dtypes(r, s, initial_state) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of x, compute dtype >= fp32; bf16/fp16 compute in fp32)."""
    io = torch.promote_types(r.dtype, s.dtype)
    compute = io if initial_state is None else torch.promote_types(io, initial_state.dtype)
    return io, torch.promote_types(compute, torch.float32)


def minmax_scan_reference(r, s, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Plain loop over time, the source of truth: ``x_t = max(min(r_t, x_{t-1}), s_t)``.

    r, s: (B, T, ...); initial_state: (B, ...) or (N, ...) with cu_seqlens (zeros if None).
    Returns x: (B, T, ...) in the input dtype and x_T: (B, ...) or (N, ...) in the compute
    dtype (>= fp32), or None. Ties split gradients in half (torch.minimum / torch.maximum).
    """
    cu = _check(r, s, initial_state, cu_seqlens)
    io, compute = _dtypes(r, s, initial_state)
    r, s = r.to(compute), s.to(compute)
    x0 = None if initial_state is None else initial_state.to(compute)
    spans = [(0, r.shape[1])] if cu is None else segments(cu)
    outs, finals = [], []
    for i, (start, end) in enumerate(spans):
        x = r.new_zeros((r.shape[0] if cu is None else 1,) + r.shape[2:])  # (B, ...)
        x = x if x0 is None else x0[slice(None) if cu is None else slice(i, i + 1)]
        for t in range(start, end):
            x = torch.maximum(torch.minimum(r[:, t], x), s[:, t])
            outs.append(x)
        finals.append(x)
    x = torch.stack(outs, 1) if outs else r.clone()  # (B, T, ...)
    return x.to(io), (torch.cat(finals) if output_final_state else None)  # x_T (B or N, ...)


# ----------------------------------------------------------------------------- torch path

def _starts(cu, batch: int, steps: int, device):
    """Time index of each sequence's first step and which sequences are non-empty: dense rows
    all start at 0 (non-empty when T > 0); packed ones at cu[:-1] (non-empty when longer)."""
    if cu is None:
        return torch.zeros(1, dtype=torch.long, device=device), \
            torch.full((batch,), steps > 0, dtype=torch.bool, device=device)
    cu = cu.to(device)
    nonempty = cu[1:] > cu[:-1]
    return cu[:-1][nonempty], nonempty


def _at_starts(x, idx, cu):
    """x (B, T, ...) at each (non-empty) sequence's first step: (B, ...) dense, (k, ...) packed."""
    return x[:, 0] if cu is None else x[0, idx]


def _torch_forward(r, s, x0, cu):
    """x (B, T, ...), x_T (B or N, ...): each sequence's first element becomes the constant map
    to its x_1, so one associative scan of the (min, max) monoid over the (packed) row gives
    every state as the scanned s. All values are exact selections of the inputs."""
    batch, steps = r.shape[:2]
    idx, nonempty = _starts(cu, batch, steps, r.device)
    if steps == 0:
        return r.clone(), x0.clone()
    first = torch.maximum(torch.minimum(_at_starts(r, idx, cu), x0[nonempty]),
                          _at_starts(s, idx, cu))  # (B or k, ...)
    r_e, s_e = r.clone(), s.clone()
    if cu is None:
        r_e[:, 0], s_e[:, 0] = first, first
    else:
        r_e[0, idx], s_e[0, idx] = first, first
    _, x = associative_scan(minmax_combine, (r_e, s_e))  # (B, T, ...)
    if cu is None:
        return x, x[:, -1].clone()
    xT = x0.clone()
    xT[nonempty] = x[0, cu[1:].to(r.device)[nonempty] - 1]  # (N, ...)
    return x, xT


def _shares(r, s, x, x0, cu):
    """a: m's share of max(m, s), b: x_{t-1}'s share of min(r, x_{t-1}), each (B, T, ...) in
    {0, 1/2, 1}, as torch.maximum / torch.minimum split their gradients."""
    idx, nonempty = _starts(cu, r.shape[0], r.shape[1], r.device)
    prev = torch.roll(x, 1, 1)  # (B, T, ...): x_{t-1}, wrong at each sequence's first step
    if cu is None:
        prev[:, 0] = x0
    else:
        prev[0, idx] = x0[nonempty]
    m = torch.minimum(r, prev)
    half = torch.tensor(0.5, dtype=r.dtype, device=r.device)
    a = torch.where(m > s, 1.0, torch.where(m == s, half, 0.0))
    b = torch.where(prev < r, 1.0, torch.where(prev == r, half, 0.0))
    return a, b


def _torch_backward(r, s, x, x0, dx, dxT, cu):
    """dr, ds (B, T, ...), dx0 (B or N, ...): the reverse recurrence g_{t-1} = dx_{t-1} +
    a_t b_t g_t is a diagonal linear scan on flipped time, from g = dx_T past each end."""
    steps = r.shape[1]
    if steps == 0:
        return torch.zeros_like(r), torch.zeros_like(s), dxT.clone()
    a, b = _shares(r, s, x, x0, cu)
    c = a * b  # (B, T, ...): d x_t / d x_{t-1}
    c_next = torch.cat([c[:, 1:], torch.ones_like(c[:, :1])], 1)  # (B, T, ...)
    idx, nonempty = _starts(cu, r.shape[0], steps, r.device)
    if cu is None:
        g, g0 = linear_scan(c_next.flip(1), dx.flip(1), dxT, True)
        dx0 = c[:, 0] * g0  # (B, ...)
    else:
        c_next[0, cu[1:].to(r.device)[nonempty] - 1] = 1  # no carry across sequence ends
        g, g0 = linear_scan(c_next.flip(1), dx.flip(1), dxT.flip(0), True,
                            steps - cu.flip(0))  # g0: (N, ...) in reversed order
        c0 = torch.ones_like(dxT)
        c0[nonempty] = c[0, idx]
        dx0 = c0 * g0.flip(0)  # (N, ...); an empty sequence passes dx_T through
    g = g.flip(1)  # (B, T, ...)
    return g * a * (1 - b), g * (1 - a), dx0


# ----------------------------------------------------------------------------- numba kernels
# Rows: the packed (B T) time steps, F features contiguous within a row; a batch row is a
# segment of T rows. A work item is one segment x one block of features (``item_span``, shared
# with linear_scan's kernels) and walks its rows in time order (backward: reversed), so each
# stream is one sequential sweep of memory.

if _numba is not None:
    from .numba_pool import item_span

    _jit = _numba.njit(parallel=True, cache=True)

    @_jit
    def _fwd(r, s, x0, starts, nblk, x, xT):  # r, s, x: (rows, F); x0, xT: (N, F)
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            seg, f0, f1 = item_span(item, nblk, r.shape[1])
            prev = x0[seg, f0:f1]
            for t in range(starts[seg], starts[seg + 1]):
                rt, st, xt = r[t, f0:f1], s[t, f0:f1], x[t, f0:f1]
                for f in range(f1 - f0):
                    m = rt[f] if rt[f] < prev[f] else prev[f]
                    xt[f] = m if m > st[f] else st[f]
                prev = xt
            xT[seg, f0:f1] = prev

    @_jit
    def _bwd(r, s, x, x0, dx, dxT, starts, nblk, dr, ds, dx0):  # shapes as in _fwd
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            seg, f0, f1 = item_span(item, nblk, r.shape[1])
            carry = dxT[seg, f0:f1].copy()  # gradient reaching x_t from later steps
            for t in range(starts[seg + 1] - 1, starts[seg] - 1, -1):
                prev = x[t - 1, f0:f1] if t > starts[seg] else x0[seg, f0:f1]
                rt, st, dxt = r[t, f0:f1], s[t, f0:f1], dx[t, f0:f1]
                drt, dst = dr[t, f0:f1], ds[t, f0:f1]
                for f in range(f1 - f0):
                    g = dxt[f] + carry[f]
                    p, rf, sf = prev[f], rt[f], st[f]
                    m = rf if rf < p else p
                    a = 1.0 if m > sf else (0.5 if m == sf else 0.0)
                    b = 1.0 if p < rf else (0.5 if p == rf else 0.0)
                    gm = g * a
                    dst[f] = g - gm
                    drt[f] = gm - gm * b
                    carry[f] = gm * b
            dx0[seg, f0:f1] = carry


def backend(device="cpu") -> str:
    """The path ``minmax_scan`` takes on ``device``: "numba" (CPU kernel) or "torch"."""
    return "numba" if USE_NUMBA and _numba is not None and torch.device(device).type == "cpu" \
        else "torch"


def _numba_forward(r, s, x0, cu):
    starts, nblk, shape, _, s_shape = plan_rows(r, r, cu)  # (rows, F) x2, (N, F)
    x, xT = empty_contiguous(r), empty_contiguous(x0)  # (B, T, ...), (N, ...)
    with _numba.parallel_chunksize(1), torch_threads_kept():  # dynamic: lengths differ
        _fwd(np_view(r, shape), np_view(s, shape), np_view(x0, s_shape), starts, nblk,
             np_view(x, shape), np_view(xT, s_shape))
    return x, xT


def _numba_backward(r, s, x, x0, dx, dxT, cu):
    starts, nblk, shape, _, s_shape = plan_rows(r, r, cu)
    dr, ds, dx0 = empty_contiguous(r), empty_contiguous(s), empty_contiguous(x0)
    with _numba.parallel_chunksize(1), torch_threads_kept():
        _bwd(np_view(r, shape), np_view(s, shape), np_view(x, shape), np_view(x0, s_shape),
             np_view(dx, shape), np_view(dxT, s_shape), starts, nblk, np_view(dr, shape),
             np_view(ds, shape), np_view(dx0, s_shape))
    return dr, ds, dx0


# ----------------------------------------------------------------------------- autograd, API

class _MinMaxScan(torch.autograd.Function):
    """r, s (B, T, ...), x0 (B or N, ...), one compute dtype -> x (B, T, ...), x_T (B or N,
    ...). Backward recomputes each min from the saved states (no extra memory)."""

    @staticmethod
    def forward(ctx, r, s, x0, cu):
        ctx.set_materialize_grads(False)  # an unused x or x_T gets no zero-filled gradient
        fast = backend(r.device) == "numba" and r.numel() > 0
        x, xT = (_numba_forward if fast else _torch_forward)(r, s, x0, cu)
        ctx.save_for_backward(r, s, x, x0)
        ctx.cu, ctx.fast = cu, fast
        return x, xT

    @staticmethod
    @once_differentiable
    def backward(ctx, dx, dxT):
        r, s, x, x0 = ctx.saved_tensors
        dx = torch.zeros_like(x) if dx is None else dx
        dxT = torch.zeros_like(x0) if dxT is None else dxT
        dr, ds, dx0 = (_numba_backward if ctx.fast else _torch_backward)(
            r, s, x, x0, dx, dxT, ctx.cu)
        return dr, ds, dx0, None


_run_minmaxscan = torch.compiler.disable(_MinMaxScan.apply)  # graph break under torch.compile


def minmax_scan(r: torch.Tensor, s: torch.Tensor, initial_state: torch.Tensor | None = None,
                output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None):
    """MinMax recurrence ``x_t = max(min(r_t, x_{t-1}), s_t)`` with ``x_0 = initial_state``.

    Args:
        r: (B, T, ...) upper bounds (``+inf`` with ``s = -inf`` marks an identity step).
        s: (B, T, ...) lower bounds, same shape as r. Real (fp16/bf16/fp32/fp64).
        initial_state: (B, ...), or (N, ...) with cu_seqlens; zeros if None (x_0 = 0).
        output_final_state: also return x_T.
        cu_seqlens: (N + 1,) cumulative lengths of N sequences packed along T (B == 1); each
            restarts from its own initial_state row.
    Returns:
        x: (B, T, ...) in the dtype of r and s (bf16/fp16 are computed in fp32);
        x_T: (B, ...) or (N, ...) in the compute dtype (>= fp32), or None.
    Gradients flow to r, s and initial_state through x and x_T, split in half on ties as
    torch.minimum / torch.maximum do (not twice differentiable).
    """
    cu = _check(r, s, initial_state, cu_seqlens)
    io, compute = _dtypes(r, s, initial_state)
    rows = r.shape[0] if cu is None else cu.numel() - 1
    x0 = (r.new_zeros((rows,) + r.shape[2:], dtype=compute) if initial_state is None
          else initial_state.to(compute))  # (B or N, ...)
    x, xT = _run_minmaxscan(r.to(compute), s.to(compute), x0, cu)
    return x.to(io), (xT if output_final_state else None)
