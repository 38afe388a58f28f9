"""Small-block linear recurrences for solvers: ``h_t = A_t h_{t-1} + b_t`` with ``A_t`` block
diagonal, G blocks of M x M (M small: ParaLSTM's 2 x 2 (c, h) pairs, heads of a few channels).

Two forms, both forward-only (no autograd; solvers call them under ``no_grad``):

- ``block_scan``: A as explicit blocks ``(B, T, G, M, M)`` over a grouped state ``(B, T, G, M)``.
- ``column_scan_`` / ``column_adjoint_scan_``: the Newton engine's form. The state is a flat
  vector of S numbers and A is kept as M *columns* ``(T, B, M, S)``: ``(A v)_s = sum_m A[m, s]
  v[src[m, s]]``, where the table ``src (M, S)`` names the member m of s's group (so ``src`` alone
  says the structure: M = 1 diagonal; ``src[m, s] = m G + s % G`` per-channel blocks; else a
  gather). Arrays are time-major ``(T, B, ...)`` so a chunk of time is one contiguous slab;
  they work in place on a chunk and carry the state across chunks, so a solver can stream a long
  sequence through bounded buffers. The forward scan can add ``scale * h_t`` into ``out`` instead
  of writing it (the Newton update ``h <- h + w delta`` in the same sweep); the adjoint runs
  ``lambda_t = g_t + A_{t+1}^T lambda_{t+1}`` backwards in time with no flipped copies.

On CPU with numba each is one sweep over time per sequence, threads over the batch, the small
products unrolled (vectorized over channels for diagonal and per-channel blocks); elsewhere they
run ``linear_scan`` / ``matrix_scan``. ``block_scan_reference`` and ``column_scan_reference`` /
``column_adjoint_scan_reference`` are the plain loops they are tested against.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .diagonal import linear_scan
from .matrix import matrix_scan
from .numba_pool import numba as _numba
from .numba_pool import numba_threads

USE_NUMBA = _numba is not None  # module-level switch (tests turn it off to test the torch path)
MAX_NUMBA_BLOCK = 8  # beyond this the blocked matmuls of matrix_scan win


def block_scan_reference(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """Loop over time: A ``(B, T, G, M, M)``, b ``(B, T, G, M)``, h0 ``(B, G, M)`` ->
    h ``(B, T, G, M)``."""
    h, out = h0, []
    for A_t, b_t in zip(A.unbind(1), b.unbind(1)):
        h = (A_t @ h.unsqueeze(-1)).squeeze(-1) + b_t  # (B, G, M, M) @ (B, G, M, 1)
        out.append(h)
    return torch.stack(out, dim=1)


if _numba is not None:
    @_numba.njit(parallel=True, cache=True)
    def _sweep(A, b, h0, out):  # pragma: no cover - compiled; tested through block_scan
        batch, steps, groups, m = b.shape
        for i in _numba.prange(batch):
            h = h0[i].copy()  # (G, M)
            new = h.copy()  # next state, filled block by block
            for t in range(steps):
                for g in range(groups):
                    for r in range(m):
                        s = b[i, t, g, r]
                        for c in range(m):
                            s += A[i, t, g, r, c] * h[g, c]
                        new[g, r] = s
                for g in range(groups):
                    for r in range(m):
                        h[g, r] = new[g, r]
                        out[i, t, g, r] = new[g, r]


def _numba_ok(A: torch.Tensor) -> bool:
    return (USE_NUMBA and _numba is not None and A.device.type == "cpu"
            and A.shape[-1] <= MAX_NUMBA_BLOCK and A.dtype in (torch.float32, torch.float64))


@torch.no_grad()
def block_scan(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """``h_t = A_t h_{t-1} + b_t`` per block: A ``(B, T, G, M, M)``, b ``(B, T, G, M)``,
    h0 ``(B, G, M)`` -> h ``(B, T, G, M)``, all one dtype. Not differentiable."""
    if A.dim() != 5 or b.shape != A.shape[:-1] or h0.shape != (b.shape[0], *b.shape[2:]):
        raise ValueError(f"block_scan: expected A (B, T, G, M, M), b (B, T, G, M), h0 (B, G, M); "
                         f"got {tuple(A.shape)}, {tuple(b.shape)}, {tuple(h0.shape)}")
    if not _numba_ok(A) or b.shape[1] == 0:
        return matrix_scan(A, b, initial_state=h0)[0]
    out = torch.empty(b.shape, dtype=b.dtype)
    with numba_threads():
        _sweep(A.contiguous().numpy(), b.contiguous().numpy(), h0.contiguous().numpy(),
               out.numpy())
    return out


# ----------------------------------------------------------------------------- column form

def column_scan_reference(A: torch.Tensor, b: torch.Tensor, src: torch.Tensor,
                          h0: torch.Tensor) -> torch.Tensor:
    """Loop over time: ``h_t = A_t h_{t-1} + b_t`` with A ``(T, B, M, S)`` columns, b
    ``(T, B, S)``, src ``(M, S)``, h0 ``(B, S)`` -> h ``(T, B, S)``."""
    h, out = h0, []
    for A_t, b_t in zip(A.unbind(0), b.unbind(0)):
        h = (A_t * h[:, src]).sum(1) + b_t  # (B, M, S) * (B, M, S) summed over M
        out.append(h)
    return torch.stack(out, dim=0) if out else b.clone()


def column_adjoint_scan_reference(A: torch.Tensor, g: torch.Tensor, src: torch.Tensor,
                                  carry: torch.Tensor):
    """Loop backwards in time: ``lambda_t = g_t + q_t`` with ``q_{T-1} = carry`` and
    ``q_{t-1} = A_t^T lambda_t``: A ``(T, B, M, S)``, g ``(B, T, S)`` (batch-major), carry
    ``(B, S)`` -> (lambda ``(B, T, S)``, ``A_0^T lambda_0`` ``(B, S)``)."""
    within = _within(src)
    q, out = carry, [None] * g.shape[1]
    for t in range(g.shape[1] - 1, -1, -1):
        lam = g[:, t] + q
        out[t] = lam
        q = (A[t][:, within[None, :], src] * lam[:, src]).sum(1)  # A_t^T lambda_t: (B, S)
    return (torch.stack(out, 1) if out else g.clone()), q


def _within(src: torch.Tensor) -> torch.Tensor:
    """``(S,)``: the within-group index of each position (the m with ``src[m, s] == s``)."""
    s = torch.arange(src.shape[1], device=src.device)
    return (src == s[None, :]).to(torch.long).argmax(0)


def _kind(src: torch.Tensor) -> int:
    """0: diagonal (M = 1); 1: per-channel blocks, ``src[m, s] = m G + s % G``; 2: general."""
    M, S = src.shape
    if M == 1:
        return 0
    G = S // M
    table = src.detach().cpu().numpy()
    pattern = np.arange(M)[:, None] * G + np.arange(S)[None, :] % max(G, 1)
    return 1 if S % M == 0 and np.array_equal(table, pattern) else 2


def _members(src: torch.Tensor) -> torch.Tensor:
    """``(G, M)``: the positions of each group's members (group order: by smallest member)."""
    heads = (_within(src) == 0).nonzero().squeeze(1)  # member 0 of each group
    return src[:, heads].t()


