"""Checks of what an engine is given: each error names the argument, the expected shape or range,
and what was given, before any work is done."""
from __future__ import annotations

from typing import Optional

import torch

from ..cells.base import Cell, State, as_tuple


def check_input(cell: Cell, x, name: str = "x") -> None:
    """``x`` must be a floating tensor ``(B, T, D)``, ``T >= 1``, ``D == cell.input_size``.
    ``name``: the argument's name in the caller's terms (errors start with it)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (B, T, D={cell.input_size}), "
                        f"got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating dtype (float16/bfloat16/float32/float64), "
                        f"got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"{name}: expected shape (B, T, D={cell.input_size}) (3 dims), "
                         f"got {tuple(x.shape)} ({x.dim()} dims)")
    B, T, D = x.shape
    if D != cell.input_size:
        raise ValueError(f"{name}: expected feature size D={cell.input_size} in (B, T, D), "
                         f"got shape {tuple(x.shape)}")
    if T == 0:
        raise ValueError(f"{name}: expected at least one time step (T >= 1), "
                         f"got shape {tuple(x.shape)}")
    if B == 0:
        raise ValueError(f"{name}: expected a batch of at least one (B >= 1), "
                         f"got shape {tuple(x.shape)}")


def check_state(cell: Cell, state: State, batch: int, name: str = "initial_state") -> None:
    """``state`` must have the layout of ``cell.init_state(batch)``: same tuple arity, shapes, and
    real or complex leaves where the cell's are. ``name``: the argument's name in the caller's
    terms (``Recurrent.step`` calls it ``state``)."""
    template = as_tuple(cell.init_state(batch, torch.float32, "meta"))
    shapes = [tuple(t.shape) for t in template]
    want = shapes[0] if len(shapes) == 1 else tuple(shapes)
    is_tuple = isinstance(state, tuple)
    leaves = as_tuple(state) if is_tuple or isinstance(state, torch.Tensor) else None
    if leaves is None or (len(shapes) > 1) != is_tuple or len(leaves) != len(shapes):
        kind = f"a tuple of {len(shapes)} tensors" if len(shapes) > 1 else "a tensor"
        got = f"a tuple of {len(state)}" if is_tuple else type(state).__name__
        raise ValueError(f"{name}: expected {kind} shaped {want} for {type(cell).__name__}, "
                         f"got {got}")
    for i, (leaf, ref) in enumerate(zip(leaves, template)):
        where = f"{name}[{i}]" if is_tuple else name
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{where}: expected a tensor shaped {tuple(ref.shape)}, "
                            f"got {type(leaf).__name__}")
        kind = "complex" if ref.is_complex() else "floating"
        if not (leaf.is_complex() if ref.is_complex() else leaf.is_floating_point()):
            raise TypeError(f"{where}: expected a {kind} dtype, got {leaf.dtype}")
        if leaf.shape != ref.shape:
            raise ValueError(f"{where}: expected shape {tuple(ref.shape)} for "
                             f"{type(cell).__name__} (B={batch}), got {tuple(leaf.shape)}")


def check_lengths(lengths, batch: int, steps: int, device) -> Optional[torch.Tensor]:
    """``lengths`` must be ``None`` or B integers in ``[0, T]``; returns a long tensor on device."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        bad = TypeError(f"lengths: expected a 1-D integer tensor or list of B={batch} lengths, "
                        f"got {type(lengths).__name__}")
        if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__"):
            raise bad
        try:
            lengths = torch.as_tensor(lengths)  # list, tuple, numpy array
        except (TypeError, ValueError, RuntimeError) as e:
            raise bad from e
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths: expected shape (B,) = ({batch},), got {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 0 or hi > steps:
        raise ValueError(f"lengths: expected values in [0, T={steps}], got min {lo}, max {hi}")
    return lengths.to(device=device, dtype=torch.long)
