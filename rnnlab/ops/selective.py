"""Mamba's selective scan (S6), fused, beside its plain loop reference.

Per batch row, channel d (of H) and state index n (of N)::

    a_t[d, n] = exp(dt_t[d] A[d, n])          (2 exp(dt_t[d] A[d, n]) - 1 with neg_eigval)
    h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + dt_t[d] x_t[d] Bm_t[n]
    y_t[d]    = sum_n Cm_t[n] h_t[d, n]

(the cell adds its own ``D x`` skip). ``Bm, Cm`` are shared by all channels. A step with
``dt = 0`` has ``a = 1`` and no input in both modes: padded steps leave the state unchanged.

On CPU with numba (optional) the op is one fused kernel: each work item (a sequence x a block of
channels) keeps its ``(block, N)`` state in a local array, walks time and writes ``y`` directly,
saving the state only every ``CHECKPOINT`` steps. The analytic backward walks chunks in reverse,
recomputes a chunk's states from its checkpoint into a local ``(C, N)`` buffer and runs the
adjoint recurrence; nothing of size ``B T H N`` is ever formed. Elsewhere (CUDA, or numba
absent) a torch path materialises ``a, b (B, T, H, N)`` and calls ``linear_scan``.
``backend(device)`` says which path runs.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .checks import check_tensor
from .diagonal import linear_scan
from .numba_pool import np_view, numba_threads, pool_threads, segment_starts
from .numba_pool import numba as _numba
from .varlen import check_cu_seqlens, segments

Tensor = torch.Tensor
USE_NUMBA = _numba is not None  # module-level switch (tests turn it off to test the torch path)
CHECKPOINT = 64  # C: the kernel keeps the state every C steps, (B, T / C, H, N)


# ----------------------------------------------------------------------------- checks

def _check(x, dt, A, Bm, Cm, initial_state, cu_seqlens):
    """Validate the arguments; returns ``(cu, compute_dtype)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise (ValueError if isinstance(x, torch.Tensor) else TypeError)(
            f"x: expected a tensor of shape (B, T, H), got {got}")
    B, T, H = x.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise (ValueError if isinstance(A, torch.Tensor) else TypeError)(
            f"A: expected a tensor of shape (H, N) = ({H}, N), got {got}")
    N = A.shape[1]
    for name, t, shape, pattern in (("x", x, (B, T, H), "(B, T, H)"),
                                    ("dt", dt, (B, T, H), "(B, T, H)"),
                                    ("A", A, (H, N), "(H, N)"),
                                    ("Bm", Bm, (B, T, N), "(B, T, N)"),
                                    ("Cm", Cm, (B, T, N), "(B, T, N)")):
        check_tensor(name, t, shape, pattern, x.device, like="x")
    cu = check_cu_seqlens(cu_seqlens, B, T)
    if initial_state is not None:
        rows = B if cu is None else len(cu) - 1
        check_tensor("initial_state", initial_state, (rows, H, N),
                     "(B, H, N)" if cu is None else "(N, H, N) with N sequences", x.device,
                     like="x")
    compute = torch.float32
    for t in (x, dt, A, Bm, Cm, initial_state):
        if t is not None:
            compute = torch.promote_types(compute, t.dtype)
    return cu, compute


# ----------------------------------------------------------------------------- reference

def selective_scan_reference(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                             initial_state: Optional[Tensor] = None,
                             output_final_state: bool = False,
                             cu_seqlens: Optional[Tensor] = None, neg_eigval: bool = False
                             ) -> Tuple[Tensor, Optional[Tensor]]:
    """The source of truth: a plain loop over time. Same signature, shapes and dtypes as
    :func:`selective_scan`; each sequence of ``cu_seqlens`` runs from its own state row."""
    cu, dtype = _check(x, dt, A, Bm, Cm, initial_state, cu_seqlens)
    out_dtype = x.dtype
    x, dt, A, Bm, Cm = (t.to(dtype) for t in (x, dt, A, Bm, Cm))
    rows = x.shape[0] if cu is None else len(cu) - 1
    h0 = (x.new_zeros(rows, *A.shape) if initial_state is None
          else initial_state.to(dtype))  # (B or N, H, N)
    spans = [(0, x.shape[1])] if cu is None else segments(cu)
    outs, finals = [], []
    for i, (start, end) in enumerate(spans):
        h = h0 if cu is None else h0[i:i + 1]  # (B, H, N)
        for t in range(start, end):
            a = torch.exp(dt[:, t, :, None] * A)  # (B, H, N)
            if neg_eigval:
                a = 2 * a - 1
            u = (dt[:, t] * x[:, t]).unsqueeze(-1)  # (B, H, 1)
            h = a * h + u * Bm[:, t].unsqueeze(1)  # (B, H, N)
            outs.append((h * Cm[:, t].unsqueeze(1)).sum(-1))  # (B, H)
        finals.append(h)
    y = torch.stack(outs, 1) if outs else x.new_zeros(x.shape)  # (B, T, H)
    return y.to(out_dtype), (torch.cat(finals) if output_final_state else None)


