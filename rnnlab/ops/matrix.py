"""Dense linear recurrence ``h_t = A_t h_{t-1} + b_t`` with small matrices A_t (N ≤ ~64).

Fast path: a chunked scan. Time is cut into chunks of C steps (C ≈ √T). One loop over the C
positions, vectorized over all chunks, composes each chunk's affine map (P, s) — P the product of
its C matrices; the maps are carried across chunks by the same scan applied recursively to the
chunk maps; a second loop over the C positions, vectorized over chunks, reruns the recurrence
from each chunk's true initial state. That is 2·C dependent batched steps plus those of the
recursive carry over T/C chunk maps — about 150 for T = 4096 (C = 64, then 8) — instead of T.

Trade-off: composing matrices costs O(N³) per step where a sequential step costs O(N²), so the
fast path does about N times the arithmetic of the loop and wins only while per-op overhead, not
arithmetic, is the bottleneck: always on GPUs at these sizes, on CPUs only for small
(batch·N³). ``chunk_size=None`` picks by that rule; ``chunk_size=1`` forces the plain loop.

An A that is a broadcast view over some extra dims (``expand``: stride 0, as pLSTM's transition,
shared by every key and value) is not copied per position: those dims become columns of a state
matrix that one A multiplies (``_shared_dims``), and its gradient is summed over them.

Backward is analytic (a custom autograd.Function): the adjoint ``g_t = dL/dh_t + A_{t+1}ᵀ g_{t+1}``
is the same recurrence run backwards in time on transposed matrices, so it reuses the forward
path on flipped inputs; then ``dA_t = g_t h_{t-1}ᵀ``, ``db_t = g_t``, ``dh_0 = A_1ᵀ g_1``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..checks import check_int
from .varlen import check_cu_seqlens, segments

_LOOP_MAX_STEPS = 16  # at or below this many steps the plain loop is already cheapest
_CPU_WORK_MAX = 1 << 15  # batch·N³ from which CPU matmul time outweighs the loop overhead saved


def _loop(A: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Plain steps: A ``(M, T, N, N)``, b ``(M, T, N, C)``, h ``(M, N, C)`` -> states
    ``(M, T, N, C)`` (C columns share each A: dims over which A was broadcast)."""
    outs = []
    for A_t, b_t in zip(A.unbind(1), b.unbind(1)):
        h = torch.baddbmm(b_t, A_t, h)  # (M, N, C)
        outs.append(h)
    return torch.stack(outs, 1)  # T x (M, N, C) -> (M, T, N, C)


def _auto_chunk(M: int, T: int, N: int, cols: int, device: torch.device) -> int:
    # per step the chunked path composes N x N maps (N³) and runs the columns twice (2 N² cols)
    if T <= _LOOP_MAX_STEPS or (device.type == "cpu" and M * N ** 2 * (N + cols) >= _CPU_WORK_MAX):
        return 1
    return math.isqrt(T - 1) + 1  # ceil(sqrt(T))


