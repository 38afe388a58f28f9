"""Prefix mode (JRT-RNN, Arora et al. 2024, "Just read twice"): a recurrent layer reads the first
``M`` steps of each sequence (the context) non-causally, then decodes the rest causally.

Definition. For a cell with state ``h_t`` (``h_{-1}`` the initial state) and projected input
``u_t = project(x_t)``, with ``M = prefix[b]`` per sequence::

    y_i = readout(h_{M-1}, u_i)    for i < M    (every prefix position reads the WHOLE prefix)
    y_i = readout(h_i,     u_i)    for i >= M   (causal, the state carrying on from h_{M-1})

For linear attention ``y_i = q_i^T sum_{j<M} k_j v_j^T`` at a prefix position (with the decays
of a gated cell, GLA or Mamba-2, applied up to ``M-1``). ``M = 0`` is the causal layer; ``M = T``
reads every position from the final state. The returned state is ``h_{T-1}`` (the prefix does
not change it: the state at ``i >= M`` is the causal one).

Works for any cell on any engine: one run with ``lengths = prefix`` gives ``h_{M-1}`` per sequence
(the engines leave the state untouched past a length), one causal run gives ``y_i`` for ``i >= M``,
and the prefix positions are read out from ``h_{M-1}``: by a contraction ``q_i^T S`` for cells
whose factors are an ``OuterProduct`` (GLA, Mamba-2; never ``(B, T, *S)`` states), else by the
cell's ``readout`` on ``B * M_max`` copies of the state. ``prefix_reference`` is the plain loop.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import numpy as np
import torch

from ..cells.base import Cell, State, as_tuple, map_state
from ..cells.factors import OuterProduct
from ..cells.linear import LinearCell
from ..cells.mitigations import Mitigated
from ..engines import call_with_params, compute_dtype
from .recurrent import Recurrent


def check_prefix(prefix, batch: int, steps: int, device=None) -> torch.Tensor:
    """``prefix``: an int, or B integers, in ``[0, T]`` -> a long tensor ``(B,)``."""
    if isinstance(prefix, (bool, np.bool_)) or not isinstance(
            prefix, (numbers.Integral, torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"prefix: expected an int or a 1-D integer tensor of B={batch} prefix "
                        f"lengths, got {type(prefix).__name__}")
    empty = isinstance(prefix, (list, tuple)) and not prefix  # as_tensor would make it float
    p = torch.zeros(0, dtype=torch.long, device=device) if empty else \
        torch.as_tensor(prefix, device=device)
    if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
        raise TypeError(f"prefix: expected an integer dtype, got {p.dtype}")
    if p.dim() == 0:
        p = p.expand(batch)  # one M for every sequence
    if p.shape != (batch,):
        raise ValueError(f"prefix: expected shape (B,) = ({batch},), got {tuple(p.shape)}")
    if batch and (int(p.min()) < 0 or int(p.max()) > steps):
        raise ValueError(f"prefix: expected values in [0, T={steps}], got min {int(p.min())}, "
                         f"max {int(p.max())}")
    return p.to(dtype=torch.long)


def _tiled(h: State, t: int) -> State:
    """Each state leaf ``(B, ...)`` repeated for ``t`` steps: ``(B * t, ...)``."""
    return map_state(lambda s: s.unsqueeze(1).expand(s.shape[0], t, *s.shape[1:])
                     .reshape(s.shape[0] * t, *s.shape[1:]), h)  # (B, ...) -> (B t, ...)


def _read_state(cell: Cell, h: State) -> Optional[torch.Tensor]:
    """The state that ``LinearCell``'s readout reads (``f.read(S)``; a windowed cell's ring is
    not read), or None for a cell with a readout of its own (then the generic path runs)."""
    readout = type(cell).readout
    if readout is Mitigated.readout:
        h = as_tuple(h)[0]
    elif not (isinstance(cell, LinearCell) and readout is LinearCell.readout):
        return None
    return h if isinstance(h, torch.Tensor) else None


def _read_prefix(cell: Cell, x: torch.Tensor, h: State) -> torch.Tensor:
    """``readout(h, u_i)`` for every step of ``x (B, t, D)`` from one state per sequence:
    ``(B, t, H_out)``."""
    B, t, _ = x.shape
    u = cell.project(x)  # (B, t, P)
    S = _read_state(cell, h)
    f = cell.factors(u) if S is not None else None
    if isinstance(f, OuterProduct):
        eq = "bhvk,bthk->bthv" if f.transposed else "bhkv,bthk->bthv"
        return cell.finish(torch.einsum(eq, S, f.q), u)  # (B, t, heads, V) -> (B, t, H_out)
    y = cell.readout(_tiled(h, t), u.reshape(B * t, -1))  # (B t, P) -> (B t, H_out)
    return y.reshape(B, t, -1)  # (B, t, H_out)


def prefix_forward(layer: Recurrent, x: torch.Tensor, prefix,
                   initial_state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
    """``layer`` (a ``Recurrent``) in prefix mode (module docstring) on its own engine.

    Shapes: ``x: (B, T, D)``; ``prefix``: ``(B,)`` ints in ``[0, T]`` (or one int);
    ``y: (B, T, H_out)``; the state as ``layer`` returns it (``h_{T-1}``). Gradients flow to
    ``x``, the parameters and ``initial_state``.
    """
    if not isinstance(layer, Recurrent):
        raise TypeError(f"prefix_forward: layer must be a rnnlab Recurrent, got "
                        f"{type(layer).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"prefix_forward: x must be a tensor (B, T, D), got {got}")
    B, T, _ = x.shape
    prefix = check_prefix(prefix, B, T, x.device)
    y, h_last = layer(x, initial_state)  # (B, T, H_out): causal, right for i >= M
    top = int(prefix.max()) if B else 0
    if top == 0:
        return y, h_last
    stats = dict(layer.stats)
    # h_{M-1} per sequence (h_{-1} at M=0); no step past the longest prefix matters
    _, h_pre = layer(x[:, :top], initial_state, lengths=prefix)
    layer.stats = {"causal": stats, "prefix": layer.stats}
    cell = layer.cell
    params = dict(cell.named_parameters())
    dtype = compute_dtype(x, [*params.values(), *as_tuple(h_pre)])  # the engines' rule
    xs = x[:, :top].to(dtype)  # (B, M_max, D)
    if all(p.dtype == dtype for p in params.values()):
        y_pre = _read_prefix(cell, xs, h_pre)
    else:  # the parameters in the run's dtype, as the engines run them
        cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in params.items()}
        y_pre = call_with_params(cell, cast, _read_prefix, xs, h_pre)
    inside = torch.arange(top, device=x.device) < prefix[:, None]  # (B, M_max)
    head = torch.where(inside[..., None], y_pre.to(y.dtype), y[:, :top])  # (B, M_max, H_out)
    return torch.cat([head, y[:, top:]], dim=1), h_last  # (B, T, H_out)


def prefix_reference(cell: Cell, x: torch.Tensor, prefix,
                     initial_state: Optional[State] = None) -> Tuple[torch.Tensor, State]:
    """The definition as a plain loop over time and sequences (the source of truth for
    ``prefix_forward``): ``x (B, T, D)``, ``prefix (B,)`` -> ``(y (B, T, H_out), h_{T-1})``.
    Computes in ``x``'s dtype (fp64 in tests) with the cell's parameters as they are."""
    B, T, _ = x.shape
    prefix = check_prefix(prefix, B, T, x.device)
    h = cell.init_state(B, x.dtype, x.device) if initial_state is None else initial_state
    u = cell.project(x)  # (B, T, P)
    states = [h]  # states[t + 1] = h_t
    for t in range(T):
        h = cell.step(u[:, t], h)
        states.append(h)
    rows = []
    for b in range(B):
        m = int(prefix[b])
        pick = lambda s: s[b:b + 1]  # noqa: E731 - one sequence's state, (1, ...)
        row = [cell.readout(map_state(pick, states[m if i < m else i + 1]), u[b:b + 1, i])
               for i in range(T)]  # i < M: the state after the whole prefix, h_{M-1}
        rows.append(torch.cat(row, dim=0))  # (T, H_out)
    return torch.stack(rows, dim=0), h  # (B, T, H_out)
