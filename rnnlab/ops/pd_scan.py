"""Affine scan with permutation-diagonal (PD) transitions, O(N) per combine (PD-SSM).

    h_t = A_t h_{t-1} + b_t,   A_t one nonzero per row:  (A_t h)[i] = value_t[i] * h[index_t[i]]

**Representation: row-one-hot ("gather form").** A_t is stored as ``index (..., N)`` (long, the
source column of each row) and ``value (..., N)`` (real or complex, that row's entry), so
``A = diag(value) P`` with ``P[i, index[i]] = 1``. Everything the scan does is then a gather:

- apply: ``(A h)[i] = value[i] * h[index[i]]``;
- compose (a earlier, b later): ``(A_b A_a)[i] = value_b[i] * value_a[index_b[i]]`` at column
  ``index_a[index_b[i]]``: new index ``index_a[index_b]``, new value ``value_b * value_a[index_b]``.

Why rows, not PD-SSM's columns (each column one nonzero, applied by a scatter-add): a gather
writes every output once, so forward has no atomics (deterministic on GPU) and no zero-filled
buffer, and its backward is autograd's one scatter-add. The two forms are transposes of each
other; both are closed under products and both contain every signed/complex-scaled permutation,
so they track the same groups (S5, A5). A column-one-hot matrix (idx, val) with a bijective idx
is the row-one-hot matrix (idx^-1, val[idx^-1]).

``pd_scan`` runs the work-efficient odd/even prefix scan (``associative.py``: ~2T combines in
2 log2 T levels) on the elements ``(index, value, b)`` with ``pd_combine``; gradients by autograd
through the gathers. ``pd_scan_reference`` is the plain loop over time.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .associative import associative_scan

Elems = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[..., index[..., i]]`` with the leading dims of x and index broadcast: ``(..., N)``."""
    lead = torch.broadcast_shapes(x.shape[:-1], index.shape[:-1])
    return x.expand(*lead, x.shape[-1]).gather(-1, index.expand(*lead, index.shape[-1]))


def pd_combine(a: Elems, b: Elems) -> Elems:
    """The map ``h -> A_b (A_a h + b_a) + b_b`` as one element; a is the earlier. Each of index,
    value, b ``(..., N)``; leading dims broadcast (time included)."""
    (i_a, v_a, b_a), (i_b, v_b, b_b) = a, b
    return gather_rows(i_a, i_b), v_b * gather_rows(v_a, i_b), v_b * gather_rows(b_a, i_b) + b_b


def pd_identity(elems: Elems) -> Elems:
    """Identity elements shaped like ``elems``: index ``arange(N)``, value 1, b 0."""
    index, value, b = elems
    eye = torch.arange(index.shape[-1], device=index.device).expand_as(index)
    return eye, torch.ones_like(value), torch.zeros_like(b)


def pd_constant(h: torch.Tensor) -> Elems:
    """The constant map to ``h (..., N)`` (A = 0, b = h): composed before a prefix, it applies
    that prefix to the initial state h."""
    eye = torch.arange(h.shape[-1], device=h.device).expand(h.shape)
    return eye, torch.zeros_like(h), h


def _check(index, value, b, initial_state, cu_seqlens) -> None:
    """TypeError/ValueError naming the argument, the expected shape or range and the value."""
    for name, x in (("index", index), ("value", value), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor (B, T, ..., N), got "
                            f"{type(x).__name__}")
    if index.dtype != torch.long:
        raise TypeError(f"index: expected dtype torch.int64 (source column per row), got "
                        f"{index.dtype}")
    if index.dim() < 3:
        raise ValueError(f"index: expected shape (B, T, ..., N), got {tuple(index.shape)}")
    for name, x in (("value", value), ("b", b)):
        if tuple(x.shape) != tuple(index.shape):
            raise ValueError(f"{name}: expected the shape of index (B, T, ..., N) = "
                             f"{tuple(index.shape)}, got {tuple(x.shape)}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{name}: expected a floating or complex dtype, got {x.dtype}")
    if value.dtype != b.dtype:
        raise TypeError(f"value, b: expected one dtype, got value {value.dtype}, b {b.dtype}")
    N = index.shape[-1]
    if index.numel() and not (0 <= int(index.min()) and int(index.max()) < N):
        raise ValueError(f"index: expected entries in [0, N-1] = [0, {N - 1}], got "
                         f"[{int(index.min())}, {int(index.max())}]")
    if cu_seqlens is not None:
        _check_cu(cu_seqlens, index)
    rows = index.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    want = (rows, *index.shape[2:])
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or tuple(initial_state.shape) != want):
        got = tuple(initial_state.shape) if isinstance(initial_state, torch.Tensor) \
            else type(initial_state).__name__
        raise ValueError(f"initial_state: expected shape (B, ..., N) = {want}, got {got}")
    if initial_state is not None and not (initial_state.is_floating_point()
                                          or initial_state.is_complex()):
        raise TypeError(f"initial_state: expected a floating or complex dtype, got "
                        f"{initial_state.dtype}")