def _scan(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
          chunk: Optional[int]) -> torch.Tensor:
    """Chunked scan: A ``(M, T, N, N)``, b ``(M, T, N, C)``, h0 ``(M, N, C)`` -> states
    ``(M, T, N, C)``."""
    M, T, N, _ = A.shape
    cols = b.shape[-1]
    C = _auto_chunk(M, T, N, cols, A.device) if chunk is None else chunk
    if C <= 1 or T <= C:
        return _loop(A, b, h0)
    n_chunks = -(-T // C)
    pad = n_chunks * C - T
    if pad:  # identity steps at the end change no earlier state
        eye = torch.eye(N, dtype=A.dtype, device=A.device)
        A = torch.cat((A, eye.expand(M, pad, N, N)), 1)  # (M, n_chunks·C, N, N)
        b = torch.cat((b, b.new_zeros(M, pad, N, cols)), 1)  # (M, n_chunks·C, N, cols)
    # Position-in-chunk first, so each loop step reads one contiguous slab of all chunks.
    A_c = A.reshape(M * n_chunks, C, N, N).transpose(0, 1).contiguous()  # (C, M·n_chunks, N, N)
    b_c = b.reshape(M * n_chunks, C, N, cols).transpose(0, 1).contiguous()  # (C, M·n_chunks, N, c)
    P, s = A_c[0], b_c[0]  # each chunk's map h -> P h + s, built up step by step
    for A_j, b_j in zip(A_c[1:], b_c[1:]):
        s = torch.baddbmm(b_j, A_j, s)
        P = torch.bmm(A_j, P)
    # The state entering chunk c >= 1 is the state after chunk c - 1: a scan over the chunk
    # maps (all but the last), by this same function on a T/C times shorter sequence.
    P = P.view(M, n_chunks, N, N)[:, :-1]  # (M, n_chunks - 1, N, N)
    s = s.view(M, n_chunks, N, cols)[:, :-1]  # (M, n_chunks - 1, N, cols)
    entering = torch.cat((h0.unsqueeze(1), _scan(P, s, h0, chunk)), 1)  # (M, n_chunks, N, cols)
    h, outs = entering.reshape(M * n_chunks, N, cols), []
    for A_j, b_j in zip(A_c, b_c):
        h = torch.baddbmm(b_j, A_j, h)  # (M·n_chunks, N, cols)
        outs.append(h)
    return torch.stack(outs, 1).view(M, n_chunks * C, N, cols)[:, :T]  # (M, T, N, cols)


def _adjoint(A: torch.Tensor, grad_h: torch.Tensor, chunk: Optional[int]) -> torch.Tensor:
    """``g_t = grad_h_t + A_{t+1}ᵀ g_{t+1}`` (g_T = grad_h_T): A ``(M, T, N, N)``, grad_h
    ``(M, T, N, C)`` -> g ``(M, T, N, C)``. Reversed in time it is a forward scan started from
    g_T."""
    g_last = grad_h[:, -1]  # (M, N, C)
    if A.shape[1] == 1:
        return grad_h
    A_rev = A[:, 1:].transpose(-1, -2).flip(1)  # A_{t+1}ᵀ for t = T-1 ... 1: (M, T-1, N, N)
    g_rev = _scan(A_rev, grad_h[:, :-1].flip(1), g_last, chunk)  # (M, T-1, N, C)
    return torch.cat((g_rev.flip(1), g_last.unsqueeze(1)), 1)  # (M, T, N, C)


class _MatrixScan(torch.autograd.Function):
    """Flat layout: A ``(M, T, N, N)``, b ``(M, T, N, C)``, h0 ``(M, N, C)`` -> h
    ``(M, T, N, C)``."""

    @staticmethod
    def forward(ctx, A, b, h0, chunk):
        h = _scan(A, b, h0, chunk)
        ctx.save_for_backward(A, h0, h)
        ctx.chunk = chunk
        return h

    @staticmethod
    def backward(ctx, grad_h):
        A, h0, h = ctx.saved_tensors
        g = _adjoint(A, grad_h, ctx.chunk)  # (M, T, N, C)
        dA = dh0 = None
        if ctx.needs_input_grad[0]:
            h_prev = torch.cat((h0.unsqueeze(1), h[:, :-1]), 1)  # (M, T, N, C)
            dA = g @ h_prev.transpose(-1, -2)  # sum over columns of g_t h_{t-1}ᵀ: (M, T, N, N)
        if ctx.needs_input_grad[2]:
            dh0 = A[:, 0].transpose(-1, -2) @ g[:, 0]  # (M, N, C)
        return dA, g, dh0, None


def _shared_dims(A: torch.Tensor) -> list:
    """The extra dims (between T and the matrix) over which A is a broadcast view (stride 0,
    size > 1), e.g. pLSTM's key and value dims: they become columns that share one A instead
    of being copied, one matrix per column, by a reshape."""
    return [d for d in range(2, A.dim() - 2) if A.stride(d) == 0 and A.shape[d] > 1]


def _run(A, b, h0, chunk) -> torch.Tensor:
    """A ``(B, T, ..., N, N)``, b ``(B, T, ..., N)``, h0 ``(B, ..., N)`` or None -> h like b."""
    T, N = b.shape[1], b.shape[-1]
    if T == 0:
        return b.new_zeros(b.shape)
    shared = _shared_dims(A)
    own = [d for d in range(2, b.dim() - 1) if d not in shared]
    for d in shared:
        A = A.narrow(d, 0, 1)  # one copy of the broadcast matrix
    A_f = A.permute(0, *own, 1, *shared, A.dim() - 2, A.dim() - 1)  # shared dims have size 1
    A_f = A_f.reshape(-1, T, N, N)  # (B, T, ..., N, N) -> (M, T, N, N)
    order = [0, *own, 1, b.dim() - 1, *shared]
    b_f = b.permute(order)  # (B, own..., T, N, shared...)
    lead = b_f.shape
    b_f = b_f.reshape(A_f.shape[0], T, N, -1)  # (M, T, N, C)
    h0_f = b_f.new_zeros(b_f.shape[0], N, b_f.shape[-1]) if h0 is None else \
        h0.permute([o if o < 1 else o - 1 for o in order if o != 1]).reshape(
            A_f.shape[0], N, -1)  # (B, ..., N) -> (M, N, C)
    h = _MatrixScan.apply(A_f, b_f, h0_f, chunk)  # (M, T, N, C)
    back = [order.index(d) for d in range(b.dim())]
    return h.reshape(lead).permute(back)  # (B, T, ..., N)


def _packed(A, b, h0, cu):
    """Packed sequences as one: each sequence's first step forgets what came before (A = 0) and
    reads the sequence's own initial state through b (b + A h0). Shapes as in matrix_scan."""
    live = [(i, start) for i, (start, end) in enumerate(segments(cu)) if end > start]
    rows = torch.tensor([i for i, _ in live], dtype=torch.long, device=b.device)
    starts = torch.tensor([start for _, start in live], dtype=torch.long, device=b.device)
    first = torch.zeros(b.shape[1], dtype=torch.bool, device=b.device)
    first[starts] = True
    small = A
    for d in _shared_dims(A):  # keep a broadcast A broadcast (masked_fill would copy it)
        small = small.narrow(d, 0, 1)
    A_new = small.masked_fill(first.view(1, -1, *[1] * (A.dim() - 2)), 0.0).expand(A.shape)
    if h0 is None:
        return A_new, b
    carried = (A[:, starts] @ h0[rows].unsqueeze(0).unsqueeze(-1)).squeeze(-1)  # (1, S, ..., N)
    return A_new, b.index_add(1, starts, carried)


def _final(h, h0, cu) -> torch.Tensor:
    """Final states: ``(B, ..., N)``, or ``(num_seqs, ..., N)`` with cu_seqlens (an empty
    sequence keeps its initial state)."""
    if cu is None:
        if h.shape[1] == 0:
            return h.new_zeros(h.shape[:1] + h.shape[2:]) if h0 is None else h0  # (B, ..., N)
        return h[:, -1]
    segs = segments(cu)
    out = h.new_zeros(len(segs), *h.shape[2:]) if h0 is None else h0
    live = [(i, end - 1) for i, (start, end) in enumerate(segs) if end > start]
    if live:
        rows = torch.tensor([i for i, _ in live], dtype=torch.long, device=h.device)
        last = torch.tensor([t for _, t in live], dtype=torch.long, device=h.device)
        out = out.index_copy(0, rows, h[0, last])
    return out


_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(A, b, initial_state, cu_seqlens, chunk_size):
    """Validate the inputs of matrix_scan; returns cu_seqlens as a CPU long tensor or None."""
    for name, x in (("A", A), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _REAL:
            raise TypeError(f"{name}: expected a real floating dtype (float16, bfloat16, float32, "
                            f"float64), got {x.dtype}")
    if A.dim() < 4 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A: expected shape (B, T, ..., N, N) with square N x N matrices, got "
                         f"{tuple(A.shape)}")
    if b.shape != A.shape[:-1]:
        raise ValueError(f"b: expected shape (B, T, ..., N) = {tuple(A.shape[:-1])} to match A "
                         f"{tuple(A.shape)}, got {tuple(b.shape)}")
    if b.dtype != A.dtype:
        raise TypeError(f"b: expected dtype {A.dtype} (that of A), got {b.dtype}")
    cu = check_cu_seqlens(cu_seqlens, b.shape[0], b.shape[1])
    if initial_state is not None:
        rows, what = (b.shape[0], "B") if cu is None else (len(cu) - 1, "num_seqs")
        expected = (rows, *b.shape[2:])
        if not isinstance(initial_state, torch.Tensor):
            raise TypeError(f"initial_state: expected a tensor ({what}, ..., N) = {expected}, "
                            f"got {type(initial_state).__name__}")
        if tuple(initial_state.shape) != expected:
            raise ValueError(f"initial_state: expected shape ({what}, ..., N) = {expected}, got "
                             f"{tuple(initial_state.shape)}")
        if initial_state.dtype != A.dtype:
            raise TypeError(f"initial_state: expected dtype {A.dtype} (that of A), got "
                            f"{initial_state.dtype}")
    check_int(None, "chunk_size", chunk_size, 1, optional=True)
    return cu


def matrix_scan(A: torch.Tensor, b: torch.Tensor, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, *,
                chunk_size: Optional[int] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``h_t = A_t h_{t-1} + b_t`` for t = 1..T, with ``h_0 = initial_state`` (zeros if None).

    Args:
        A: transitions ``(B, T, ..., N, N)``; any extra dims (e.g. heads) are batch dims.
        b: inputs ``(B, T, ..., N)``, same dtype as A.
        initial_state: ``(B, ..., N)``, or ``(num_seqs, ..., N)`` with cu_seqlens.
        output_final_state: also return the last state.
        cu_seqlens: ``(num_seqs + 1,)`` cumulative lengths of sequences packed along T (B == 1);
            each runs from its own initial state, as if run alone.
        chunk_size: steps per chunk of the fast path (see the module docstring); None picks one,
            1 runs the plain loop. Results agree up to rounding either way.

    Returns:
        ``(h, h_T)``: states ``(B, T, ..., N)`` in the dtype of A, and the final state
        ``(B, ..., N)`` (``(num_seqs, ..., N)`` with cu_seqlens) or None. float16 and bfloat16
        are computed in float32. Gradients reach A, b and initial_state through h and h_T.
    """
    cu = _check(A, b, initial_state, cu_seqlens, chunk_size)
    dtype = A.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    A, b = A.to(work), b.to(work)
    h0 = None if initial_state is None else initial_state.to(work)
    if cu is None:
        h = _run(A, b, h0, chunk_size)
    else:
        h = _run(*_packed(A, b, h0, cu), None, chunk_size)
    final = _final(h, h0, cu).to(dtype) if output_final_state else None
    return h.to(dtype), final


def matrix_scan_reference(A: torch.Tensor, b: torch.Tensor,
                          initial_state: Optional[torch.Tensor] = None,
                          output_final_state: bool = False,
                          cu_seqlens: Optional[torch.Tensor] = None):
    """Plain loop over time, same contract as :func:`matrix_scan`; gradients by autograd.
    Computes in float32 or wider, one sequence at a time under cu_seqlens."""
    cu = _check(A, b, initial_state, cu_seqlens, None)
    if cu is not None:
        outs, finals = [], []
        for i, (start, end) in enumerate(segments(cu)):
            h0 = None if initial_state is None else initial_state[i:i + 1]  # (1, ..., N)
            h, h_T = matrix_scan_reference(A[:, start:end], b[:, start:end], h0, True)
            outs.append(h)
            finals.append(h_T)
        return torch.cat(outs, 1), (torch.cat(finals, 0) if output_final_state else None)
    dtype = A.dtype
    work = torch.promote_types(dtype, torch.float32)
    h = b.new_zeros(b.shape[:1] + b.shape[2:], dtype=work) if initial_state is None \
        else initial_state.to(work)  # (B, ..., N)
    outs = []
    # unbind, not A[:, t]: the backward of T slices would each scatter into a zero tensor the
    # size of A (O(T²) memory traffic); unbind's backward is one stack.
    for A_t, b_t in zip(A.to(work).unbind(1), b.to(work).unbind(1)):
        h = (A_t @ h.unsqueeze(-1)).squeeze(-1) + b_t  # (B, ..., N)
        outs.append(h)
    states = torch.stack(outs, 1) if outs else b.new_zeros(b.shape, dtype=work)  # (B, T, ..., N)
    return states.to(dtype), (h.to(dtype) if output_final_state else None)
