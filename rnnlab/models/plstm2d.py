"""2-D pLSTM (Pöppel et al. 2025, https://arxiv.org/abs/2506.11997) on a grid.

Each cell (i, j) of an X x Y grid has in-edges from the left (i, j-1) and from above (i-1, j) and
out-edges to the right and below; each edge holds a ``(K, V)`` state per head:

    C^r_ij = T_rl C^r_i,j-1 + T_ru C^d_i-1,j + S_r k v^T         (out-edge to the right)
    C^d_ij = T_dl C^r_i,j-1 + T_du C^d_i-1,j + S_d k v^T         (out-edge downwards)
    y_ij   = q^T (M_l C^r_i,j-1 + M_u C^d_i-1,j) + D (q . k) v

The node-to-node gate sums over every monotone path, so the transitions are constrained:

- ``P`` (directed propagation): per in-edge, sum |T| over its out-edges <= 1:
  T_rl = T_ru = g o, T_dl = T_du = g (1 - o), g, o in (0, 1).
- ``D`` (diffusive): the line graph is pruned to a multitree (one turn chirality: a path may
  turn from going right to going down, never back), T_ru = 0, each other |T| <= 1.

The four flips of the grid (so that information reaches a cell from every quadrant) run with
their own gates and their outputs are averaged.

Three exact forms of one orientation: ``plstm2d_loop`` walks the cells in raster order (the
reference); ``plstm2d_wavefront`` updates a whole anti-diagonal i + j = s at once (X + Y - 1
sequential steps instead of X Y; the cells on one anti-diagonal do not depend on each other);
``plstm2d_doubling`` builds the node-to-node gate matrix by repeated squaring of the edge
transitions (log2(X + Y) steps, the paper's log-depth parallelism in a dense form) and applies
it like attention.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_int

GATES = ("s_r", "s_d", "m_l", "m_u", "d", "t_rl", "t_ru", "t_dl", "t_du")
RAW = 8  # pre-activations per head: s_r, s_d, m_l, m_u, d, and three for the transitions
MODES = ("P", "D")
FLIPS = ((), (2,), (1,), (1, 2))  # the four orientations of a (B, X, Y, ...) grid


def gates_from(raw: torch.Tensor, mode: str) -> dict:
    """The gates ``(B, X, Y, n)`` from pre-activations ``raw: (B, X, Y, n, RAW)`` in P- or
    D-mode (see the module docstring for the constraints)."""
    check_choice("gates_from", "mode", mode, MODES)
    s_r, s_d, m_l, m_u, d, a, b, c = torch.sigmoid(raw).unbind(-1)
    g = dict(s_r=s_r, s_d=s_d, m_l=m_l, m_u=m_u, d=d)
    if mode == "P":
        g.update(t_rl=a * b, t_ru=a * b, t_dl=a * (1 - b), t_du=a * (1 - b))
    else:
        g.update(t_rl=a, t_ru=torch.zeros_like(a), t_dl=c, t_du=b)
    return g


def _node(q, k, v, g, left, up):
    """One node (or a batch of nodes): new right/down out-edges and the output. Gates
    ``(..., n)``, q/k ``(..., n, K)``, v ``(..., n, V)``, edges ``(..., n, K, V)``."""
    def e(name):
        return g[name][..., None, None]  # (..., n) -> (..., n, 1, 1)

    kv = k.unsqueeze(-1) * v.unsqueeze(-2)  # (..., n, K, V)
    right = e("t_rl") * left + e("t_ru") * up + e("s_r") * kv
    down = e("t_dl") * left + e("t_du") * up + e("s_d") * kv
    seen = e("m_l") * left + e("m_u") * up
    y = torch.einsum("...k,...kv->...v", q, seen)
    y = y + g["d"].unsqueeze(-1) * (q * k).sum(-1, keepdim=True) * v
    return right, down, y


def plstm2d_loop(q, k, v, g):
    """Reference: raster order, one cell at a time. q, k ``(B, X, Y, n, K)``, v ``(B, X, Y, n,
    V)``, gates ``(B, X, Y, n)`` -> y ``(B, X, Y, n, V)``."""
    B, X, Y, n, K = q.shape
    zero = q.new_zeros(B, n, K, v.shape[-1])
    right, down, rows = {}, {}, []
    for i in range(X):
        row = []
        for j in range(Y):
            at = {name: t[:, i, j] for name, t in g.items()}
            r, d, y = _node(q[:, i, j], k[:, i, j], v[:, i, j], at,
                            right.get((i, j - 1), zero), down.get((i - 1, j), zero))
            right[i, j], down[i, j] = r, d
            row.append(y)
        rows.append(torch.stack(row, 1))  # (B, Y, n, V)
    return torch.stack(rows, 1)  # (B, X, Y, n, V)


def _skew(t: torch.Tensor, X: int, Y: int) -> torch.Tensor:
    """(B, X, Y, ...) -> (B, X, X + Y - 1, ...): entry (i, s) holds cell (i, s - i), zero where
    s - i is off the grid (a zero gate: such a cell writes nothing)."""
    i = torch.arange(X, device=t.device)[:, None]
    j = torch.arange(X + Y - 1, device=t.device)[None, :] - i  # (X, S)
    valid = (j >= 0) & (j < Y)
    out = t[:, i, j.clamp(0, Y - 1)]  # (B, X, S, ...)
    return out * valid.view(1, X, -1, *([1] * (t.dim() - 3))).to(t.dtype)


def plstm2d_wavefront(q, k, v, g):
    """The same as ``plstm2d_loop``, one anti-diagonal at a time (exact)."""
    B, X, Y, n, K = q.shape
    q, k, v = (_skew(t, X, Y) for t in (q, k, v))
    g = {name: _skew(t, X, Y) for name, t in g.items()}  # invalid cells get zero gates
    right = q.new_zeros(B, X, n, K, v.shape[-1])  # out-edge of cell (i, s - 1 - i), per row i
    down = torch.zeros_like(right)
    ys = []
    for s in range(X + Y - 1):
        up = F.pad(down, (0, 0, 0, 0, 0, 0, 1, 0))[:, :X]  # row i reads row i - 1
        at = {name: t[:, :, s] for name, t in g.items()}
        right, down, y = _node(q[:, :, s], k[:, :, s], v[:, :, s], at, right, up)
        ys.append(y)
    skewed = torch.stack(ys, 2)  # (B, X, S, n, V)
    i = torch.arange(X, device=q.device)[:, None]
    return skewed[:, i, i + torch.arange(Y, device=q.device)[None, :]]  # (B, X, Y, n, V)


def _gate_matrix(g, X: int, Y: int) -> torch.Tensor:
    """The node-to-node gates ``G: (B, n, XY, XY)``, G[t, s] = the sum over every monotone path
    s -> t of M T...T S (plus D on the diagonal), in log-depth.

    The edge states are ``e = L e + S kv`` with L the edge-to-edge transitions (2XY x 2XY; edge
    p is node p's right out-edge, XY + p its down out-edge). L is nilpotent (a path has at most
    X + Y - 2 turns), so ``(I - L)^-1 = (I + L)(I + L^2)(I + L^4)...``: ceil(log2(X + Y))
    doublings, each two matrix products."""
    N = X * Y
    gate = {name: t.flatten(1, 2).movedim(1, -1) for name, t in g.items()}  # (B, n, N)
    B, n = gate["d"].shape[:2]
    p = torch.arange(N, device=gate["d"].device)
    has_left, has_up = p % Y > 0, p >= Y
    tl, tu = p[has_left], p[has_up]  # nodes with a left / an upper neighbour
    L = gate["d"].new_zeros(B, n, 2 * N, 2 * N)
    L[..., tl, tl - 1] = gate["t_rl"][..., tl]  # right out-edge <- left in-edge
    L[..., tu, N + tu - Y] = gate["t_ru"][..., tu]  # right out-edge <- upper in-edge
    L[..., N + tl, tl - 1] = gate["t_dl"][..., tl]
    L[..., N + tu, N + tu - Y] = gate["t_du"][..., tu]
    E = torch.cat([torch.diag_embed(gate["s_r"]), torch.diag_embed(gate["s_d"])], -2)  # (B,n,2N,N)
    for level in range(max(1, math.ceil(math.log2(X + Y)))):
        E = E + L @ E  # E <- (I + L^(2^level)) E
        if 2 ** (level + 1) < X + Y:
            L = L @ L
    read = gate["d"].new_zeros(B, n, N, 2 * N)  # the marks: node t reads its two in-edges
    read[..., tl, tl - 1] = gate["m_l"][..., tl]
    read[..., tu, N + tu - Y] = gate["m_u"][..., tu]
    return read @ E + torch.diag_embed(gate["d"])  # (B, n, N, N)


def plstm2d_doubling(q, k, v, g):
    """The same as ``plstm2d_loop`` in O(log(X + Y)) dependent steps: the gate matrix G
    (``_gate_matrix``), then ``y_t = sum_s G[t, s] (q_t . k_s) v_s`` as in attention. Costs
    O((XY)^3) per head: the form for small grids on wide hardware."""
    B, X, Y, n, K = q.shape
    G = _gate_matrix(g, X, Y)  # (B, n, XY, XY)
    q, k, v = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))  # (B, n, XY, .)
    y = (G * (q @ k.transpose(-1, -2))) @ v  # (B, n, XY, V)
    return y.transpose(1, 2).unflatten(1, (X, Y))  # (B, X, Y, n, V)


FORMS = {"loop": plstm2d_loop, "wavefront": plstm2d_wavefront, "doubling": plstm2d_doubling}


class PLSTM2D(nn.Module):
    """A 2-D pLSTM layer: ``(B, X, Y, dim) -> (B, X, Y, dim)``; q, k, v shared by the four
    orientations, gates per orientation.

    >>> import torch
    >>> layer = PLSTM2D(8, heads=2, mode="P")
    >>> layer(torch.randn(2, 5, 7, 8)).shape
    torch.Size([2, 5, 7, 8])
    """

    def __init__(self, dim: int, heads: int = 1, key_dim: int | None = None, mode: str = "P",
                 form: str = "wavefront"):
        super().__init__()
        check_int("PLSTM2D", "dim", dim, 1)
        check_int("PLSTM2D", "heads", heads, 1)
        if dim % heads:
            raise ValueError(f"PLSTM2D: heads must divide dim={dim}, got {heads!r}")
        check_choice("PLSTM2D", "mode", mode, MODES)
        check_choice("PLSTM2D", "form", form, tuple(FORMS))
        self.mode, self.form = mode, form
        self.heads, self.value_dim = heads, dim // heads
        self.key_dim = key_dim or self.value_dim
        nk = heads * self.key_dim
        self.qkv = nn.Linear(dim, 2 * nk + dim)
        self.gates = nn.Linear(dim, len(FLIPS) * heads * RAW)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nk, n = self.heads * self.key_dim, self.heads
        q, k, v = self.qkv(x).split([nk, nk, x.shape[-1]], dim=-1)
        q, k, v = (t.unflatten(-1, (n, -1)) for t in (q, k, v))  # (B, X, Y, n, .)
        q = q * self.key_dim ** -0.5
        raw = self.gates(x).unflatten(-1, (len(FLIPS), n, RAW))  # (B, X, Y, 4, n, RAW)
        # the four orientations ride in the batch: one sweep instead of four
        q, k, v = (torch.cat([t.flip(d) for d in FLIPS]) for t in (q, k, v))  # (4B, X, Y, ...)
        raw = torch.cat([raw[..., o, :, :].flip(d) for o, d in enumerate(FLIPS)])
        y = FORMS[self.form](q, k, v, gates_from(raw, self.mode)).chunk(len(FLIPS))
        total = sum(part.flip(d) for part, d in zip(y, FLIPS))
        return self.out((total / len(FLIPS)).flatten(-2))  # (B, X, Y, n, V) -> (B, X, Y, dim)
