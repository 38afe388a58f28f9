"""Sequence parallelism: one ``Recurrent`` layer over a sequence split along T across the ranks
of a ``torch.distributed`` process group.

``y_local, h_T = sequence_parallel(layer, x_local, initial_state=None, group=None)``

Rank r passes its contiguous chunk ``x_local (B, T_r, D)`` of the sequence (rank 0 the first;
T_r >= 1, chunks may differ in length) and gets its chunk's outputs ``(B, T_r, H_out)`` and the
whole sequence's final state (the same on every rank). What runs:

- linear cells (``Linear`` kinds diagonal, complex_diagonal, scalar, matrix: LRU, S4D, DLR,
  LSSL, GLA, Mamba, ...): the transitions ``(A, b) = cell.transition(u)`` of the chunk through
  ``carry.scan_chunk`` (``ops.linear_scan`` / ``ops.matrix_scan``, one carry exchange), then
  the cell's readout. Cells with factors (GLA, Mamba, S4D, ...) materialise their per-step
  states here, as ``Scan(factored=False)`` does, not the chunked or FFT forms;
- nonlinear cells the Newton engine runs: ``newton.newton_chunk`` (one carry exchange per
  Newton iteration and one for the adjoint), with the layer's Newton ``tol``/``max_iters``.

Refused: Householder (delta rule) and monoid kinds, ``lengths``, the sequential engine's
cells. Autograd: every rank must run the backward (it is collective, as in DDP). The input's
gradient is its chunk's; the parameters' and the initial state's gradients on each rank are
partial and sum over ranks to the single-process ones (all-reduce them, as DDP does).
"""
from __future__ import annotations

import itertools
from typing import Optional, Tuple

import torch
import torch.distributed as dist

from ..cells.base import Linear, State, map_state
from ..cells.linear import expand_decay
from ..engines import Newton, call_with_params, compute_dtype
from ..engines.base import state_dtype
from ..engines.checks import check_input, check_state
from ..engines.linearize import flatten, layout, unflatten
from ..engines.probe import probe
from .carry import scan_chunk
from .newton import newton_chunk

SCAN_KINDS = ("diagonal", "complex_diagonal", "scalar", "matrix")


def _linear_chunk(cell, x: torch.Tensor, h0: torch.Tensor, group):
    """A linear cell's chunk: ``(y (B, T_r, H_out), h_T)``."""
    u = cell.project(x)  # (B, T_r, D) -> (B, T_r, P)
    A, b = cell.transition(u)
    if cell.structure.kind == "matrix":
        h, h_T = scan_chunk("matrix", A, b, h0, group)
    else:  # size-1 dims of a decay (per head, per key) broadcast against b
        h, h_T = scan_chunk("diagonal", expand_decay(A, b), b, h0, group)
    B, T = u.shape[:2]
    y = cell.readout(h.flatten(0, 1), u.flatten(0, 1))  # (B*T, ...) -> (B*T, H_out)
    return y.unflatten(0, (B, T)), h_T


def _route(layer) -> str:
    """"scan" or "newton" for the layer's cell, or a ValueError naming what is refused."""
    cell, name = layer.cell, type(layer.cell).__name__
    s = cell.structure
    if isinstance(s, Linear) and s.kind in SCAN_KINDS:
        return "scan"
    if isinstance(s, Linear):
        raise ValueError(f"sequence_parallel: {name} has structure {s}; supported linear kinds "
                         f"are {', '.join(SCAN_KINDS)} (the delta rule and monoid scans are "
                         f"not split over ranks)")
    if Newton().supports(cell):
        return "newton"
    raise ValueError(f"sequence_parallel: {name} (structure {s}) runs on neither the scan nor "
                     f"the Newton engine, so its sequence cannot be split over ranks")


def _newton_settings(layer):
    engine = layer.engine
    if isinstance(engine, Newton):
        return engine.tol, engine.max_iters
    return None, Newton().max_iters


def _check(layer, x_local, group):
    from ..nn.recurrent import Recurrent  # nn sits above engines: import at call time

    if not isinstance(layer, Recurrent):
        raise TypeError(f"sequence_parallel: layer must be a rnnlab.Recurrent, got "
                        f"{type(layer).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sequence_parallel: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group (e.g. under torchrun) first")
    check_input(layer.cell, x_local, "x_local")  # (B, T_r, D) with T_r >= 1
    return _route(layer)


def sequence_parallel(layer, x_local: torch.Tensor, initial_state: Optional[State] = None,
                      group=None) -> Tuple[torch.Tensor, State]:
    """Run ``layer`` over a sequence split along time across the ranks of ``group``.

    Args:
        layer: a ``rnnlab.Recurrent`` whose cell is linear (diagonal, complex diagonal,
            scalar or matrix kind) or runs on the Newton engine; the same parameters on
            every rank.
        x_local: ``(B, T_r, D)``, this rank's chunk of the sequence (rank order = time order;
            B and D the same on every rank, T_r >= 1 may differ).
        initial_state: the state before the whole sequence (as ``cell.init_state`` shapes
            it), the same on every rank; zeros if None.
        group: a ``torch.distributed`` process group (None: the default group).
    Returns:
        ``(y_local (B, T_r, H_out), h_T)``: this chunk's outputs (dtype of x_local) and the
        final state of the whole sequence, on every rank. Collective: every rank calls it,
        and every rank runs the backward of what it returns.
    """
    route = _check(layer, x_local, group)
    cell = layer.cell
    B = x_local.shape[0]
    if initial_state is not None:
        check_state(cell, initial_state, B, "initial_state")
    tensors = {n: t for n, t in itertools.chain(cell.named_parameters(), cell.named_buffers())
               if t.is_floating_point()}
    state = () if initial_state is None else map_state(lambda t: t, initial_state)
    dtype = compute_dtype(x_local, [*tensors.values(), *(state if isinstance(state, tuple)
                                                         else (state,))])
    h0 = (cell.init_state(B, dtype, x_local.device) if initial_state is None
          else map_state(lambda t: t.to(state_dtype(t, dtype)), initial_state))
    stats = layer.stats = {"engine": f"sequence_parallel/{route}"}
    tol, max_iters = _newton_settings(layer)

    def run(cell, x, h0):
        if route == "scan":
            return _linear_chunk(cell, x, h0, group)
        lay = layout(cell, h0)
        start = flatten(h0, lay)  # (B, S)
        probe(cell, cell.project(x[:, :1]).detach()[:, 0], start.detach(), lay)
        y, last = newton_chunk(cell, lay, x, start, tol, max_iters, group, stats)
        return y, unflatten(last, lay)

    x = x_local.to(dtype)
    if all(t.dtype == dtype for t in tensors.values()):
        y, h_T = run(cell, x, h0)
    else:
        cast = {k: v.to(dtype) for k, v in tensors.items()}
        y, h_T = call_with_params(cell, cast, run, x, h0)
    return y.to(x_local.dtype), h_T