if _numba is not None:
    # One sweep over time per sequence, one kernel per structure so each inner loop is
    # branch-free: diagonal and per-channel blocks index rows of columns directly and vectorize
    # over channels (2 x 2 blocks unrolled); the general kind gathers through src. ``contract``
    # lets LLVM fuse multiply-adds (one rounding instead of two). Serial on purpose: a solver
    # calls these on cache-sized chunks between torch kernels, and numba's OpenMP pool (a second
    # OpenMP runtime beside torch's) costs milliseconds per call when both spin on few cores.
    # Forward: v = A_t v + b_t (- base_t), then out[t] = v, or base_t + scale * v with a base.
    _njit = _numba.njit(cache=True, fastmath={"contract"})

    @_njit
    def _fwd_diag(out, A, b, base, has_base, state, scale):  # pragma: no cover - compiled
        steps, batch, _, size = A.shape
        for i in range(batch):
            d = state[i].copy()  # (S,) v_{t-1}
            for t in range(steps):
                a, bt, ot = A[t, i, 0], b[t, i], out[t, i]
                if has_base:
                    ht = base[t, i]
                    for s in range(size):
                        v = a[s] * d[s] + (bt[s] - ht[s])
                        d[s] = v
                        ot[s] = ht[s] + scale * v
                else:
                    for s in range(size):
                        v = a[s] * d[s] + bt[s]
                        d[s] = v
                        ot[s] = v
            state[i, :] = d

    @_njit
    def _fwd_pair(out, A, b, base, has_base, state, scale):  # pragma: no cover - compiled
        steps, batch, _, size = A.shape
        n = size // 2
        for i in range(batch):
            d = state[i].copy()
            for t in range(steps):
                a0, a1, bt, ot, ht = A[t, i, 0], A[t, i, 1], b[t, i], out[t, i], base[t, i]
                for c in range(n):
                    x0, x1 = d[c], d[n + c]
                    r0, r1 = bt[c], bt[n + c]
                    if has_base:
                        r0, r1 = r0 - ht[c], r1 - ht[n + c]
                    v0 = r0 + a0[c] * x0 + a1[c] * x1
                    v1 = r1 + a0[n + c] * x0 + a1[n + c] * x1
                    d[c], d[n + c] = v0, v1
                    if has_base:
                        ot[c], ot[n + c] = ht[c] + scale * v0, ht[n + c] + scale * v1
                    else:
                        ot[c], ot[n + c] = v0, v1
            state[i, :] = d

    @_njit
    def _fwd_gather(out, A, b, base, has_base, src, state, scale):  # pragma: no cover
        steps, batch, m, size = A.shape
        for i in range(batch):
            d = state[i].copy()
            new = np.empty_like(d)
            for t in range(steps):
                At, bt, ot, ht = A[t, i], b[t, i], out[t, i], base[t, i]
                for s in range(size):
                    acc = bt[s] - ht[s] if has_base else bt[s]
                    for k in range(m):
                        acc += At[k, s] * d[src[k, s]]
                    new[s] = acc
                for s in range(size):
                    d[s] = new[s]
                    ot[s] = ht[s] + scale * new[s] if has_base else new[s]
            state[i, :] = d

    # Adjoint, backwards: lam = g_t + q; out[t] = lam; q = A_t^T lam.
    @_njit
    def _adj_diag(out, A, g, t0, carry):  # pragma: no cover - compiled
        steps, batch, _, size = A.shape
        for i in range(batch):
            q = carry[i].copy()  # (S,) A_{t+1}^T lambda_{t+1}
            for t in range(steps - 1, -1, -1):
                a, gt, ot = A[t, i, 0], g[i, t0 + t], out[i, t0 + t]
                for s in range(size):
                    v = gt[s] + q[s]
                    ot[s] = v
                    q[s] = a[s] * v
            carry[i, :] = q

    @_njit
    def _adj_pair(out, A, g, t0, carry):  # pragma: no cover - compiled
        steps, batch, _, size = A.shape
        n = size // 2
        for i in range(batch):
            q = carry[i].copy()
            for t in range(steps - 1, -1, -1):
                a0, a1, gt, ot = A[t, i, 0], A[t, i, 1], g[i, t0 + t], out[i, t0 + t]
                for c in range(n):  # q[k n + c] = sum_r A[k, r n + c] lam[r n + c]
                    l0, l1 = gt[c] + q[c], gt[n + c] + q[n + c]
                    ot[c], ot[n + c] = l0, l1
                    q[c] = a0[c] * l0 + a0[n + c] * l1
                    q[n + c] = a1[c] * l0 + a1[n + c] * l1
            carry[i, :] = q

    @_njit
    def _adj_gather(out, A, g, t0, src, within, carry):  # pragma: no cover - compiled
        steps, batch, m, size = A.shape
        for i in range(batch):
            q = carry[i].copy()
            lam = np.empty_like(q)
            for t in range(steps - 1, -1, -1):
                At, gt, ot = A[t, i], g[i, t0 + t], out[i, t0 + t]
                for s in range(size):
                    lam[s] = gt[s] + q[s]
                    ot[s] = lam[s]
                for s in range(size):
                    acc = 0.0
                    w = within[s]
                    for r in range(m):
                        p = src[r, s]
                        acc += At[w, p] * lam[p]
                    q[s] = acc
            carry[i, :] = q


