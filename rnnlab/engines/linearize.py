"""Structured linearization of a cell's step for the Newton engine.

The state of one sample is handled as a flat vector of S numbers: the state's leaves flattened
and concatenated, leaf-major (the natural memory order; no interleaving). A declared structure
says the Jacobian ``dh_t/dh_{t-1}`` is block-diagonal: G groups of M numbers, each group mixing
only within itself.

- ``Diagonal``: G = S, M = 1 (one JVP).
- ``Block(k)``: k leaves of C channels; group c holds channel c of every leaf: G = C, M = k.
- ``Heads(n, d)``: L leaves of n*d channels; group h holds head h's d channels of every leaf:
  G = n, M = L*d (within-group index ``l*d + j``).
- ``Dense``: G = 1, M = S (DEER; O(S^2) memory per step).

The Jacobian is kept as M *columns* ``A: (..., M, S)``: tangent m has ones at within-group index
m of every group, and its JVP ``A[..., m, s] = d f_s / d h_{src[m, s]}`` where ``src[m, s]`` is
the position of the member m of s's group (``Layout.src``). So ``(A v)_s = sum_m A[m, s]
v[src[m, s]]``: every column is a contiguous state-shaped vector, which the fused (compiled)
linearization writes in one pass and the scans in ``ops/block.py`` read without gathers for
Diagonal and Block. ``probe.py`` checks, with a random tangent, that the full JVP equals the
structured product, so a wrong declaration is a loud error instead of a silently wrong Newton
step or gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import torch

from ..cells.base import Block, Cell, Dense, Diagonal, Heads, Linear, State, as_tuple


@dataclass(frozen=True)
class Layout:
    """How a flat state of S numbers splits into G groups of M (hashable: compiled code keys on
    it). Position ``s = l*n*d + h*d + j`` (leaf l, group h, channel j) is member ``l*d + j`` of
    group h; Diagonal is n = S, d = 1, one leaf; Dense is n = 1, d = S."""
    shapes: Tuple[Tuple[int, ...], ...]  # per-sample shape of each state leaf
    is_tuple: bool
    size: int  # S
    width: int  # M
    heads: Tuple[int, int]  # (n, d)
    exact: Optional["Layout"] = None  # quasi-Newton: the true structure's layout (this one is
    # the part of it kept: same-channel entries only, ``quasi_layout``)

    @property
    def groups(self) -> int:  # G
        return self.size // self.width

    def within(self, device=None) -> torch.Tensor:
        """``(S,)`` long: the within-group index of each position."""
        return _tables(self, torch.device(device or "cpu"))[0]

    def src(self, device=None) -> torch.Tensor:
        """``(M, S)`` long: ``src[m, s]`` = position of member m of s's group."""
        return _tables(self, torch.device(device or "cpu"))[1]

    def members(self, device=None) -> torch.Tensor:
        """``(G, M)`` long: the positions of group g's members, in within-group order."""
        return _tables(self, torch.device(device or "cpu"))[2]


