"""The Newton engine's path through the fused Triton sweeps (``ops/newton_fused``): on CUDA, for
plain Newton steps from no warm start and a cell the kernels take (ParaGRU, IndRNN, ParaLSTM),
each iteration is one launch per chunk and the backward one fused adjoint pass; ``stats`` as the
generic solve's, with ``kernel = "triton"``."""
from __future__ import annotations

from typing import Optional

import torch

from ..cells.base import Cell
from ..ops import newton_fused as nf
from .iterate import NewtonSteps
from .linearize import from_leaves, sizes


def fused_kind(engine, cell: Cell, x: torch.Tensor, guess) -> Optional[str]:
    """The kernels' name for this call of ``engine`` (a ``Newton``), or None: the generic
    solve."""
    if engine.quasi or guess is not None or type(engine.method) is not NewtonSteps \
            or nf.backend(x.device) != "triton":
        return None
    return nf.engine_supports(cell)


def run_fused(engine, kind, cell, u, start, lay, lengths, alive, stats):
    """-> ``(y, h_T, failure)``: the outputs and final state as the engine returns them, or the
    reason the solve failed (the engine then falls back or raises)."""
    B, T = u.shape[:2]
    z, h_T, info = nf.newton_fused(kind, u, start, nf.cell_params(cell), lengths,
                                   tol=engine.tol, max_iters=engine.max_iters,
                                   damping=engine.method.damping, init=engine.init)
    failure = info.pop("failure")
    stats.update(info, kernel="triton", compiled=False)
    if failure is not None:
        return None, None, failure
    split = sizes(lay)
    parts = list(z.reshape(B * T, -1).split(split, -1))  # L x (B*T, S_l)
    y = cell.readout(from_leaves(parts, lay), u.reshape(B * T, u.shape[-1]))
    y = y.unflatten(0, (B, T))  # (B*T, H_out) -> (B, T, H_out)
    if alive is not None:
        y = torch.where(alive.view(B, T, *([1] * (y.dim() - 2))), y, torch.zeros_like(y))
    return y, from_leaves(list(h_T.split(split, -1)), lay), None