def _check_cu(cu_seqlens, index) -> None:
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32,
                                                                            torch.int64):
        raise TypeError(f"cu_seqlens: expected an int tensor (N + 1,), got {cu_seqlens!r}")
    T = index.shape[1]
    if index.shape[0] != 1 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or \
            int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != T or \
            bool((cu_seqlens[1:] < cu_seqlens[:-1]).any()):
        raise ValueError(f"cu_seqlens: expected increasing offsets from 0 to T = {T} with B = 1, "
                         f"got {cu_seqlens.tolist()} for B = {index.shape[0]}")


def _state_dtype(value: torch.Tensor, initial_state: Optional[torch.Tensor]) -> torch.dtype:
    """The state's dtype: value's (= b's) promoted with the initial state's (a complex or fp64
    start is kept, as ``linear_scan`` keeps it), and never narrower than fp32 (complex64)."""
    dtype = value.dtype if initial_state is None else \
        torch.promote_types(value.dtype, initial_state.dtype)
    floor = torch.complex64 if dtype.is_complex else torch.float32
    return torch.promote_types(dtype, floor)


def _packed_starts(elems: Elems, h0: torch.Tensor, cu: torch.Tensor) -> Elems:
    """Packed sequences (B = 1): each sequence's first element becomes the constant map to its
    own start state (h0 applied), so no prefix carries across a boundary."""
    index, value, b = elems
    lengths = cu[1:] - cu[:-1]
    starts = cu[:-1][lengths > 0].long()
    first = pd_combine(pd_constant(h0[lengths > 0]), tuple(e[0, starts] for e in elems))
    out = []
    for e, f in zip(elems, first):
        e = e.clone()
        e[0, starts] = f  # (N_nonempty, ..., N) at the start steps
        out.append(e)
    return tuple(out)


def pd_scan(index: torch.Tensor, value: torch.Tensor, b: torch.Tensor,
            initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
            cu_seqlens: Optional[torch.Tensor] = None):
    """All states of ``h_t = diag(value_t) P_t h_{t-1} + b_t`` by a parallel prefix scan.

    Args:
        index: ``(B, T, ..., N)`` long, the source column of each row of A_t (in [0, N-1]).
        value: ``(B, T, ..., N)`` real or complex, each row's entry.
        b: ``(B, T, ..., N)``, same dtype as value.
        initial_state: ``(B, ..., N)`` (``(S, ..., N)`` for S packed sequences), zeros if None.
        output_final_state: also return the last state ``(B, ..., N)``.
        cu_seqlens: ``(S + 1,)`` offsets of S sequences packed along T (then B = 1).

    Returns:
        ``(h, final_state)``: h ``(B, T, ..., N)`` in value's dtype promoted with
        initial_state's and widened to >= fp32, and the final state or None.
    """
    _check(index, value, b, initial_state, cu_seqlens)
    dtype = _state_dtype(value, initial_state)
    elems = (index, value.to(dtype), b.to(dtype))
    lead = (index.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1, *index.shape[2:])
    h0 = torch.zeros(lead, dtype=dtype, device=b.device) if initial_state is None \
        else initial_state.to(dtype)
    if index.shape[1] == 0:  # no step: the states are empty and each final state is its start
        return elems[2].clone(), (h0 if output_final_state else None)
    if cu_seqlens is not None:
        elems = _packed_starts(elems, h0, cu_seqlens)
    prefix = associative_scan(pd_combine, elems, dim=1)  # prefix maps: (B, T, ..., N) each
    if cu_seqlens is not None:  # the start states are already inside the prefixes
        h = prefix[2]
        ends = cu_seqlens[1:].long() - 1  # (S,) the last step of each sequence
        empty = (cu_seqlens[1:] == cu_seqlens[:-1]).view(-1, *[1] * (h0.dim() - 1))
        final = torch.where(empty, h0, h[0, ends.clamp_min(0)]) if output_final_state else None
        return h, final
    h = pd_combine(pd_constant(h0.unsqueeze(1)), prefix)[2]  # h0 (B, 1, ..., N) applied
    return h, (h[:, -1] if output_final_state else None)


def pd_scan_reference(index: torch.Tensor, value: torch.Tensor, b: torch.Tensor,
                      initial_state: Optional[torch.Tensor] = None,
                      output_final_state: bool = False,
                      cu_seqlens: Optional[torch.Tensor] = None):
    """The loop over time with ``pd_scan``'s contract (the reference; state >= fp32)."""
    _check(index, value, b, initial_state, cu_seqlens)
    dtype = _state_dtype(value, initial_state)
    value, b = value.to(dtype), b.to(dtype)
    if cu_seqlens is not None:
        runs = [pd_scan_reference(index[:, s:e], value[:, s:e], b[:, s:e],
                                  None if initial_state is None else initial_state[k:k + 1], True)
                for k, (s, e) in enumerate(zip(cu_seqlens[:-1].tolist(),
                                               cu_seqlens[1:].tolist()))]
        final = torch.cat([f for _, f in runs]) if output_final_state else None
        return torch.cat([h for h, _ in runs], dim=1), final
    h = torch.zeros(b.shape[0], *b.shape[2:], dtype=b.dtype, device=b.device) \
        if initial_state is None else initial_state.to(dtype)
    states = []
    for t in range(index.shape[1]):
        h = value[:, t] * h.gather(-1, index[:, t]) + b[:, t]  # (B, ..., N)
        states.append(h)
    out = torch.stack(states, dim=1) if states else b.clone()  # T x (B, ..., N) -> (B, T, ..., N)
    return out, (h if output_final_state else None)
