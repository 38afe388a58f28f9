"""The scan engine: linear cells in parallel over time. It asks the cell for its transitions
``(A, b)`` for the whole sequence, solves ``h_t = A_t h_{t-1} + b_t`` with the scan op of the
cell's ``Linear(kind)``, and reads out every step at once; it never calls ``step``. Gradients flow
through the ops' analytic reverse scans."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..cells.base import Cell, Linear, State
from ..cells.linear import expand_decay
from ..ops.linear_scan import linear_scan
from ..ops.matrix_scan import matrix_scan
from .base import Engine

KINDS = ("diagonal", "complex_diagonal", "scalar", "matrix")


def _mask_padding(kind: str, A, b, lengths: torch.Tensor):
    """Padded steps become the identity transition (A = 1 or I, b = 0): the state stays."""
    T = b.shape[1]
    alive = torch.arange(T, device=b.device)[None, :] < lengths[:, None]  # (B, T)
    alive_b = alive.view(*alive.shape, *([1] * (b.dim() - 2)))
    b = torch.where(alive_b, b, torch.zeros((), dtype=b.dtype, device=b.device))
    if kind == "matrix":
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        A = torch.where(alive.view(*alive.shape, *([1] * (A.dim() - 2))), A, eye)
    else:
        A = A.expand(*b.shape[:2], *A.shape[2:])  # a time-invariant A gets per-step entries
        A = torch.where(alive.view(*alive.shape, *([1] * (A.dim() - 2))), A,
                        torch.ones((), dtype=A.dtype, device=A.device))
    return A, b, alive


class Scan(Engine):
    """Parallel-scan engine for cells whose structure is ``Linear(kind)``, kind in ``KINDS``."""

    name = "scan"

    def supports(self, cell: Cell) -> bool:
        return isinstance(cell.structure, Linear) and cell.structure.kind in KINDS

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        kind = cell.structure.kind
        u = cell.project(x)  # (B, T, D) -> (B, T, P)
        A, b = cell.transition(u)
        alive = None
        if lengths is not None:
            A, b, alive = _mask_padding(kind, A, b, lengths)
        if kind == "matrix":
            h, h_T = matrix_scan(A, b, initial_state=h0, output_final_state=True)
        else:
            a = expand_decay(A, b).expand_as(b)  # (B, T, *S)
            h, h_T = linear_scan(a, b, initial_state=h0, output_final_state=True)
        y = cell.readout(h.flatten(0, 1), u.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, H_out)
        if alive is not None:
            y = torch.where(alive.view(B, T, *([1] * (y.dim() - 2))), y,
                            torch.zeros((), dtype=y.dtype, device=y.device))
        return y, h_T
