"""Linear cells: ``h_t = A_t h_{t-1} + b_t``. A linear cell writes ``transition(u) -> (A, b)`` for
the whole sequence; its ``step`` is that transition applied to one step, so the sequential and scan
engines cannot drift apart.

What ``transition`` returns, by ``Linear(kind)`` (S is the state's shape without B):

- ``diagonal`` / ``complex_diagonal``: ``A, b: (B, T, *S)``, real / complex; A may have size-1
  dims that broadcast against b (a time-invariant A is an ``expand``-ed view).
- ``scalar``: ``A: (B, T, n)``, ``b: (B, T, n, ...)``: one decay per head broadcast over the rest.
- ``matrix``: ``A: (B, T, *S[:-1], N, N)``, ``b: (B, T, *S)``; ``h_t = A_t @ h_{t-1} + b_t``.
- ``householder``: a matrix state ``(heads, K, V)`` with ``A: (B, T, heads, K, K)`` acting on K;
  the cells (``delta.py``) also give the factors (q, k, v, beta, g) the delta-rule op runs on.
"""
from __future__ import annotations

import torch

from .base import Cell, Linear, State


def expand_decay(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """View a decay with fewer trailing dims than ``b`` (kind ``scalar``) as broadcastable to b."""
    return A.view(*A.shape, *([1] * (b.dim() - A.dim())))


def apply_transition(kind: str, A: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step ``A h + b`` of a ``Linear(kind)`` transition (A, b without the T dim)."""
    if kind == "matrix":
        return (A @ h.unsqueeze(-1)).squeeze(-1) + b  # (B, ..., N, N) @ (B, ..., N, 1)
    if kind == "householder":
        return A @ h + b  # (B, heads, K, K) @ (B, heads, K, V)
    return expand_decay(A, b) * h + b


class LinearCell(Cell):
    """Base of linear cells: subclasses set ``structure = Linear(kind)`` and write ``project``,
    ``transition``, ``readout`` and (for a non-default state) ``state_shapes``/``init_state``.

    ``readout(h, u_t)`` must treat the leading dim as a batch: the scan engine calls it once on all
    B*T steps."""

    structure: Linear = Linear("diagonal")

    def init_heads(self, heads: int, key_dim: int | None):
        """Split H into ``heads`` of ``value_dim`` (V) each, with key dim K (default V)."""
        if not (isinstance(heads, int) and heads >= 1) or self.hidden_size % heads:
            raise ValueError(f"{type(self).__name__}: heads must be an int >= 1 dividing "
                             f"hidden_size={self.hidden_size}, got {heads!r}")
        self.heads, self.value_dim = heads, self.hidden_size // heads
        self.key_dim = key_dim or self.value_dim

    def transition(self, u: torch.Tensor):
        raise NotImplementedError

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32, device=None) -> State:
        """Zeros; complex (complex64 for fp32, complex128 for fp64) for ``complex_diagonal``."""
        if self.structure.kind == "complex_diagonal":
            dtype = torch.promote_types(dtype, torch.complex64)
        return super().init_state(batch, dtype, device)

    def step(self, u_t: torch.Tensor, h: State) -> State:
        A, b = self.transition(u_t.unsqueeze(1))  # (B, P) -> (B, 1, P)
        return apply_transition(self.structure.kind, A[:, 0], b[:, 0], h)