def _numba_columns_ok(*tensors) -> bool:
    return (USE_NUMBA and _numba is not None and all(t.device.type == "cpu" for t in tensors)
            and tensors[0].dtype in (torch.float32, torch.float64)
            and all(t.dtype == tensors[0].dtype for t in tensors)
            and all(t.is_contiguous() for t in tensors))


def _shapes_error(name, want, tensors):
    got = ", ".join(str(tuple(t.shape)) for t in tensors)
    return ValueError(f"{name}: expected {want}; got {got}")


@torch.no_grad()
def column_scan_(out: torch.Tensor, A: torch.Tensor, b: torch.Tensor, src: torch.Tensor,
                 state: torch.Tensor, base: Optional[torch.Tensor] = None,
                 scale: float = 1.0) -> None:
    """In place, for t in order: ``v_t = A_t v_{t-1} + b_t`` from ``v_{-1} = state``, and
    ``out[t] = v_t``; ``state`` ends as the last v, so consecutive chunks of time chain.

    With ``base`` the scan solves for an update around it: ``v_t = A_t v_{t-1} + b_t -
    base_t`` and ``out[t] = base_t + scale * v_t`` (the Newton step: b = f(h_{t-1}), base = h,
    v = delta; out may be base itself). Time-major: A ``(T, B, M, S)`` columns, b, base and out
    ``(T, B, S)``, src ``(M, S)`` long, state ``(B, S)``, one dtype; out and state are written
    in place (a contiguous slab of a larger buffer is fine)."""
    T, B, M, S = A.shape if A.dim() == 4 else (-1,) * 4
    if (A.dim() != 4 or b.shape != (T, B, S) or out.shape != (T, B, S)
            or (base is not None and base.shape != (T, B, S))
            or src.shape != (M, S) or state.shape != (B, S)):
        raise _shapes_error("column_scan_", "A (T, B, M, S), b, base and out (T, B, S), "
                            "src (M, S), state (B, S)", (A, b, out, src, state))
    if T == 0:
        return
    has_base, base_ = base is not None, b if base is None else base
    if _numba_columns_ok(out, A, b, base_, state):
        kind = _kind(src)
        arrays = (out.numpy(), A.numpy(), b.numpy(), base_.numpy(), has_base)
        if kind == 0:
            _fwd_diag(*arrays, state.numpy(), float(scale))
        elif kind == 1 and M == 2:
            _fwd_pair(*arrays, state.numpy(), float(scale))
        else:
            _fwd_gather(*arrays, src.to(torch.int64).numpy(), state.numpy(), float(scale))
        return
    v = _torch_columns(A, b if base is None else b - base, src, state)  # (T, B, S)
    state.copy_(v[-1])
    if base is None:
        out.copy_(v)
    else:
        torch.add(base, v, alpha=scale, out=out)


