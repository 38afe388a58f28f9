"""Structured linearization of a cell's step for the Newton engine.

The state of one sample is handled as a flat vector of S numbers (the state's leaves flattened and
concatenated, leaf-major). A declared structure says the Jacobian ``dh_t/dh_{t-1}`` is
block-diagonal: G groups of M numbers, each group mixing only within itself.

- ``Diagonal``: G = S, M = 1 (one JVP).
- ``Block(k)``: k leaves of C channels; group c holds channel c of every leaf: G = C, M = k.
- ``Heads(n, d)``: L leaves of n*d channels; group h holds head h's d channels of every leaf:
  G = n, M = L*d.
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
    """How a flat state of S numbers splits into G groups of M (``perm``: group-major order)."""
    shapes: Tuple[Tuple[int, ...], ...]  # per-sample shape of each state leaf
    is_tuple: bool
    groups: int  # G
    size: int  # M
    perm: torch.Tensor  # (S,): flat index of (g, m) at position g * M + m
    inverse: torch.Tensor  # (S,)


def layout(cell: Cell, template: State) -> Layout:
    """The grouping that ``cell.structure`` declares for states shaped like ``template``."""
    leaves = as_tuple(template)
    shapes = tuple(tuple(t.shape[1:]) for t in leaves)
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    S, s = sum(sizes), cell.structure
    i = torch.arange(S)
    if isinstance(s, Diagonal):
        G, group, within = S, i, torch.zeros_like(i)
    elif isinstance(s, Dense):
        G, group, within = 1, torch.zeros_like(i), i
    elif isinstance(s, (Block, Heads)):
        n, d = (sizes[0], 1) if isinstance(s, Block) else (s.n, s.d)
        if S % (n * d):
            raise ValueError(f"{type(cell).__name__}: structure {s} does not tile a state of "
                             f"{S} numbers (leaf sizes {sizes})")
        G, group = n, (i % (n * d)) // d
        within = (i // (n * d)) * d + i % d  # leaf-major, then offset within the head
    else:
        raise ValueError(f"Newton: cannot linearize structure {s} of {type(cell).__name__}")
    M = S // G
    perm = torch.argsort(group * M + within)
    return Layout(shapes, isinstance(template, tuple), G, M, perm, torch.argsort(perm))


def flatten(h: State, lay: Layout) -> torch.Tensor:
    """State leaves ``(N, ...)`` -> grouped flat ``(N, G, M)``."""
    flat = torch.cat([t.reshape(t.shape[0], -1) for t in as_tuple(h)], dim=-1)  # (N, S)
    return flat[:, lay.perm.to(flat.device)].unflatten(-1, (lay.groups, lay.size))


def unflatten(v: torch.Tensor, lay: Layout) -> State:
    """Grouped flat ``(N, G, M)`` -> state leaves ``(N, ...)``."""
    flat = v.flatten(-2)[:, lay.inverse.to(v.device)]  # (N, S) in leaf-major order
    sizes = [int(torch.Size(s).numel()) for s in lay.shapes]
    leaves = tuple(p.reshape(v.shape[0], *s) for p, s in zip(flat.split(sizes, -1), lay.shapes))
    return leaves if lay.is_tuple else leaves[0]


def _step_flat(cell: Cell, u: torch.Tensor, lay: Layout):
    return lambda v: flatten(cell.step(u, unflatten(v, lay)), lay)


def linearize(cell: Cell, u: torch.Tensor, h_prev: torch.Tensor, lay: Layout):
    """``f = step(u, h_prev)`` and its Jacobian blocks: u ``(N, P)``, h_prev ``(N, G, M)`` ->
    f ``(N, G, M)``, A ``(N, G, M, M)`` with ``A[n, g, r, c] = d f[g, r] / d h_prev[g, c]``."""
    fn = _step_flat(cell, u, lay)
    cols, f = [], None
    for m in range(lay.size):
        tangent = torch.zeros_like(h_prev)
        tangent[..., m] = 1
        f, col = torch.func.jvp(fn, (h_prev,), (tangent,))
        cols.append(col)
    return f, torch.stack(cols, dim=-1)  # (N, G, M, M): column m from tangent m


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
