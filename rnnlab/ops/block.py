"""Small-block linear recurrences for solvers: ``h_t = A_t h_{t-1} + b_t`` with ``A_t`` block
diagonal, G blocks of M x M (M small: ParaLSTM's 2 x 2 (c, h) pairs, heads of a few channels).

``block_scan`` is forward-only (no autograd): the Newton engine calls it under ``no_grad`` for
its linear solves and its adjoint. On CPU with numba it is one sweep over time with the M x M
products unrolled in registers (threads over the batch); elsewhere it is ``matrix_scan``.
``block_scan_reference`` is the plain loop both are tested against.
"""
from __future__ import annotations

import torch

from .matrix import matrix_scan

try:  # optional, as in diagonal.py
    import numba as _numba
except ImportError:  # pragma: no cover - exercised where numba is not installed
    _numba = None

USE_NUMBA = _numba is not None
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
    _sweep(A.contiguous().numpy(), b.contiguous().numpy(), h0.contiguous().numpy(), out.numpy())
    return out