def _within(s: torch.Tensor, lay: Layout) -> torch.Tensor:
    n, d = lay.heads
    return (s // (n * d)) * d + s % d


@lru_cache(maxsize=64)
def _tables(lay: Layout, device: torch.device):
    n, d = lay.heads
    s = torch.arange(lay.size, device=device)
    m = torch.arange(lay.width, device=device)
    base = (s % (n * d)) // d * d  # h*d: the group's offset inside a leaf
    src = (m[:, None] // d) * (n * d) + base[None, :] + m[:, None] % d  # (M, S)
    g = torch.arange(lay.groups, device=device)
    members = (m[None, :] // d) * (n * d) + g[:, None] * d + m[None, :] % d  # (G, M)
    return _within(s, lay), src, members


def elementwise(structure) -> bool:
    """A linear structure whose transition is elementwise on a real state (``Linear("diagonal")``
    or ``"scalar"``: Mamba, GLA, Mamba-2): ``Diagonal`` to Newton, which then converges in one
    iteration (its linearization is exact)."""
    return isinstance(structure, Linear) and structure.kind in ("diagonal", "scalar")


def linear_on_newton(structure) -> bool:
    """Whether Newton can run a linear structure: every kind on a real state. What each implies
    for the step Jacobian (``layout``): ``diagonal``/``scalar`` are ``Diagonal``; ``matrix``
    (A acting on the state's last dim, N) is N x N blocks, ``Heads(S/N, N)``; ``householder``
    (A acting on the key dim of a (heads, K, V) state, a strided group) and ``monoid`` (a
    combine of its own, e.g. mLSTM's max-stabilizer) are ``Dense``. ``complex_diagonal`` is
    not: the solve's buffers are real (run LRU, S4D, DLR on the scan or sequential engine).
    A linear step's linearization is exact, so Newton converges in one iteration, except on a
    ``monoid`` whose combine is only piecewise linear (mLSTM: ~20 at T = 41)."""
    return isinstance(structure, Linear) and structure.kind != "complex_diagonal"


def complex_state(cell: Cell) -> bool:
    """Whether any leaf of ``cell``'s state is complex (probed on the meta device: no memory);
    Newton refuses such a cell, whatever its structure."""
    h = cell.init_state(1, torch.float32, torch.device("meta"))
    return any(leaf.is_complex() for leaf in (h if isinstance(h, tuple) else (h,)))


def layout(cell: Cell, template: State) -> Layout:
    """The grouping that ``cell.structure`` declares for states shaped like ``template``."""
    leaves = as_tuple(template)
    shapes = tuple(tuple(t.shape[1:]) for t in leaves)
    numels = [int(torch.Size(s).numel()) for s in shapes]
    S, s, tup = sum(numels), cell.structure, isinstance(template, tuple)
    if isinstance(s, Diagonal) or elementwise(s):
        return Layout(shapes, tup, S, 1, (S, 1))
    if isinstance(s, Linear) and s.kind == "matrix" and len(shapes) == 1 and shapes[0]:
        N = shapes[0][-1]  # A acts on the last dim: contiguous groups of N
        return Layout(shapes, tup, S, N, (S // N, N))
    if isinstance(s, Dense) or linear_on_newton(s):
        return Layout(shapes, tup, S, S, (1, S))
    if isinstance(s, (Block, Heads)):
        n, d = (numels[0], 1) if isinstance(s, Block) else (s.n, s.d)
        if any(k != n * d for k in numels):
            raise ValueError(f"{type(cell).__name__}: structure {s} needs every state leaf to "
                             f"hold {n * d} numbers, got leaf sizes {numels}")
        return Layout(shapes, tup, S, len(numels) * d, (n, d))
    raise ValueError(f"Newton: cannot linearize structure {s} of {type(cell).__name__}")


def quasi_layout(lay: Layout) -> Layout:
    """The part of ``lay``'s Jacobian that quasi-Newton keeps (the ELK paper's quasi-DEER,
    widened to state tuples): the entries between the same channel of every state leaf,
    ``d new_l[c] / d h_k[c]``, i.e. ``Block(L)`` when the L leaves are all C numbers, else the
    diagonal. O(L S) numbers per step where ``Dense`` needs S^2 and ``Heads(n, d)`` L d S.
    Returns ``lay`` itself when that is already its structure (Diagonal, Block), since then
    quasi-Newton is Newton."""
    split = sizes(lay)
    L, C = len(split), split[0]
    width, heads = (L, (C, 1)) if L > 1 and all(n == C for n in split) else (1, (lay.size, 1))
    if (width, heads) == (lay.width, lay.heads):
        return lay
    return Layout(lay.shapes, lay.is_tuple, lay.size, width, heads, exact=lay)


def sizes(lay: Layout) -> Tuple[int, ...]:
    """Numbers per sample in each state leaf."""
    return tuple(int(torch.Size(s).numel()) for s in lay.shapes)


def flatten(h: State, lay: Layout) -> torch.Tensor:
    """State leaves ``(N, ...)`` -> flat ``(N, S)`` (leaf-major)."""
    leaves = [t.reshape(t.shape[0], -1) for t in as_tuple(h)]  # each (N, S_l)
    return leaves[0] if len(leaves) == 1 else torch.cat(leaves, dim=-1)


def unflatten(v: torch.Tensor, lay: Layout) -> State:
    """Flat ``(N, S)`` -> state leaves ``(N, ...)`` (views of v)."""
    return from_leaves(v.split(sizes(lay), -1), lay)


def from_leaves(parts, lay: Layout) -> State:
    """Flat leaves ``(N, S_l)`` -> the state (leaves reshaped to ``(N, ...)``)."""
    leaves = tuple(p.reshape(p.shape[0], *s) for p, s in zip(parts, lay.shapes))
    return leaves if lay.is_tuple else leaves[0]


def step_leaves(cell: Cell, u: torch.Tensor, parts, lay: Layout):
    """``cell.step`` on flat leaves: u ``(N, P)``, parts ``L x (N, S_l)`` -> ``L x (N, S_l)``."""
    return tuple(t.reshape(t.shape[0], -1) for t in as_tuple(cell.step(u, from_leaves(parts, lay))))


def identity_columns(lay: Layout, dtype, device) -> torch.Tensor:
    """The identity in column form: ``(M, S)`` with ones where ``within[s] == m``."""
    s = torch.arange(lay.size, device=device)
    m = torch.arange(lay.width, device=device)
    return (_within(s, lay)[None, :] == m[:, None]).to(dtype)


def linearize_leaves(cell: Cell, u: torch.Tensor, prev, lay: Layout):
    """``f = step(u, h_prev)`` and its Jacobian columns, leaf by leaf (so a fused kernel writes
    each leaf where it belongs, with no concatenation): u ``(N, P)``, prev ``L x (N, S_l)`` ->
    f ``L x (N, S_l)``, cols with ``cols[l]`` ``(N, M, S_l)`` = leaf l's part of every column.

    Few tangents run as separate JVPs (what ``torch.compile`` fuses best); many (Dense, wide
    heads) as one vmapped JVP, so the step's primal part runs once. The parts of prev must not
    be views into a larger tensor (forward AD on such a view touches, or trips over, the base).

    A cell with a closed-form ``jacobian(u_t, h)`` (the cell contract, ``cells/base.py``) gives
    both in one pass instead; ``probe`` has checked it against the JVPs. For a quasi-Newton
    layout (``lay.exact`` set), the kept columns: from the cell's ``quasi_jacobian`` where it
    has one, else picked out of the exact ones."""
    if lay.exact is not None:
        if getattr(cell, "quasi_jacobian", None) is not None:
            return closed_leaves(cell, u, prev, lay, cell.quasi_jacobian)
        f, cols = linearize_leaves(cell, u, prev, lay.exact)
        return f, kept_columns(cols, lay)
    if closed_form(cell) is not None:
        return closed_leaves(cell, u, prev, lay)
    return jvp_leaves(cell, u, prev, lay)


def closed_form(cell: Cell):
    """The cell's ``jacobian`` hook, or None."""
    return getattr(cell, "jacobian", None)


def closed_leaves(cell: Cell, u: torch.Tensor, prev, lay: Layout, hook=None):
    """``linearize_leaves`` from the cell's closed-form ``jacobian`` (or ``hook``), flattened
    to leaves."""
    new, cols = (hook or cell.jacobian)(u, from_leaves(prev, lay))
    f = tuple(t.reshape(t.shape[0], -1) for t in as_tuple(new))
    return f, tuple(a.reshape(a.shape[0], lay.width, -1) for a in as_tuple(cols))


def kept_columns(cols, lay: Layout):
    """The quasi layout ``lay``'s columns out of the exact ones ``cols`` (per leaf ``(N, M_e,
    S_l)`` in ``lay.exact``'s layout) -> per leaf ``(N, M, S_l)``: the kept member m of s's
    group is member ``within_e[src[m, s]]`` of its exact group (quasi groups lie inside the
    exact ones)."""
    device = cols[0].device
    pick = lay.exact.within(device)[lay.src(device)]  # (M, S): exact column of each kept one
    out, off = [], 0
    for a in cols:
        n = a.shape[-1]
        idx = pick[:, off:off + n].expand(a.shape[0], -1, -1)  # (N, M, S_l)
        out.append(a.gather(1, idx))
        off += n
    return tuple(out)


def jvp_leaves(cell: Cell, u: torch.Tensor, prev, lay: Layout):
    """``linearize_leaves`` by JVPs of ``cell.step``, one per column."""
    fn = lambda *parts: step_leaves(cell, u, parts, lay)  # noqa: E731
    eye = identity_columns(lay, prev[0].dtype, prev[0].device).split(sizes(lay), -1)  # L x (M, S_l)
    if lay.width <= 4:
        f, cols = None, []
        for m in range(lay.width):
            tangent = tuple(e[m].expand_as(p).contiguous() for e, p in zip(eye, prev))
            f, col = torch.func.jvp(fn, tuple(prev), tangent)
            cols.append(col)
        return f, tuple(torch.stack([c[i] for c in cols], 1) for i in range(len(prev)))
    # Contiguous, laid out as prev: forward AD would otherwise copy each tangent into a tensor
    # shaped like its primal, and that copy (aten._new_zeros_with_same_feature_meta) reads a
    # concrete storage offset, which torch.compile cannot trace once N is a symbolic size.
    tangents = tuple(e[:, None, :].expand(-1, *p.shape).contiguous()
                     for e, p in zip(eye, prev))  # (M, N, S_l)

    def column(*t):
        return torch.func.jvp(fn, tuple(prev), t)

    f, cols = torch.func.vmap(column, out_dims=(None, 0))(*tangents)
    return f, tuple(c.transpose(0, 1) for c in cols)  # (M, N, S_l) -> (N, M, S_l)


def linearize(cell: Cell, u: torch.Tensor, h_prev: torch.Tensor, lay: Layout, jvp=False):
    """``f = step(u, h_prev)`` and its Jacobian columns: u ``(N, P)``, h_prev ``(N, S)`` ->
    f ``(N, S)``, A ``(N, M, S)`` with ``A[n, m, s] = d f[n, s] / d h_prev[n, src[m, s]]``
    (by JVPs even where the cell has a closed form when ``jvp``)."""
    prev = tuple(p.clone() for p in h_prev.split(sizes(lay), -1))
    f, cols = (jvp_leaves if jvp else linearize_leaves)(cell, u, prev, lay)
    return torch.cat(f, -1), torch.cat(cols, -1)


def matvec(A: torch.Tensor, v: torch.Tensor, lay: Layout) -> torch.Tensor:
    """``A v`` per row: A ``(..., M, S)`` columns, v ``(..., S)`` -> ``(..., S)``."""
    return (A * v[..., lay.src(v.device)]).sum(-2)  # v gathered (..., M, S)


# ---- the Newton engine's hot functions (run eagerly or through torch.compile) ----------------

def terms(cell: Cell, lay: Layout, u: torch.Tensor, hseg: torch.Tensor,
           alive: Optional[torch.Tensor]):
    """Linearize steps ``t0..t1-1`` at the current iterate: u ``(B, C, P)`` (a batch-major
    view), hseg ``(C+1, B, S)`` = h_{t0-1} .. h_{t1-1}, alive ``(C, B)`` or None ->
    A ``(C, B, M, S)`` columns, f ``(C, B, S)``, and the largest relative residual
    ``||f_t - h_t|| / (||h_t|| + 1e-6)`` of any state leaf (0-dim; NaN where A, f or h is not
    finite). Padded steps are the identity (f = h_prev, A = I). Compiled, this is one loop over
    memory (plus a copy per extra state leaf): f, its JVPs, the norms and the NaN check fused."""
    C, B, S = hseg.shape[0] - 1, hseg.shape[1], hseg.shape[2]
    N, split = C * B, sizes(lay)
    rows = u.transpose(0, 1).reshape(N, u.shape[-1])  # (C*B, P), time-major rows
    prev = tuple(p.clone() for p in hseg[:-1].reshape(N, S).split(split, -1))  # L x (N, S_l)
    cur = hseg[1:].reshape(N, S).split(split, -1)
    f, cols = linearize_leaves(cell, rows, prev, lay)  # L x (N, S_l), L x (N, M, S_l)
    if alive is not None:
        keep = alive.reshape(N, 1)
        eye = identity_columns(lay, hseg.dtype, hseg.device).split(split, -1)
        f = tuple(torch.where(keep, f_l, p) for f_l, p in zip(f, prev))
        cols = tuple(torch.where(keep.unsqueeze(-1), a, e) for a, e in zip(cols, eye))
    ratios, size = [], 0
    for f_l, h_l, a in zip(f, cur, cols):
        r = f_l - h_l
        ratios.append(r.abs().square().sum(-1).sqrt()  # (C*B,): abs, as a state may be complex
                      / (h_l.abs().square().sum(-1).sqrt() + 1e-6))
        size = size + a.abs().sum((-2, -1))  # inf/NaN where A is
    # Per leaf: leaves differ in scale (sLSTM's h is ~0.1 where its c and n are ~10), and a
    # residual relative to the whole state would leave a small leaf, and every gradient that
    # reads it, far less accurate than tol.
    ratio = ratios[0] if len(ratios) == 1 else torch.stack(ratios, -1).amax(-1)  # NaN wins
    ratio = torch.where(torch.isfinite(size), ratio, torch.full_like(ratio, math.nan))
    A = cols[0] if len(cols) == 1 else torch.cat(cols, -1)
    f = f[0] if len(f) == 1 else torch.cat(f, -1)
    return A.view(C, B, lay.width, S), f.view(C, B, S), ratio.amax()


def first_guess(cell: Cell, lay: Layout, u: torch.Tensor, out: torch.Tensor) -> None:
    """``out[t] = f(0, u_t)`` for every step of a chunk: u ``(B, C, P)``, out ``(C, B, S)``."""
    B, C = u.shape[:2]
    rows = u.transpose(0, 1).reshape(C * B, u.shape[-1])
    zeros = tuple(rows.new_zeros(C * B, n) for n in sizes(lay))
    flat, off = out.view(C * B, lay.size), 0
    for part in step_leaves(cell, rows, zeros, lay):
        flat[:, off:off + part.shape[1]] = part
        off += part.shape[1]


def batched_step(cell: Cell, lay: Layout, u: torch.Tensor, hbuf: torch.Tensor,
                 alive: Optional[torch.Tensor]) -> torch.Tensor:
    """``z_t = f(h_{t-1}, u_t)`` for all t at the solution: u ``(B, T, P)``, hbuf ``(T+1, B, S)``
    = h0 then the solution -> z ``(B*T, S)``, batch-major rows (differentiable in u and the
    parameters; hbuf is a constant: the gradient to h0 is the adjoint's last carry)."""
    B, T, S = u.shape[0], u.shape[1], lay.size
    prev = hbuf[:T].transpose(0, 1).reshape(B * T, S).split(sizes(lay), -1)  # batch-major rows
    z = step_leaves(cell, u.reshape(B * T, u.shape[-1]), prev, lay)
    if alive is not None:
        keep = alive.reshape(B * T, 1)
        z = tuple(torch.where(keep, z_l, p) for z_l, p in zip(z, prev))
    return z[0] if len(z) == 1 else torch.cat(z, -1)


class Step(torch.nn.Module):
    """The batched step as a module, so ``functional_call`` can swap the cell's tensors."""

    def __init__(self, cell: Cell, lay: Layout):
        super().__init__()
        self.cell, self.lay = cell, lay

    def forward(self, u, hbuf, alive):
        return batched_step(self.cell, self.lay, u, hbuf, alive)


def step_vjp(step: Step, names, u, hbuf, alive, lam, tensors):
    """The gradients of ``sum(lam * z)`` for z = the batched step at the solution: to u and the
    cell's tensors named ``names`` (lam ``(B*T, S)``); one pass that recomputes the step and
    pulls lam back (compiled, one fused loop plus the reductions for parameters)."""
    def fn(u, *tensors):
        return torch.func.functional_call(step, dict(zip(names, tensors)), (u, hbuf, alive))

    _, pull = torch.func.vjp(fn, u, *tensors)
    return pull(lam)


def state_vjp(step: Step, names, u, prev, alive, lam, tensors):
    """``J_t^T lambda_t`` for every t at the solution, the gradient of ``sum(lam * z)`` with
    respect to the previous states: prev ``(T, B, S)`` = h0 then the solution up to
    h*_{T-2}, lam ``(B*T, S)`` -> ``(T, B, S)``, with the cell's tensors named ``names`` (those
    of the forward: a layer run with ``params=`` has others than its own) (quasi-Newton's
    adjoint iterations: the exact transposed Jacobian as one batched pass, never stored)."""
    swap = dict(zip(names, tensors))
    _, pull = torch.func.vjp(lambda p: torch.func.functional_call(step, swap, (u, p, alive)),
                             prev)
    return pull(lam)[0]
