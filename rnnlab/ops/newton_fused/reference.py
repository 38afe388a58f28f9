"""The fused Newton sweep in plain torch: the reference the Triton kernels are tested against,
and the path every device without them takes.

A sweep is one Newton iteration of the Newton engine (``engines/newton.py``) for a cell whose
step Jacobian is diagonal (or 2 x 2 per channel, ``paralstm``; then products below are the
blocks'): at the iterate ``cur`` (h_1..h_T, h_0 given) it computes

    f_t = step(u_t, cur_{t-1}),  A_t = d f_t / d h_{t-1}  (diagonal),
    ratio_t = ||f_t - cur_t|| / (||cur_t|| + 1e-6)         (per sequence, over features),
    delta_t = A_t delta_{t-1} + (f_t - cur_t),  delta_0 = 0,
    nxt_t   = cur_t + w delta_t

with padded steps (``t >= lengths[b]``) the identity (f_t = cur_{t-1}, A_t = 1). ``solve_loop``
iterates sweeps with the engine's rule (stop when ``max ratio <= tol``, at NaN, or after
``max_iters`` updates); the output is z_t = f_t of the last sweep, i.e. the step at the solution.
The adjoint (``adjoint_reference``) is the engine's: ``lam_t = g_t + A_{t+1} lam_{t+1}``, then
the VJP of the step at the solution to u and the parameters; ``A_0 lam_0`` is the gradient to h0.

Cells (``CELLS``: name -> (gates G in u, parameter rows P, state leaves L)), all with u
``(B, T, G*H)`` gate-major, states ``(B, T, S)`` with S = L*H (leaves concatenated)
and the recurrent parameters ``(P, H)`` as the step uses them (clamped already):

- ``paragru``: u = [u_z, u_r, u_h], params = [a_z, a_r, a_h] (``cells/paragru.py``);
- ``indrnn_relu`` / ``indrnn_tanh``: u = W x + b, params = [w] (``cells/indrnn.py``);
- ``paralstm`` (``Block(2)``: the state is [h, c], ``(B, 2H)``, and A a 2 x 2 block per channel,
  kept as 2 columns; the adjoint uses A^T): u = [u_f, u_c, u_o], params = [a_f, a_c, a_o, C_f,
  C_o] (``cells/paralstm.py``).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

CELLS = {"paragru": (3, 3, 1), "indrnn_relu": (1, 1, 1), "indrnn_tanh": (1, 1, 1),
         "paralstm": (3, 5, 2)}  # name -> (gates G, parameter rows P, state leaves L)


def cell_step(cell: str, u: torch.Tensor, h: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The cell's step ``f(h, u)``: u ``(..., G*H)``, h ``(..., L*H)`` (leaves concatenated),
    params ``(P, H)``."""
    if cell == "paralstm":
        return _paralstm(u, h, params)
    if cell == "paragru":
        a_z, a_r, a_h = params
        u_z, u_r, u_h = u.chunk(3, dim=-1)
        z = torch.sigmoid(a_z * h + u_z)
        r = torch.sigmoid(a_r * h + u_r)
        return h + z * (torch.tanh(a_h * (h * r) + u_h) - h)
    pre = u + params[0] * h
    return torch.relu(pre) if cell == "indrnn_relu" else torch.tanh(pre)


def _paralstm(u, state, params):
    """ParaLSTM's step (``cells/paralstm.py``) on the flat state [h, c]; params = [a_f, a_c,
    a_o, C_f, C_o]."""
    h, c = state.chunk(2, dim=-1)
    a_f, a_c, a_o, C_f, C_o = params
    u_f, u_c, u_o = u.chunk(3, dim=-1)
    f = torch.sigmoid(a_f * h + C_f * c + u_f)
    c_tilde = torch.tanh(a_c * h + u_c)
    c_new = c_tilde + f * (c - c_tilde)
    o = torch.sigmoid(a_o * h + C_o * c_new + u_o)
    return torch.cat([o * torch.tanh(c_new), c_new], -1)


