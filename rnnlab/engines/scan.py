"""The scan engine: linear cells in parallel over time. It never calls ``step``; by the cell's
``Linear(kind)`` it runs

- ``diagonal``, ``complex_diagonal``, ``scalar``: the transitions ``(A, b)`` through
  ``ops.linear_scan`` (analytic reverse-scan backward);
- ``matrix``: through ``ops.matrix_scan``;
- ``householder``: the factors ``(q, k, v, beta, g)`` through the chunked ``ops.delta_rule``;
- ``monoid``: the cell's elements through ``ops.associative_scan`` with the cell's ``combine``;

then reads out every step at once. A cell that declares factors (``cells/factors.py``: GLA,
Mamba, Mamba-2, mLSTM, S4D, DLR, LSSL, MinMax) runs instead through the op made for them
(``engines/factored.py``): chunkwise, fused or FFT-convolution forms that never materialise
``(B, T, *S)``. Padded steps (``lengths``) become identity transitions, so the state stays and
the final state is each sequence's own. One token (decoding) takes the cell's own step.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..cells.base import LINEAR_KINDS, Cell, Linear, State, map_state
from ..cells.linear import expand_decay
from ..ops import associative_scan, delta_rule, linear_scan, matrix_scan
from .base import Engine
from .factored import run_factored, runs_factored
from .sequential import Sequential

KINDS = LINEAR_KINDS  # every kind a linear structure may declare


def _alive(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)


def _keep(alive: torch.Tensor, x: torch.Tensor, fill) -> torch.Tensor:
    """``x (B, T, ...)`` where alive, else ``fill`` (a scalar or a tensor broadcasting to x)."""
    mask = alive.view(*alive.shape, *([1] * (x.dim() - 2)))
    fill = fill if isinstance(fill, torch.Tensor) else torch.tensor(fill, dtype=x.dtype,
                                                                    device=x.device)
    return torch.where(mask, x, fill)


def _affine(cell, u, h0, alive):
    """diagonal / complex_diagonal / scalar / matrix -> (all states (B, T, *S), final state)."""
    A, b = cell.transition(u)
    matrix = cell.structure.kind == "matrix"
    if alive is not None:  # padded steps: A = 1 (or I), b = 0
        b = _keep(alive, b, 0.0)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device) if matrix else 1.0
        A = _keep(alive, A.expand(*b.shape[:2], *A.shape[2:]), eye)
    if matrix:
        return matrix_scan(A, b, initial_state=h0, output_final_state=True)
    # Size-1 dims of a (a decay per head or per key) stay: the op reads them broadcast.
    return linear_scan(expand_decay(A, b), b, initial_state=h0, output_final_state=True)


def _householder(cell, u, h0, alive, chunk_size: Optional[int]):
    """The delta rule on the cell's factors -> (outputs (B, T, H), final state)."""
    q, k, v, beta, g = cell.delta_inputs(u)  # (B, T * n_h, heads, ...)
    B, T = u.shape[:2]
    n = cell.substeps
    if alive is not None:  # padded sub-steps: beta = 0, g = 0 -> identity
        sub = alive.repeat_interleave(n, dim=1)  # (B, T * n_h)
        beta = _keep(sub, beta, 0.0)
        g = None if g is None else _keep(sub, g, 0.0)
    o, S = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True,
                      chunk_size=64 if chunk_size is None else chunk_size)
    o = o.unflatten(1, (T, n))[:, :, -1]  # the last sub-step of each token: (B, T, heads, V)
    return o.flatten(2), S


def _monoid(cell, u, h0, alive):
    """Prefix scan of the cell's elements, applied to the initial state -> (all states, final)."""
    elems = cell.elements(u)
    if alive is not None:  # padded steps: identity elements
        elems = tuple(_keep(alive, e, i) for e, i in zip(elems, cell.identity(elems)))
    prefix = associative_scan(cell.combine, elems, dim=1)
    start = tuple(e.unsqueeze(1) for e in cell.to_element(h0))  # (B, 1, ...)
    states = cell.from_element(cell.combine(start, prefix))  # each (B, T, ...)
    return states, map_state(lambda s: s[:, -1], states)


class Scan(Engine):
    """Parallel-scan engine for cells whose structure is ``Linear(kind)``, kind in ``KINDS``.

    Args:
        chunk_size: chunk length C of the chunkwise ops (GLA, mLSTM, the delta rule; None: each
            op's own choice).
        factored: run a cell's declared factors through their fast op (default); False runs the
            materialising scan on ``transition(u)`` (for comparisons and tests).
    """

    name = "scan"

    def __init__(self, chunk_size: Optional[int] = None, factored: bool = True):
        if chunk_size is not None and (isinstance(chunk_size, bool)
                                       or not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"Scan: chunk_size must be None or an int >= 1, got {chunk_size!r}")
        if not isinstance(factored, bool):
            raise TypeError(f"Scan: factored must be a bool, got {type(factored).__name__}")
        self.chunk_size, self.factored = chunk_size, factored

    def supports(self, cell: Cell) -> bool:
        return isinstance(cell.structure, Linear) and cell.structure.kind in KINDS

    def __repr__(self) -> str:
        return f"Scan(chunk_size={self.chunk_size}, factored={self.factored})"

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        if T == 1:  # decoding: one step of the cell, no scan machinery
            return Sequential().run(cell, x, h0, lengths)
        kind = cell.structure.kind
        u = cell.project(x)  # (B, T, D) -> (B, T, P)
        alive = None if lengths is None else _alive(lengths, T)
        f = cell.factors(u) if self.factored and hasattr(cell, "factors") else None
        if f is not None and f.kind != kind:
            raise TypeError(f"{type(cell).__name__}: its factors ({type(f).__name__}) are of "
                            f"kind {f.kind!r}, but it declares structure {cell.structure}")
        if f is not None and runs_factored(f):
            o, h_T = run_factored(f, h0, alive, lengths, self.chunk_size)
            y = cell.finish(o, u)  # (B, T, H_out)
        elif kind == "householder":
            y, h_T = _householder(cell, u, h0, alive, self.chunk_size)
        else:
            states, h_T = (_monoid if kind == "monoid" else _affine)(cell, u, h0, alive)
            flat = map_state(lambda s: s.flatten(0, 1), states)  # (B, T, ...) -> (B*T, ...)
            y = cell.readout(flat, u.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, H_out)
        if alive is not None:
            y = _keep(alive, y, 0.0)
        return y, h_T
