"""How the Newton engine iterates: the problem one call solves, what a solve returns, and the
iteration methods, as small objects in the manner of diffrax's solvers.

A method is an object with ``iterate(problem, cur, nxt, tol, stats) -> SolveResult``:

- ``NewtonSteps(damping=1.0)``: Newton's steps (ParaRNN / DEER), relaxed by ``damping`` w in
  (0, 1]: ``h <- h + w (h_newton - h)``;
- ``elk.ELK(sigma2=100.0, quasi=False)``: Levenberg-Marquardt steps by a Kalman smoother
  (ELK), for cells where plain Newton blows up.

``Newton(method=...)`` takes one; ``Newton(damping=...)`` remains the shorthand (a float,
``"elk"`` or ``"quasi-elk"``). A method holds settings only: what one call measures goes into
that call's ``stats`` dict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from ..cells.base import Cell
from ..checks import check_number
from ..ops.block import column_scan_
from .adjoint import Buffers
from .linearize import Layout


@dataclass
class Problem:
    """One call's solve, the same for every method."""
    cell: Cell
    u: torch.Tensor  # (B, T, P): the projected inputs, detached
    alive: Optional[torch.Tensor]  # (B, T) bool prefix mask, or None (every step valid)
    lay: Layout  # the Jacobian part the iteration uses
    terms: Callable  # (cell, lay, u_chunk, h_chunk, alive_chunk) -> (A, f, residual)
    bounds: List[Tuple[int, int]]  # chunks of time, (t0, t1)
    max_iters: int
    buffers: Buffers  # the engine's pool of full-length buffers

    def alive_tm(self, t0: int, t1: int) -> Optional[torch.Tensor]:
        """The alive mask of steps ``[t0, t1)``, time-major ``(t1 - t0, B)``, or None."""
        return None if self.alive is None else self.alive[:, t0:t1].t()


@dataclass
class SolveResult:
    """What a solve gives back: the iterate ``hbuf (T+1, B, S)`` (h0, then every h_t), the
    Jacobian columns and f of its last linearization, one entry per chunk of time (so they are
    at the solution when it converged), its largest relative residual, and why it failed (None
    when it converged)."""
    hbuf: torch.Tensor
    A: List[torch.Tensor]
    f: List[torch.Tensor]
    residual: float
    failure: Optional[str] = None


@dataclass(frozen=True)
class NewtonSteps:
    """Newton's steps, relaxed by ``damping`` w in (0, 1] (1: plain Newton):
    ``delta_t = A_t delta_{t-1} + (f_t - h_t)``, ``h <- h + w delta``."""
    damping: float = 1.0

    def __post_init__(self):
        check_number("NewtonSteps", "damping", self.damping, 0, 1, low_open=True)

    def iterate(self, p: Problem, cur: torch.Tensor, nxt: torch.Tensor, tol: float,
                stats: dict) -> SolveResult:
        """Newton passes over chunks of time. A pass linearizes chunk after chunk at the
        iterate in ``cur``; the residual of ``cur`` is known once the pass ends: converged,
        ``cur`` is the solution (its Jacobians and f are the ones just computed), else the
        update is swept into ``nxt`` and the buffers swap. Far from convergence each chunk's
        sweep runs right after its linearization (the chunk still in cache); once the last
        residual is below sqrt(tol) the pass is likely the final one, and the sweeps wait for
        its residual (run only if it is not). ``nxt`` goes back to the buffer pool."""
        B, start = p.u.shape[0], cur[0]
        A, f = [None] * len(p.bounds), [None] * len(p.bounds)  # per chunk, replaced every pass
        src = p.lay.src(p.u.device)
        history: List[float] = []

        def sweep(c, delta):  # the update of chunk c, from cur into nxt
            t0, t1 = p.bounds[c]
            column_scan_(nxt[t0 + 1:t1 + 1], A[c], f[c], src, delta, base=cur[t0 + 1:t1 + 1],
                         scale=self.damping)

        for it in range(p.max_iters + 1):
            delta = start.new_zeros(B, p.lay.size)  # the update at t0-1, carried across chunks
            eager = it < p.max_iters and not (history and history[-1] <= tol ** 0.5)
            res = []
            for c, (t0, t1) in enumerate(p.bounds):
                A[c], f[c], r = p.terms(p.cell, p.lay, p.u[:, t0:t1], cur[t0:t1 + 1],
                                        p.alive_tm(t0, t1))
                res.append(r)
                if eager:
                    sweep(c, delta)
            r = float(torch.stack(res).amax()) if len(res) > 1 else float(res[0])  # NaN wins
            history.append(r)
            stats.update(iterations=it, residual=r, converged=r <= tol, history=history)
            if not math.isfinite(r) or r <= tol or it == p.max_iters:
                break
            if not eager:
                for c in range(len(p.bounds)):
                    sweep(c, delta)
            cur, nxt = nxt, cur
        p.buffers.give(nxt)
        return SolveResult(cur, A, f, r)
