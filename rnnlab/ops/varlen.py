"""Variable-length batches in the FlashAttention/fla convention: ``cu_seqlens`` is an integer
``(N + 1,)`` tensor of cumulative lengths ``[0, l_1, l_1 + l_2, ..., T]`` over sequences packed
along time in a batch of one (``B == 1``); initial and final states then have N rows."""
from __future__ import annotations

from typing import List, Optional

import torch


def check_cu_seqlens(cu_seqlens, batch: int, steps: int) -> Optional[torch.Tensor]:
    """Validate ``cu_seqlens`` against inputs ``(B, T, ...)``; returns a CPU long tensor or None."""
    if cu_seqlens is None:
        return None
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens: expected an integer tensor (N + 1,), got "
                        f"{type(cu_seqlens).__name__}")
    if cu_seqlens.is_floating_point() or cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"cu_seqlens: expected an integer dtype, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected shape (N + 1,) with N >= 1, got "
                         f"{tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"cu_seqlens: sequences are packed along time, so the batch size must "
                         f"be 1, got B={batch}")
    cu = cu_seqlens.detach().to("cpu", torch.long)
    if int(cu[0]) != 0 or int(cu[-1]) != steps or bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens: expected non-decreasing values from 0 to T={steps}, got "
                         f"{cu.tolist()}")
    return cu


def segments(cu: torch.Tensor) -> List[tuple]:
    """``[(start, end), ...]`` of each packed sequence."""
    bounds = cu.tolist()
    return list(zip(bounds[:-1], bounds[1:]))