def _torch_columns(A, b, src, h0):
    """The torch path: ``linear_scan`` for M = 1, else ``matrix_scan`` on gathered blocks."""
    if A.shape[2] == 1:
        h = linear_scan(A[:, :, 0].transpose(0, 1), b.transpose(0, 1), initial_state=h0)[0]
        return h.transpose(0, 1)  # (B, T, S) -> (T, B, S)
    mem = _members(src)  # (G, M)
    blocks = A[:, :, :, mem].permute(1, 0, 3, 4, 2)  # (T, B, M_c, G, M_r) -> (B, T, G, M_r, M_c)
    h = matrix_scan(blocks, b[:, :, mem].transpose(0, 1), initial_state=h0[:, mem])[0]
    out = torch.empty_like(b)
    out[:, :, mem] = h.transpose(0, 1)  # (B, T, G, M) -> (T, B, G, M) scattered to (T, B, S)
    return out


@torch.no_grad()
def column_adjoint_scan_(out: torch.Tensor, A: torch.Tensor, g: torch.Tensor,
                         src: torch.Tensor, carry: torch.Tensor, t0: int = 0) -> None:
    """In place, backwards over the steps ``t0 .. t0+C-1`` that A covers: ``out[:, t] =
    lambda_t = g[:, t] + q`` then ``q = A_t^T lambda_t``, from ``q = carry`` (what the steps
    after them send back; zeros at the end of a sequence); ``carry`` ends as ``A_{t0}^T
    lambda_{t0}``. Over a whole sequence that is ``lambda_t = g_t + A_{t+1}^T lambda_{t+1}``,
    the adjoint of ``column_scan_``, with no flipped copies. A ``(C, B, M, S)`` time-major;
    g and out ``(B, T, S)`` batch-major (a gradient as it arrives); carry ``(B, S)``."""
    C, B, M, S = A.shape if A.dim() == 4 else (-1,) * 4
    if (A.dim() != 4 or g.dim() != 3 or g.shape[0] != B or g.shape[2] != S
            or out.shape != g.shape or src.shape != (M, S) or carry.shape != (B, S)
            or not 0 <= t0 <= g.shape[1] - C):
        raise _shapes_error("column_adjoint_scan_", f"A (C, B, M, S), g and out (B, T, S) with "
                            f"t0 + C <= T (t0={t0}), src (M, S), carry (B, S)",
                            (A, g, out, src, carry))
    if C == 0:
        return
    if _numba_columns_ok(out, A, g, carry):
        kind, arrays = _kind(src), (out.numpy(), A.numpy(), g.numpy(), t0)
        if kind == 0:
            _adj_diag(*arrays, carry.numpy())
        elif kind == 1 and M == 2:
            _adj_pair(*arrays, carry.numpy())
        else:
            _adj_gather(*arrays, src.to(torch.int64).numpy(), _within(src).numpy(),
                        carry.numpy())
        return
    lam, q = _torch_adjoint(A, g[:, t0:t0 + C].transpose(0, 1), src, carry)
    out[:, t0:t0 + C] = lam.transpose(0, 1)
    carry.copy_(q)


def _torch_adjoint(A, g, src, carry):
    """The torch path, time-major g ``(C, B, S)``: the forward scan on flipped time with
    transposed, shifted columns."""
    within = _within(src)
    At = A[:, :, within[None, :], src]  # (C, B, M, S): A_t^T, At[r, s] = A[within_s, src[r, s]]
    eye = within[None, :] == torch.arange(src.shape[0], device=src.device)[:, None]
    shifted = torch.cat([At[1:], eye.to(At.dtype).expand_as(At[:1])], 0)  # A_{t+1}^T; I last
    lam = _torch_columns(shifted.flip(0), g.flip(0), src, carry).flip(0)  # (C, B, S)
    return lam, (At[0] * lam[0][:, src]).sum(1)  # A_{t0}^T lambda_{t0}
