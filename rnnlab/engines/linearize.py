"""Structured linearization of a cell's step for the Newton engine.

The state of one sample is handled as a flat vector of S numbers (the state's leaves flattened and
concatenated, leaf-major). A declared structure says the Jacobian ``dh_t/dh_{t-1}`` is
block-diagonal: G groups of M numbers, each group mixing only within itself.

- ``Diagonal``: G = S, M = 1 (one JVP).
- ``Block(k)``: k leaves of C channels; group c holds channel c of every leaf: G = C, M = k.
- ``Heads(n, d)``: L leaves of n*d channels; group h holds head h's d channels of every leaf:
  G = n, M = L*d (leaf-major within the group).
- ``Dense``: G = 1, M = S (DEER; O(S^2) memory per step).

``linearize`` returns ``f(h_prev, u)`` and the blocks ``A: (..., G, M, M)`` from M Jacobian-vector
products (tangent m has ones at within-group index m of every group). ``probe`` checks, with a
random tangent, that the full JVP equals the block-structured product, so a wrong declaration is a
loud error instead of a silently wrong Newton step or gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from ..cells.base import Block, Cell, Dense, Diagonal, Heads, State, as_tuple


@dataclass(frozen=True)
class Layout:
    """How a flat state of S numbers splits into G groups of M."""
    shapes: Tuple[Tuple[int, ...], ...]  # per-sample shape of each state leaf
    is_tuple: bool
    groups: int  # G
    size: int  # M
    heads: Tuple[int, int] = (0, 0)  # (n, d) for Block/Heads: leaves interleave per head


def layout(cell: Cell, template: State) -> Layout:
    """The grouping that ``cell.structure`` declares for states shaped like ``template``."""
    leaves = as_tuple(template)
    shapes = tuple(tuple(t.shape[1:]) for t in leaves)
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    S, s, tup = sum(sizes), cell.structure, isinstance(template, tuple)
    if isinstance(s, Diagonal):
        return Layout(shapes, tup, S, 1)
    if isinstance(s, Dense):
        return Layout(shapes, tup, 1, S)
    if isinstance(s, (Block, Heads)):
        n, d = (sizes[0], 1) if isinstance(s, Block) else (s.n, s.d)
        if any(size != n * d for size in sizes):
            raise ValueError(f"{type(cell).__name__}: structure {s} needs every state leaf to "
                             f"hold {n * d} numbers, got leaf sizes {sizes}")
        return Layout(shapes, tup, n, len(sizes) * d, (n, d))
    raise ValueError(f"Newton: cannot linearize structure {s} of {type(cell).__name__}")


def flatten(h: State, lay: Layout) -> torch.Tensor:
    """State leaves ``(N, ...)`` -> grouped ``(N, G, M)``."""
    leaves = [t.reshape(t.shape[0], -1) for t in as_tuple(h)]  # each (N, S_l)
    if lay.heads == (0, 0):  # Diagonal (G = S) or Dense (G = 1)
        return torch.cat(leaves, dim=-1).view(-1, lay.groups, lay.size)
    n, d = lay.heads
    stacked = torch.stack(leaves, dim=1).unflatten(-1, (n, d))  # (N, L, n, d)
    return stacked.transpose(1, 2).reshape(-1, n, lay.size)  # (N, n, L * d)


def unflatten(v: torch.Tensor, lay: Layout) -> State:
    """Grouped ``(N, G, M)`` -> state leaves ``(N, ...)``."""
    N = v.shape[0]
    if lay.heads == (0, 0):
        parts = v.reshape(N, -1).split([int(torch.Size(s).numel()) for s in lay.shapes], -1)
    else:
        n, d = lay.heads
        parts = v.unflatten(-1, (-1, d)).transpose(1, 2).reshape(N, -1, n * d).unbind(1)
    leaves = tuple(p.reshape(N, *s) for p, s in zip(parts, lay.shapes))
    return leaves if lay.is_tuple else leaves[0]


def _step_flat(cell: Cell, u: torch.Tensor, lay: Layout):
    return lambda v: flatten(cell.step(u, unflatten(v, lay)), lay)


def linearize(cell: Cell, u: torch.Tensor, h_prev: torch.Tensor, lay: Layout):
    """``f = step(u, h_prev)`` and its Jacobian blocks: u ``(N, P)``, h_prev ``(N, G, M)`` ->
    f ``(N, G, M)``, A ``(N, G, M, M)`` with ``A[n, g, r, c] = d f[g, r] / d h_prev[g, c]``.

    Tangent m has ones at within-group index m. Few tangents run as separate JVPs (what
    ``torch.compile`` fuses best); many (Dense, wide heads) as one vmapped JVP, so the step's
    primal part runs once."""
    fn = _step_flat(cell, u, lay)
    eye = torch.eye(lay.size, dtype=h_prev.dtype, device=h_prev.device)
    if lay.size <= 4:
        cols, f = [], None
        for m in range(lay.size):
            tangent = eye[m].expand_as(h_prev).contiguous()
            f, col = torch.func.jvp(fn, (h_prev,), (tangent,))
            cols.append(col)
        return f, torch.stack(cols, dim=-1)  # (N, G, M, M): column m from tangent m
    tangents = eye[:, None, None, :].expand(-1, *h_prev.shape)  # (M, N, G, M)

    def column(t):
        return torch.func.jvp(fn, (h_prev,), (t,))

    f, cols = torch.func.vmap(column, out_dims=(None, 0))(tangents)
    return f, cols.permute(1, 2, 3, 0)  # (M, N, G, M) -> (N, G, M, M)


def block_matvec(A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``A (..., G, M, M) @ v (..., G, M)``."""
    return (A @ v.unsqueeze(-1)).squeeze(-1)


def probe(cell: Cell, u: torch.Tensor, h_prev: torch.Tensor, lay: Layout) -> None:
    """Raise if the declared structure is false: a random tangent's full JVP must equal the
    block-structured product (relative difference <= 1e-3; rounding stays near 1e-6 in fp32,
    a false declaration gives O(1))."""
    fn = _step_flat(cell, u, lay)
    with torch.no_grad():
        _, A = linearize(cell, u, h_prev, lay)
        tangent = torch.randn_like(h_prev)
        _, full = torch.func.jvp(fn, (h_prev,), (tangent,))
    err = (full - block_matvec(A, tangent)).norm() / (full.norm() + 1e-30)
    if not err <= 1e-3:
        raise ValueError(f"{type(cell).__name__} declares structure {cell.structure}, but its "
                         f"step mixes state entries outside it (relative mismatch {err:.2e} on a "
                         f"random tangent); declare a wider structure (e.g. Dense())")