def linearize(cell: str, u, h, params) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """f and its Jacobian as L columns: column k ``(..., L*H)`` = d f / d (leaf k), channel by
    channel, by one JVP per leaf with a tangent of ones on it (the cell mixes only the L leaves
    of one channel, so these JVPs are the whole Jacobian)."""
    L = CELLS[cell][2]
    leaves = torch.eye(L, dtype=h.dtype, device=h.device).repeat_interleave(h.shape[-1] // L, 1)
    cols = []
    for k in range(L):
        tangent = leaves[k].expand_as(h)
        f, col = torch.func.jvp(lambda v: cell_step(cell, u, v, params), (h,), (tangent,))
        cols.append(col)
    return f, tuple(cols)


def matvec(cols, v: torch.Tensor) -> torch.Tensor:
    """``A v`` for A as columns (``linearize``): ``sum_k col_k * (v's leaf k on every leaf)``."""
    L = len(cols)
    return sum(col * leaf.repeat(*([1] * (v.dim() - 1)), L)
               for col, leaf in zip(cols, v.chunk(L, -1)))


def rmatvec(cols, lam: torch.Tensor) -> torch.Tensor:
    """``A^T lam``: leaf k = sum over the output leaves of ``col_k * lam``."""
    L = len(cols)
    return torch.cat([(col * lam).unflatten(-1, (L, -1)).sum(-2) for col in cols], -1)


def _identity(cols, alive):
    """Columns with padded steps the identity."""
    L = len(cols)
    H = cols[0].shape[-1] // L
    eye = torch.eye(L, dtype=cols[0].dtype, device=cols[0].device).repeat_interleave(H, 1)
    return tuple(torch.where(alive, c, e) for c, e in zip(cols, eye))


def _previous(h0: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """h_{t-1} for every t: h0 then states[:, :-1] -> ``(B, T, S)``."""
    return torch.cat([h0[:, None], states[:, :-1]], 1)


def _alive(lengths: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    """``(B, T, 1)`` bool: step t of sequence b is real (not padding)."""
    n = torch.full((B,), T, device=device) if lengths is None else lengths.to(device)
    return (torch.arange(T, device=device)[None, :] < n[:, None])[..., None]


def first_guess(cell: str, u: torch.Tensor, params: torch.Tensor, init: str) -> torch.Tensor:
    """The initial iterate: ``f(0, u_t)`` at every t (``"step"``, ParaRNN's) or zeros."""
    S = params.shape[-1] * CELLS[cell][2]
    zeros = u.new_zeros(*u.shape[:-1], S)
    return zeros if init == "zeros" else cell_step(cell, u, zeros, params)


def sweep_reference(cell: str, u, h0, cur, params, lengths, damping: float):
    """One Newton iteration at the iterate ``cur (B, T, S)`` -> nxt ``(B, T, S)``, f
    ``(B, T, S)``, ratio ``(B, T)``: the largest over the state leaves (NaN where A is not
    finite)."""
    B, T, S = cur.shape
    L = CELLS[cell][2]
    prev = _previous(h0, cur)
    f, cols = linearize(cell, u, prev, params)
    alive = _alive(lengths, B, T, u.device)
    f, cols = torch.where(alive, f, prev), _identity(cols, alive)
    res = f - cur
    per_leaf = (res.unflatten(-1, (L, -1)).norm(dim=-1)
                / (cur.unflatten(-1, (L, -1)).norm(dim=-1) + 1e-6))  # (B, T, L)
    finite = torch.stack([torch.isfinite(c).all(-1) for c in cols]).all(0)
    ratio = torch.where(finite, per_leaf.amax(-1), torch.full_like(per_leaf[..., 0], math.nan))
    delta, nxt = h0.new_zeros(B, S), torch.empty_like(cur)
    for t in range(T):
        delta = matvec([c[:, t] for c in cols], delta) + res[:, t]
        nxt[:, t] = cur[:, t] + damping * delta
    return nxt, f, ratio


def solve_loop(sweep: Callable, cur: Optional[torch.Tensor], max_iters: int, tol: float):
    """Iterate ``sweep(cur) -> (nxt, f, ratio, cur)`` by the engine's rule, from ``cur`` (None:
    the sweep makes the initial guess and returns it as its cur) -> (cur, f, history): the
    last linearized iterate, its f, and the largest ratio of every sweep (NaN stops it)."""
    history: List[float] = []
    for it in range(max_iters + 1):
        nxt, f, ratio, cur = sweep(cur)
        r = float(ratio.amax()) if ratio.numel() else 0.0  # amax propagates NaN
        history.append(r)
        if not math.isfinite(r) or r <= tol or it == max_iters:
            return cur, f, history
        cur = nxt


def solve_reference(cell: str, u, h0, params, lengths=None, tol: float = 1e-5,
                    max_iters: int = 50, damping: float = 1.0, init: str = "step"):
    """Newton to ``tol`` without gradients -> z ``(B, T, S)`` (f at the solution), the solution
    iterate ``(B, T, S)``, history (the largest ratio per sweep)."""
    u, h0, params = u.detach(), h0.detach(), params.detach()

    def sweep(cur):
        return (*sweep_reference(cell, u, h0, cur, params, lengths, damping), cur)

    with torch.no_grad():
        hsol, z, history = solve_loop(sweep, first_guess(cell, u, params, init), max_iters, tol)
    return z, hsol, history


def adjoint_reference(cell: str, u, h0, hsol, params, lengths, g):
    """The backward of z = the step at the solution ``hsol``: g = dL/dz ``(B, T, S)`` ->
    du ``(B, T, G*H)``, dh0 ``(B, S)``, dparams ``(P, H)`` (exact BPTT at the fixed point)."""
    B, T, S = hsol.shape
    prev = _previous(h0, hsol).detach()
    alive = _alive(lengths, B, T, u.device)
    with torch.no_grad():
        cols = _identity(linearize(cell, u, prev, params)[1], alive)
    lam, q = torch.empty_like(g), g.new_zeros(B, S)
    for t in range(T - 1, -1, -1):  # lam_t = g_t + A_{t+1}^T lam_{t+1}; q carries A_t^T lam_t
        lam[:, t] = g[:, t] + q
        q = rmatvec([c[:, t] for c in cols], lam[:, t])
    with torch.enable_grad():
        u_, p_ = u.detach().requires_grad_(), params.detach().requires_grad_()
        f = torch.where(alive, cell_step(cell, u_, prev, p_), prev)
        du, dp = torch.autograd.grad(f, (u_, p_), lam)
    return du, q, dp
