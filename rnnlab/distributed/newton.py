"""Newton's method (ParaRNN / DEER) on a sequence split over time across ranks.

Every iteration linearizes the step on each rank's chunk at the current iterate (the chunk's
first step reads the previous rank's last state: one ``all_gather`` of ``(B, S)``), then solves
the linear recurrence of the update ``delta_t = J_t delta_{t-1} + (f_t - h_t)`` with the carry
exchange of ``carry.scan_chunk``; the largest residual is all-reduced, so every rank stops at
the same iteration. Plain Newton steps with the engine's ``tol`` and ``max_iters`` (no damping,
ELK or quasi-Newton: those iterate differently but reach the same solution).

Backward (``_Adjoint``): the adjoint ``lambda_t = g_t + J_{t+1}^T lambda_{t+1}`` is the same
kind of linear recurrence run backwards in time, split the same way with the chunks in
reverse rank order; then autograd pulls lambda through one batched step at the solution
``z_t = f(h*_{t-1}, u_t)`` to the inputs, the parameters and (on rank 0) the initial state.

Jacobians in the engine's column layout (``engines/linearize.py``): ``Diagonal`` runs the
elementwise scan, every other layout (``Block``, ``Heads``, ``Dense``) the matrix scan on its
groups' ``M x M`` blocks.
"""
from __future__ import annotations

import math

import torch

from ..engines.linearize import Layout, from_leaves, linearize, sizes, step_leaves
from ..errors import ConvergenceError
from .carry import gather, place, scan_chunk

DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # as the Newton engine's


def _grouped(lay: Layout, A: torch.Tensor):
    """Jacobian columns ``A (B, T, M, S)`` -> (kind, transitions): Diagonal ``(B, T, S)``,
    else per group ``(B, T, G, M, M)`` with ``[.., g, i, j] = d f_{p_i} / d h_{p_j}``."""
    if lay.width == 1:
        return "diagonal", A[:, :, 0]
    members = lay.members(A.device)  # (G, M)
    return "matrix", A[..., members].permute(0, 1, 3, 4, 2)  # (B, T, M_j, G, M_i) -> (.., i, j)


def _to_groups(lay: Layout, v: torch.Tensor) -> torch.Tensor:
    """A state ``(..., S)`` in the layout of ``_grouped``: ``(..., S)`` or ``(..., G, M)``."""
    return v if lay.width == 1 else v[..., lay.members(v.device)]


def _from_groups(lay: Layout, v: torch.Tensor) -> torch.Tensor:
    if lay.width == 1:
        return v
    out = v.new_empty(*v.shape[:-2], lay.size)
    out[..., lay.members(v.device)] = v
    return out


def _solve(lay: Layout, J: torch.Tensor, r: torch.Tensor, group) -> torch.Tensor:
    """``delta_t = J_t delta_{t-1} + r_t`` over the split sequence from delta = 0: J columns
    ``(B, T_r, M, S)``, r ``(B, T_r, S)`` -> ``(B, T_r, S)``."""
    kind, A = _grouped(lay, J)
    b = _to_groups(lay, r)
    zero = b.new_zeros(b.shape[:1] + b.shape[2:])
    return _from_groups(lay, scan_chunk(kind, A, b, zero, group)[0])


def _left(cur: torch.Tensor, start: torch.Tensor, group) -> torch.Tensor:
    """The state before this rank's first step: h0 on rank 0, else the previous rank's last."""
    rank, _ = place(group)
    lasts = gather(cur[:, -1].contiguous(), group)
    return start if rank == 0 else lasts[rank - 1]


