"""The inputs of ``linear_scan`` and its reference: the checks every path shares, and the
dtypes (that of h, and the >= fp32 one the recurrence runs in)."""
from __future__ import annotations

import torch

from ..varlen import check_cu_seqlens


def check_inputs(a, b, initial_state, cu_seqlens) -> torch.Tensor | None:
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


def dtypes(a, b, initial_state) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of h, compute dtype): h follows a and b (complex if the state is complex); the
    state and the arithmetic are at least fp32 (bf16/fp16 compute in fp32)."""
    io = torch.promote_types(a.dtype, b.dtype)
    compute = io if initial_state is None else torch.promote_types(io, initial_state.dtype)
    if compute.is_complex and not io.is_complex:
        io = compute
    return io, torch.promote_types(compute, torch.float32)
