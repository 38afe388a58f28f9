"""The carry exchange of a linear recurrence ``h_t = A_t h_{t-1} + b_t`` split over time across
the R ranks of a process group: the one communication step of sequence parallelism.

Each rank holds a chunk of T_r steps. It scans its chunk from a zero state (``h^0``, end state
``e``) and composes its transitions (``P = A_T ... A_1``): the chunk is the affine map
``c -> P c + e``. ``all_gather`` gives every rank every chunk's ``(P, e)``; each rank composes
them from the initial state (R small steps, the same on every rank) to its carry-in ``c_r``
and the final state, then finishes its chunk, ``h_t = h^0_t + (A_t ... A_1) c_r``, by scanning
it again from ``c_r`` (two scans per chunk: the price of splitting).

Backward (``_Carries``): every rank all-gathers the gradient of its carry-in and all-reduces
that of the final state (state-sized adjoint summaries), then differentiates the same
composition on every rank; the gradient of the composition to the chunk's own ``(P, e)`` flows
back into its local scans. ``reverse=True`` runs the chunks in the opposite rank order (the
last rank's chunk first): Newton's adjoint solve.

Two kinds of transition: ``"diagonal"`` (elementwise ``A (B, T, ...)``, real or complex, size-1
dims broadcasting against ``b``) through ``ops.linear_scan``, and ``"matrix"`` (``A (B, T, ...,
N, N)``) through ``ops.matrix_scan``.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.distributed as dist

from ..ops import linear_scan, matrix_scan


def place(group) -> Tuple[int, int]:
    """``(rank, world size)`` of this process in ``group`` (None: the default group)."""
    return dist.get_rank(group), dist.get_world_size(group)


def gather(t: torch.Tensor, group) -> List[torch.Tensor]:
    """``all_gather`` of a same-shaped tensor from every rank (complex sent as real pairs)."""
    wire = torch.view_as_real(t) if t.is_complex() else t
    wire = wire.contiguous()
    parts = [torch.empty_like(wire) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, wire, group=group)
    return [torch.view_as_complex(p) if t.is_complex() else p for p in parts]


def summed(t: torch.Tensor, group) -> torch.Tensor:
    """The sum over ranks of ``t`` (a new tensor)."""
    wire = (torch.view_as_real(t) if t.is_complex() else t).clone()
    dist.all_reduce(wire, group=group)
    return torch.view_as_complex(wire) if t.is_complex() else wire


def apply(kind: str, P: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``P c``: P ``(B, ...)`` / ``(B, ..., N, N)``, c ``(B, ...)`` -> ``(B, ...)``."""
    if kind == "matrix":
        return (P @ c.unsqueeze(-1)).squeeze(-1)  # (B, ..., N, N) @ (B, ..., N, 1)
    return P * c


def matrix_product(A: torch.Tensor) -> torch.Tensor:
    """``A_T ... A_1`` of ``A (B, T, ..., N, N)`` -> ``(B, ..., N, N)``, by a tree of batched
    matmuls (log2 T rounds; later steps multiply from the left)."""
    while A.shape[1] > 1:
        odd = A[:, -1:] if A.shape[1] % 2 else A[:, :0]  # the latest step waits a round
        pairs = A[:, 1:A.shape[1] - A.shape[1] % 2:2] @ A[:, 0:A.shape[1] - 1:2]
        A = torch.cat((pairs, odd), 1)  # (B, ceil(T/2), ..., N, N)
    return A[:, 0]


def compose(kind: str, Ps, es, h0: torch.Tensor, order) -> List[torch.Tensor]:
    """The states between chunks: ``[h0, after order[0], after order[1], ...]`` (R + 1)."""
    states = [h0]
    for r in order:
        states.append(apply(kind, Ps[r], states[-1]) + es[r])
    return states


class _Carries(torch.autograd.Function):
    """``(P, e)`` of this rank's chunk and the initial state -> ``(carry-in, final state)``.
    Collective in forward and backward: every rank calls both."""

    @staticmethod
    def forward(ctx, P, e, h0, kind, group, reverse):
        rank, world = place(group)
        order = list(range(world))[::-1] if reverse else list(range(world))
        Ps, es = gather(P, group), gather(e, group)
        states = compose(kind, Ps, es, h0, order)
        ctx.save_for_backward(*Ps, *es, h0)
        ctx.setup = kind, group, order, rank
        return states[order.index(rank)].clone(), states[-1].clone()

    @staticmethod
    def backward(ctx, g_in, g_T):
        kind, group, order, rank = ctx.setup
        saved = ctx.saved_tensors
        world = len(order)
        Ps, es, h0 = saved[:world], saved[world:2 * world], saved[-1]
        g_in = torch.zeros_like(h0) if g_in is None else g_in
        g_T = torch.zeros_like(h0) if g_T is None else g_T
        g_ins, g_T = gather(g_in, group), summed(g_T, group)  # the adjoints of every rank
        with torch.enable_grad():
            mine = (Ps[rank].detach().requires_grad_(), es[rank].detach().requires_grad_())
            start = h0.detach().requires_grad_()
            Ps = [mine[0] if r == rank else p for r, p in enumerate(Ps)]
            es = [mine[1] if r == rank else x for r, x in enumerate(es)]
            states = compose(kind, Ps, es, start, order)
            outs = [states[i] for i in range(world)] + [states[-1]]
            grads = [g_ins[r] for r in order] + [g_T]
            dP, de, dh0 = torch.autograd.grad(outs, (*mine, start), grads, allow_unused=True)
        # Replicated inputs get partial gradients that sum over ranks to the whole: the
        # initial state's gradient is the first chunk's rank's alone.
        dh0 = dh0 if order[0] == rank else torch.zeros_like(h0)
        return dP, de, dh0, None, None, None


def scan_chunk(kind: str, A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, group,
               reverse: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of ``h_t = A_t h_{t-1} + b_t`` over the whole split sequence.

    Args:
        kind: ``"diagonal"`` (A ``(B, T_r, ...)`` broadcasting against b) or ``"matrix"``
            (A ``(B, T_r, ..., N, N)``).
        A, b: this rank's chunk; b ``(B, T_r, ...)``; T_r >= 1 may differ between ranks.
        h0: ``(B, ...)``, the state before the whole sequence (the same on every rank).
        reverse: chunks run from the last rank to the first.
    Returns:
        ``(h (B, T_r, ...), h_T (B, ...))``: this chunk's states and the whole sequence's final
        state (on every rank). Differentiable in A, b and h0 (collective backward).
    """
    if kind == "matrix":
        e = matrix_scan(A, b, None, output_final_state=True)[1]
        P = matrix_product(A)
    else:
        e = linear_scan(A, b, None, output_final_state=True)[1]
        P = torch.prod(A, 1)  # (B, ...), size-1 dims kept
    carry, h_T = _Carries.apply(P, e.to(b.dtype), h0, kind, group, reverse)
    # Finish by scanning the chunk again from its carry-in: the same work as adding
    # (A_t ... A_1) c_r to the zero-state scan, without the cumulative products, whose decayed
    # tails crawl through subnormal floats on CPUs (measured 10x slower for LRU at T = 8192).
    scan = matrix_scan if kind == "matrix" else linear_scan
    return scan(A, b, carry)[0], h_T  # (B, T_r, ...)