def _step_all(cell, lay: Layout, u: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``f(prev_t, u_t)`` for every step: u ``(B, T, P)``, prev ``(B, T, S)`` -> ``(B, T, S)``."""
    B, T = u.shape[:2]
    parts = prev.reshape(B * T, -1).split(sizes(lay), -1)  # L x (B*T, S_l)
    out = step_leaves(cell, u.reshape(B * T, -1), parts, lay)
    return torch.cat(out, -1).view(B, T, -1)  # (B*T, S) -> (B, T, S)


def _residual(lay: Layout, f: torch.Tensor, h: torch.Tensor, group) -> float:
    """The largest ``||f_t - h_t|| / (||h_t|| + 1e-6)`` of any state leaf on any rank."""
    worst = f.new_zeros(())
    for f_l, h_l in zip(f.split(sizes(lay), -1), h.split(sizes(lay), -1)):
        ratio = (f_l - h_l).norm(dim=-1) / (h_l.norm(dim=-1) + 1e-6)
        worst = torch.maximum(worst, ratio.amax())
    worst = torch.nan_to_num(worst, nan=math.inf)  # NaN must win the MAX on every backend
    torch.distributed.all_reduce(worst, op=torch.distributed.ReduceOp.MAX, group=group)
    return float(worst)


def solve(cell, lay: Layout, u: torch.Tensor, start: torch.Tensor, tol, max_iters: int,
          group, stats: dict):
    """Newton on this rank's chunk (no graph): u ``(B, T_r, P)``, start ``(B, S)`` -> the
    solution ``(B, T_r, S)`` and the Jacobian columns there ``(B, T_r, M, S)``."""
    B, T = u.shape[:2]
    tol = tol or DEFAULT_TOL.get(start.dtype, 1e-5)
    cur = _step_all(cell, lay, u, start.new_zeros(B, T, lay.size))  # guess f(0, u_t)
    history = []
    for it in range(max_iters + 1):
        prev = torch.cat((_left(cur, start, group).unsqueeze(1), cur[:, :-1]), 1)  # (B, T, S)
        f, J = linearize(cell, u.reshape(B * T, -1), prev.reshape(B * T, -1), lay)
        f, J = f.view(B, T, -1), J.view(B, T, lay.width, lay.size)
        history.append(_residual(lay, f, cur, group))
        stats.update(iterations=it, residual=history[-1], history=history)
        if history[-1] <= tol:
            return cur, J
        if not math.isfinite(history[-1]) or it == max_iters:
            break
        cur = cur + _solve(lay, J, f - cur, group)
    why = "NaN or inf in the iterates" if not math.isfinite(history[-1]) else \
        f"no convergence to tol={tol:g} within {max_iters} iterations"
    raise ConvergenceError(f"sequence_parallel: Newton on {type(cell).__name__}: {why}", history)


class _Adjoint(torch.autograd.Function):
    """z ``(B, T_r, S)`` (the steps at the solution) -> (z, the final state ``(B, S)`` on every
    rank); backward: dL/dz -> the adjoint lambda, by the reverse split scan."""

    @staticmethod
    def forward(ctx, z, J, lay, group):
        rank, world = place(group)
        last = z[:, -1].contiguous() if rank == world - 1 else torch.zeros_like(z[:, -1])
        torch.distributed.broadcast(last, world - 1, group=group)
        ctx.save_for_backward(J)
        ctx.lay, ctx.group = lay, group
        return z.clone(), last

    @staticmethod
    def backward(ctx, g, g_T):
        (J,), lay, group = ctx.saved_tensors, ctx.lay, ctx.group
        rank, world = place(group)
        g = torch.zeros(J.shape[:2] + J.shape[3:], dtype=J.dtype) if g is None else g.clone()
        g_T = torch.zeros_like(g[:, -1]) if g_T is None else g_T.contiguous().clone()
        torch.distributed.all_reduce(g_T, group=group)  # every rank's use of the final state
        if rank == world - 1:
            g[:, -1] += g_T
        # Reversed in time, lambda_t = J_{t+1}^T lambda_{t+1} + g_t is a forward recurrence;
        # the carry entering a chunk is J_0'^T lambda_0' of the next rank's chunk, so the
        # reversed chunk starts with an identity step and ends with J_0^T on a zero input.
        kind, A = _grouped(lay, J)
        A = A if kind == "diagonal" else A.transpose(-1, -2)
        first = torch.ones_like(A[:, :1]) if kind == "diagonal" else \
            torch.eye(A.shape[-1], dtype=A.dtype).expand_as(A[:, :1])
        A_rev = torch.cat((first, A.flip(1)), 1)  # (B, T_r + 1, ...)
        b = _to_groups(lay, g)
        b_rev = torch.cat((b.flip(1), torch.zeros_like(b[:, :1])), 1)  # (B, T_r + 1, ...)
        lam, _ = scan_chunk(kind, A_rev, b_rev, torch.zeros_like(b[:, 0]), group, reverse=True)
        return _from_groups(lay, lam[:, :-1].flip(1)), None, None, None


def newton_chunk(cell, lay: Layout, x: torch.Tensor, start: torch.Tensor, tol, max_iters: int,
                 group, stats: dict):
    """This rank's outputs ``y (B, T_r, H_out)`` and the final state (flat ``(B, S)``)."""
    u = cell.project(x)  # (B, T_r, D) -> (B, T_r, P)
    with torch.no_grad():
        h, J = solve(cell, lay, u.detach(), start.detach(), tol, max_iters, group, stats)
        left = _left(h, start, group)
    rank, _ = place(group)
    left = start if rank == 0 else left  # rank 0's first step reads h0 with its graph
    prev = torch.cat((left.unsqueeze(1), h[:, :-1]), 1)  # (B, T_r, S)
    z, last = _Adjoint.apply(_step_all(cell, lay, u, prev), J, lay, group)
    B, T = u.shape[:2]
    parts = z.reshape(B * T, -1).split(sizes(lay), -1)  # L x (B*T, S_l)
    y = cell.readout(from_leaves(parts, lay), u.reshape(B * T, -1))
    return y.unflatten(0, (B, T)), last  # (B*T, H_out) -> (B, T, H_out)
