"""The Newton engine: nonlinear cells in parallel over time (ParaRNN / DEER).

All equations ``h_t = f(h_{t-1}, u_t)`` are solved at once. Each iteration linearizes f at the
current guess with the structured Jacobians of ``linearize.py`` and solves the linear recurrence

    h_t = A_t h_{t-1} + (f_t - A_t h^k_{t-1})

with the scan ops (``linear_scan`` for 1x1 groups, ``matrix_scan`` for M x M blocks). It stops
when ``max_t ||h_t - f(h_{t-1}, u_t)|| / (||h_t|| + eps) <= tol``; NaN/inf or no convergence in
``max_iters`` raise ``ConvergenceError`` (or fall back to the sequential engine when asked).

Backward never goes through the iterations: one batched step ``z = f(h*_{t-1}, u_t)`` carries
the graph to inputs and parameters, and the gradient arriving at z is mapped to the adjoint
``lambda_t = g_t + A_{t+1}^T lambda_{t+1}`` by one reverse scan with the Jacobians at the
solution (the implicit-function theorem; exact BPTT at the fixed point).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Optional, Tuple

import torch

from ..cells.base import Block, Cell, Dense, Diagonal, Heads, State, as_tuple
from ..errors import ConvergenceError
from ..ops import linear_scan
from ..ops.block import block_scan
from .base import Engine
from .linearize import Layout, block_matvec, flatten, layout, linearize, probe, unflatten
from .sequential import Sequential

DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
CHUNK_ELEMS = 2 ** 21  # state numbers per linearization chunk (8 MB in fp32)


def solve_blocks(A: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """``h_t = A_t h_{t-1} + b_t``: A ``(B, T, G, M, M)``, b ``(B, T, G, M)``, h0 ``(B, G, M)``."""
    if A.shape[-1] == 1:
        return linear_scan(A[..., 0], b, initial_state=h0)[0]
    return block_scan(A, b, h0)


def _step_all(cell, u, h_prev, lay: Layout) -> torch.Tensor:
    """``f(h_prev_t, u_t)`` for all t in one batched step:
    u (B, T, P), h_prev (B, T, G, M) -> (B, T, G, M)."""
    B, T = u.shape[:2]
    h = cell.step(u.flatten(0, 1), unflatten(h_prev.flatten(0, 1), lay))
    return flatten(h, lay).unflatten(0, (B, T))


class _Adjoint(torch.autograd.Function):
    """Identity forward; backward maps dL/dh to the adjoint lambda by one reverse scan."""

    @staticmethod
    def forward(ctx, z, A):
        ctx.save_for_backward(A)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        (A,) = ctx.saved_tensors  # (B, T, G, M, M) at the solution
        At = A.transpose(-1, -2)
        nxt = torch.cat([At[:, 1:], torch.zeros_like(At[:, :1])], dim=1)  # A_{t+1}^T, 0 at T-1
        lam = solve_blocks(nxt.flip(1), g.flip(1), torch.zeros_like(g[:, 0])).flip(1)
        return lam, None


class Newton(Engine):
    """Parallel Newton engine for cells whose structure is Diagonal, Block, Heads or Dense.

    Args:
        tol: residual tolerance; default 1e-5 (fp32) or 1e-10 (fp64).
        max_iters: the most Newton iterations (linear solves) before giving up.
        damping: relaxation weight w in (0, 1]: ``h <- h + w (h_newton - h)`` (1 = plain Newton).
        init: initial guess, ``"step"`` (``f(0, u_t)`` at every t, as ParaRNN) or ``"zeros"``.
        on_fail: ``"raise"`` (``ConvergenceError``) or ``"sequential"`` (recompute that batch
            with the sequential engine, warn once, count it in ``fallbacks``).
        dense_budget_bytes: warn when Dense Jacobians ``(B, T, S, S)`` would exceed this.
        compile: fuse f and its Jacobian with ``torch.compile`` (one pass over memory instead of
            one per op; several times faster on CPU, after a compile of ~20 s per shape).

    After each call ``stats`` holds ``iterations``, ``residual``, ``converged`` and ``history``.
    ``solve(cell, x, ..., guess=states)`` runs one call from a warm start instead of ``init``.
    """

    name = "newton"

    def __init__(self, tol: Optional[float] = None, max_iters: int = 50, damping: float = 1.0,
                 init: str = "step", on_fail: str = "raise", dense_budget_bytes: int = 2 ** 30,
                 compile: bool = False):
        if tol is not None and not tol > 0:
            raise ValueError(f"Newton: tol must be > 0 or None, got {tol!r}")
        if not (isinstance(max_iters, int) and max_iters >= 1):
            raise ValueError(f"Newton: max_iters must be an int >= 1, got {max_iters!r}")
        if not 0 < damping <= 1:
            raise ValueError(f"Newton: damping must be in (0, 1], got {damping!r}")
        if init not in ("step", "zeros"):
            raise ValueError(f"Newton: init must be 'step' or 'zeros', got {init!r}")
        if on_fail not in ("raise", "sequential"):
            raise ValueError(f"Newton: on_fail must be 'raise' or 'sequential', got {on_fail!r}")
        self.tol, self.max_iters, self.damping, self.init = tol, max_iters, damping, init
        self.on_fail, self.dense_budget_bytes = on_fail, dense_budget_bytes
        self._linearize = torch.compile(linearize, dynamic=False) if compile else linearize
        self._guess: Optional[State] = None
        self.stats: dict = {}
        self.fallbacks = 0
        self._probed: "weakref.WeakSet[Cell]" = weakref.WeakSet()

    def solve(self, cell: Cell, x: torch.Tensor, initial_state: Optional[State] = None,
              lengths=None, guess: Optional[State] = None):
        """One call from a warm start: ``guess`` holds every step's state, each leaf
        ``(B, T, ...)`` (e.g. the previous solution for the same batch); -> ``(y, h_T)``."""
        self._guess = guess
        try:
            return self(cell, x, initial_state, lengths)
        finally:
            self._guess = None

    def supports(self, cell: Cell) -> bool:
        return isinstance(cell.structure, (Diagonal, Block, Heads, Dense))

    def __repr__(self) -> str:
        return (f"Newton(tol={self.tol}, max_iters={self.max_iters}, damping={self.damping}, "
                f"init={self.init!r}, on_fail={self.on_fail!r})")

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        lay = layout(cell, h0)
        u = cell.project(x)  # (B, T, D) -> (B, T, P)
        start = flatten(h0, lay)  # (B, G, M)
        self._check_budget(cell, B, T, lay)
        if cell not in self._probed:
            probe(cell, u[:, 0].detach(), torch.randn_like(start), lay)
            self._probed.add(cell)
        alive = None if lengths is None else (torch.arange(T, device=x.device)[None, :]
                                              < lengths[:, None])  # (B, T)
        guess = None if self._guess is None else self._guess_states(cell, h0, B, T, lay)
        with torch.no_grad():
            h, A, ok, why = self._solve(cell, u.detach(), start.detach(), alive, lay, guess)
        if not ok:
            return self._fail(cell, x, h0, lengths, why)
        return self._attach(cell, u, start, h, A, alive, lay)

    # ---- the solve ---------------------------------------------------------------------------

    def _f_and_jacobian(self, cell, u, h_prev, alive, lay):
        """f and A at every step: u (B, T, P), h_prev (B, T, G, M) -> (B, T, G, M), (.., M, M);
        padded steps are the identity (f = h_prev, A = I).

        Rows go through the step in chunks of about ``CHUNK_ELEMS`` state numbers, so the
        step's dozen temporaries stay under glibc's 32 MB mmap threshold (larger blocks are
        mapped fresh, and page-faulted, at every allocation: T=16384 ran 1.5-2x slower).
        Chunks are not smaller because every chunk pays the Python cost of forward AD."""
        B, T = u.shape[:2]
        uf, hf = u.flatten(0, 1), h_prev.flatten(0, 1)  # (B*T, P), (B*T, G, M)
        rows = max(1, CHUNK_ELEMS // (lay.groups * lay.size))
        if uf.shape[0] <= rows:
            f, A = self._linearize(cell, uf, hf, lay)
        else:
            f = hf.new_empty(hf.shape)
            A = hf.new_empty(*hf.shape, lay.size)
            for s in range(0, uf.shape[0], rows):
                # clone: forward AD on a view of a large base touches the whole base
                f[s:s + rows], A[s:s + rows] = self._linearize(
                    cell, uf[s:s + rows].clone(), hf[s:s + rows].clone(), lay)
        f, A = f.unflatten(0, (B, T)), A.unflatten(0, (B, T))  # (B*T, ..) -> (B, T, ..)
        if alive is not None:
            keep = alive.view(B, T, 1, 1)
            f = torch.where(keep, f, h_prev)
            A = torch.where(keep.unsqueeze(-1), A, torch.eye(lay.size, dtype=A.dtype,
                                                             device=A.device))
        return f, A

    def _guess_states(self, cell, h0, B, T, lay) -> torch.Tensor:
        """The warm start as grouped ``(B, T, G, M)``, checked against the state's layout."""
        leaves, template = as_tuple(self._guess), as_tuple(h0)
        want = [(B, T, *t.shape[1:]) for t in template]
        if len(leaves) != len(want) or any(tuple(g.shape) != w for g, w in zip(leaves, want)):
            raise ValueError(f"guess: expected every step's state, leaves shaped {want} for "
                             f"{type(cell).__name__}, got {[tuple(g.shape) for g in leaves]}")
        flat = tuple(g.detach().flatten(0, 1).to(t.dtype) for g, t in zip(leaves, template))
        return flatten(flat if isinstance(h0, tuple) else flat[0], lay).unflatten(0, (B, T))

    def _solve(self, cell, u, start, alive, lay, guess=None):
        """-> (h (B, T, G, M), A at h, converged, why-not)."""
        tol = self.tol or DEFAULT_TOL.get(start.dtype, 1e-5)
        zeros = torch.zeros_like(start).unsqueeze(1).expand(-1, u.shape[1], -1, -1)
        if guess is not None:
            h = guess
        else:
            h = zeros if self.init == "zeros" else _step_all(cell, u, zeros, lay)
        history = []
        for it in range(self.max_iters + 1):
            h_prev = torch.cat([start.unsqueeze(1), h[:, :-1]], dim=1)  # (B, T, G, M)
            f, A = self._f_and_jacobian(cell, u, h_prev, alive, lay)
            res = ((h - f).norm(dim=(-2, -1)) / (h.norm(dim=(-2, -1)) + 1e-6)).max().item()
            history.append(res)
            self.stats = {"iterations": it, "residual": res, "converged": res <= tol,
                          "history": history}
            if not (res == res and abs(res) != float("inf")) or not torch.isfinite(A).all():
                return h, A, False, "NaN or inf in the iterates"
            if res <= tol:
                return h, A, True, None
            if it == self.max_iters:
                break
            h_new = solve_blocks(A, f - block_matvec(A, h_prev), start)
            h = h_new if self.damping == 1 else h + self.damping * (h_new - h)
        return h, A, False, f"no convergence to tol={tol:g} within {self.max_iters} iterations"

    # ---- gradients and failures -------------------------------------------------------------

    def _attach(self, cell, u, start, h, A, alive, lay):
        """One batched step at the solution carries the graph; the adjoint carries time."""
        B, T = u.shape[:2]
        h_prev = torch.cat([start.unsqueeze(1), h[:, :-1]], dim=1)  # h0 keeps its graph
        z = _step_all(cell, u, h_prev, lay)  # (B, T, G, M)
        if alive is not None:
            z = torch.where(alive.view(B, T, 1, 1), z, h_prev)
        z = _Adjoint.apply(z, A)
        states = unflatten(z.flatten(0, 1), lay)
        y = cell.readout(states, u.flatten(0, 1)).unflatten(0, (B, T))  # (B, T, H_out)
        if alive is not None:
            y = torch.where(alive.view(B, T, *([1] * (y.dim() - 2))), y, torch.zeros_like(y))
        return y, unflatten(z[:, -1], lay)

    def _fail(self, cell, x, h0, lengths, why):
        msg = f"Newton on {type(cell).__name__} (T={x.shape[1]}): {why}"
        if self.on_fail == "raise":
            raise ConvergenceError(msg, self.stats.get("history", []))
        if self.fallbacks == 0:
            warnings.warn(f"{msg}; recomputing with the sequential engine (warned once; see "
                          f"engine.fallbacks)", RuntimeWarning, stacklevel=4)
        self.fallbacks += 1
        return Sequential().run(cell, x, h0, lengths)

    def _check_budget(self, cell, B, T, lay):
        if isinstance(cell.structure, Dense):
            need = B * T * lay.groups * lay.size ** 2 * 4
            if need > self.dense_budget_bytes:
                warnings.warn(f"Newton: Dense Jacobians of {type(cell).__name__} need "
                              f"{need / 2 ** 20:.0f} MiB (B={B}, T={T}, S={lay.size}) > budget "
                              f"{self.dense_budget_bytes / 2 ** 20:.0f} MiB", RuntimeWarning)