# ----------------------------------------------------------------------------- torch path

def _torch_path(x, dt, A, Bm, Cm, h0, cu, neg_eigval):
    """Any device: materialise a, b (B, T, H, N), scan them with ``linear_scan``, read out."""
    a = torch.exp(dt.unsqueeze(-1) * A)  # (B, T, H, N)
    if neg_eigval:
        a = 2 * a - 1
    b = (dt * x).unsqueeze(-1) * Bm.unsqueeze(2)  # (B, T, H, 1) * (B, T, 1, N)
    h, hT = linear_scan(a, b, h0, True, cu)  # (B, T, H, N), (B or N, H, N)
    return (h * Cm.unsqueeze(2)).sum(-1), hT  # (B, T, H)


# ----------------------------------------------------------------------------- numba kernels
# Rows: the packed (B T) time steps; sequence s spans rows starts[s]:starts[s + 1] and owns
# checkpoints coff[s]:coff[s + 1], one per chunk of C steps from its start. A work item is one
# sequence x one block of channels. consts = [k, k - 1, 0] in the compute dtype: a = k e - (k-1)
# with k = 1 (e, exact) or 2 (2e - 1); typed scalars keep fp32 kernels in fp32.

if _numba is not None:
    from .numba_pool import item_span

    _jit = _numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})

    @_jit
    def _fwd(x, dt, A, Bm, Cm, h0, starts, coff, size, nblk, consts, y, hT, ckpt):
        H, N = A.shape  # x, dt, y: (rows, H); Bm, Cm: (rows, N); h0, hT, ckpt: (., H, N)
        k, km1, zero = consts[0], consts[1], consts[2]
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, d0, d1 = item_span(item, nblk, H)
            h = h0[s, d0:d1].copy()  # (d1 - d0, N): the state, local
            for t in range(starts[s], starts[s + 1]):
                j = t - starts[s]
                if j % size == 0:
                    ckpt[coff[s] + j // size, d0:d1] = h
                for d in range(d1 - d0):
                    dtv = dt[t, d0 + d]
                    u = dtv * x[t, d0 + d]
                    acc = zero
                    for n in range(N):
                        a = k * np.exp(dtv * A[d0 + d, n]) - km1
                        h[d, n] = a * h[d, n] + u * Bm[t, n]
                        acc += Cm[t, n] * h[d, n]
                    y[t, d0 + d] = acc
            hT[s, d0:d1] = h

    @_numba.njit(cache=True, fastmath={"reassoc", "contract"})
    def _recompute(x, dt, A, Bm, hs, es, c0, c1, D, k, km1):
        """States of one channel D over rows c0:c1 into hs[1:] from hs[0]; e's into es."""
        for t in range(c0, c1):
            j = t - c0
            dtv = dt[t, D]
            u = dtv * x[t, D]
            for n in range(A.shape[1]):
                e = np.exp(dtv * A[D, n])
                es[j, n] = e
                hs[j + 1, n] = (k * e - km1) * hs[j, n] + u * Bm[t, n]

    @_jit
    def _bwd(x, dt, A, Bm, Cm, ckpt, dy, dhT, starts, coff, size, nblk, consts,
             dx, ddt, dA, dBm, dCm, dh0):  # dA: (S, H, N); dBm, dCm: (nblk, rows, N)
        H, N = A.shape
        k, km1, zero = consts[0], consts[1], consts[2]
        for item in _numba.prange((starts.shape[0] - 1) * nblk):
            s, d0, d1 = item_span(item, nblk, H)
            blk = item % nblk  # which dBm, dCm slab this channel block writes
            g = dhT[s, d0:d1].copy()  # (d1 - d0, N): adjoint of the state, carried back
            gA = np.zeros((d1 - d0, N), A.dtype)
            hs, es = np.empty((size + 1, N), A.dtype), np.empty((size, N), A.dtype)
            for c in range(coff[s + 1] - coff[s] - 1, -1, -1):
                c0 = starts[s] + c * size
                c1 = min(c0 + size, starts[s + 1])
                for d in range(d1 - d0):
                    D = d0 + d
                    hs[0] = ckpt[coff[s] + c, D]
                    _recompute(x, dt, A, Bm, hs, es, c0, c1, D, k, km1)
                    for t in range(c1 - 1, c0 - 1, -1):
                        j, gy, dtv, xv = t - c0, dy[t, D], dt[t, D], x[t, D]
                        u = dtv * xv
                        sx, sa = zero, zero
                        for n in range(N):
                            gn = g[d, n] + Cm[t, n] * gy  # dL/dh_t
                            dCm[blk, t, n] += gy * hs[j + 1, n]
                            dBm[blk, t, n] += gn * u
                            sx += gn * Bm[t, n]
                            ga = gn * hs[j, n] * k * es[j, n]  # dL/d(dt A)
                            sa += ga * A[D, n]
                            gA[d, n] += ga * dtv
                            g[d, n] = (k * es[j, n] - km1) * gn
                        dx[t, D] = sx * dtv
                        ddt[t, D] = sx * xv + sa
            dh0[s, d0:d1] = g
            dA[s, d0:d1] = gA


def backend(device="cpu") -> str:
    """The path ``selective_scan`` takes on ``device``: "numba" (fused kernel) or "torch"."""
    return "numba" if USE_NUMBA and _numba is not None and torch.device(device).type == "cpu" \
        else "torch"


def _blocks(nseg: int, H: int, threads: int) -> int:
    """Channel blocks per sequence: whole rows unless too few sequences keep threads busy."""
    if nseg % threads == 0 or nseg >= 4 * threads:
        return 1
    return max(1, min(-(-4 * threads // nseg), H // 16))


def _plan(x, cu, size):
    """starts (S + 1,), chunk offsets coff (S + 1,), channel blocks per sequence."""
    batch, steps, H = x.shape
    starts = segment_starts(cu, batch, steps)
    coff = np.concatenate([[0], np.cumsum(-(-np.diff(starts) // size))]).astype(np.int64)
    return starts, coff, _blocks(len(starts) - 1, H, pool_threads())


def _consts(neg_eigval, dtype):
    k = 2.0 if neg_eigval else 1.0
    return np.array([k, k - 1.0, 0.0], dtype=np.float32 if dtype == torch.float32 else np.float64)


def _numba_forward(x, dt, A, Bm, Cm, h0, cu, neg_eigval, size):
    starts, coff, nblk = _plan(x, cu, size)
    rows, (H, N) = x.shape[0] * x.shape[1], A.shape
    y, hT = x.new_empty(x.shape), h0.new_empty(h0.shape)  # (B, T, H), (S, H, N)
    ckpt = x.new_empty(int(coff[-1]), H, N)  # (chunks, H, N)
    with numba_threads(), _numba.parallel_chunksize(1):
        _fwd(np_view(x, (rows, H)), np_view(dt, (rows, H)), np_view(A, (H, N)),
             np_view(Bm, (rows, N)), np_view(Cm, (rows, N)), np_view(h0, h0.shape), starts,
             coff, size, nblk, _consts(neg_eigval, x.dtype), np_view(y, (rows, H)),
             np_view(hT, hT.shape), np_view(ckpt, ckpt.shape))
    return y, hT, ckpt


def _numba_backward(x, dt, A, Bm, Cm, ckpt, dy, dhT, cu, neg_eigval, size):
    starts, coff, nblk = _plan(x, cu, size)
    rows, (H, N), S = x.shape[0] * x.shape[1], A.shape, dhT.shape[0]
    dx, ddt, dh0 = x.new_empty(x.shape), x.new_empty(x.shape), x.new_empty(dhT.shape)
    dA = x.new_empty(S, H, N)  # per sequence, summed below
    dBm, dCm = x.new_zeros(nblk, rows, N), x.new_zeros(nblk, rows, N)  # per channel block
    with numba_threads(), _numba.parallel_chunksize(1):
        _bwd(np_view(x, (rows, H)), np_view(dt, (rows, H)), np_view(A, (H, N)),
             np_view(Bm, (rows, N)), np_view(Cm, (rows, N)), np_view(ckpt, ckpt.shape),
             np_view(dy, (rows, H)), np_view(dhT, dhT.shape), starts, coff, size, nblk,
             _consts(neg_eigval, x.dtype), np_view(dx, (rows, H)), np_view(ddt, (rows, H)),
             np_view(dA, dA.shape), np_view(dBm, dBm.shape), np_view(dCm, dCm.shape),
             np_view(dh0, dh0.shape))
    dBm, dCm = (g.sum(0).reshape(Bm.shape) for g in (dBm, dCm))  # (B, T, N)
    return dx, ddt, dA.sum(0), dBm, dCm, dh0


# ----------------------------------------------------------------------------- autograd, API

class _SelectiveScan(torch.autograd.Function):
    """Compute-dtype CPU tensors -> y (B, T, H), h_T (B or N, H, N) by the fused kernel."""

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, h0, cu, neg_eigval, size):
        ctx.set_materialize_grads(False)  # an unused y or h_T gets no zero-filled gradient
        y, hT, ckpt = _numba_forward(x, dt, A, Bm, Cm, h0, cu, neg_eigval, size)
        ctx.save_for_backward(x, dt, A, Bm, Cm, ckpt)
        ctx.cu, ctx.neg_eigval, ctx.size = cu, neg_eigval, size
        return y, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dhT):
        x, dt, A, Bm, Cm, ckpt = ctx.saved_tensors
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        rows = x.shape[0] if ctx.cu is None else len(ctx.cu) - 1
        dhT = x.new_zeros(rows, *A.shape) if dhT is None else dhT.contiguous()
        grads = _numba_backward(x, dt, A, Bm, Cm, ckpt, dy, dhT, ctx.cu, ctx.neg_eigval,
                                ctx.size)
        return grads + (None, None, None)


_run_selectivescan = torch.compiler.disable(_SelectiveScan.apply)  # graph break under torch.compile


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor,
                   initial_state: Optional[Tensor] = None, output_final_state: bool = False,
                   cu_seqlens: Optional[Tensor] = None, neg_eigval: bool = False
                   ) -> Tuple[Tensor, Optional[Tensor]]:
    """Mamba's selective scan (see the module docstring for the recurrence).

    Args:
        x, dt: (B, T, H) inputs and step sizes (dt = 0 marks a padded step: state unchanged).
        A: (H, N) continuous-time decays (negative reals normally).
        Bm, Cm: (B, T, N) input and readout vectors, shared by all H channels.
        initial_state: (B, H, N), or (N, H, N) with cu_seqlens; zeros if None.
        output_final_state: also return h_T.
        cu_seqlens: (N + 1,) cumulative lengths of N sequences packed along T (B == 1).
        neg_eigval: decay 2 exp(dt A) - 1 in (-1, 1] instead of exp(dt A) in (0, 1].
    Returns:
        y: (B, T, H) in x's dtype (computed in fp32, fp64 if any input is fp64);
        h_T: (B or N, H, N) in the compute dtype, or None.
    Gradients flow to x, dt, A, Bm, Cm and initial_state (not twice differentiable).
    """
    cu, dtype = _check(x, dt, A, Bm, Cm, initial_state, cu_seqlens)
    out_dtype = x.dtype
    x, dt, A, Bm, Cm = (t.to(dtype).contiguous() for t in (x, dt, A, Bm, Cm))
    rows = x.shape[0] if cu is None else len(cu) - 1
    h0 = (x.new_zeros(rows, *A.shape) if initial_state is None
          else initial_state.to(dtype).contiguous())  # (B or N, H, N)
    if backend(x.device) == "numba" and x.numel() > 0:
        y, hT = _run_selectivescan(x, dt, A, Bm, Cm, h0, cu, bool(neg_eigval), CHECKPOINT)
    else:
        y, hT = _torch_path(x, dt, A, Bm, Cm, h0, cu, bool(neg_eigval))
    return y.to(out_dtype), (hT if output_final_state else None)
