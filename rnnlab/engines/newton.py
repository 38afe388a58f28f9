"""The Newton engine: nonlinear cells in parallel over time (ParaRNN / DEER, and ELK).

All equations ``h_t = f(h_{t-1}, u_t)`` are solved at once. Each iteration linearizes f at the
current iterate h^k (structured Jacobian columns A_t, ``linearize.py``) and solves for the update

    delta_t = A_t delta_{t-1} + (f(h^k_{t-1}, u_t) - h^k_t),   h^{k+1} = h^k + w delta

(for w = 1 exactly ``h^{k+1}_t = A_t h^{k+1}_{t-1} + f_t - A_t h^k_{t-1}``). It stops when
``max_t ||f_t - h_t|| / (||h_t|| + 1e-6) <= tol`` for every state leaf; NaN/inf or no
convergence in ``max_iters`` raise ``ConvergenceError`` (or fall back to the sequential engine
when asked).
``method=ELK()`` (``damping="elk"`` / ``"quasi-elk"``) takes Levenberg-Marquardt steps instead
(``elk.py``); the methods are small objects (``iterate.py``).

One pass over memory per iteration. States are flat ``(S,)`` per sample and time-major in the
solve: ``hbuf (T+1, B, S)`` holds h0 then every h_t, so a chunk's h_{t-1} and h_t are two views
of one buffer. A pass walks chunks of time; for each, one fused function (``linearize.terms``,
compiled with ``compile``) computes f, the Jacobian columns and the residual norms, and right
away, the chunk still in cache, ``ops.block.column_scan_`` sweeps its update from ``cur`` into
``nxt`` (the update carried from chunk to chunk). Once the pass ends the residual of ``cur`` is
known: converged, ``cur`` is the solution and the f and Jacobians just computed are at it, else
the two buffers swap. Both buffers (and the backward's) are reused across calls of one shape.

Backward never goes through the iterations. ``adjoint.Solution`` returns z = f(h*_{t-1}, u_t)
from the last linearization (no extra pass); its backward maps dL/dz to the adjoint
``lambda_t = g_t + A_{t+1}^T lambda_{t+1}`` by one reverse sweep (``column_adjoint_scan_``) over
the Jacobians kept from that linearization, then one batched VJP of the step at h*
(``linearize.step_vjp``, compiled with ``compile``, ``compiled.py``) pulls lambda back to the
inputs and every parameter; the sweep's last carry ``A_0^T lambda_0`` is the gradient to h0.
The implicit-function theorem, i.e. exact BPTT at the fixed point. Quasi-Newton keeps only part
of each Jacobian, so its adjoint is iterated the same way as its forward (``quasi_adjoint``).
"""
from __future__ import annotations

import itertools
import math
import warnings
import weakref
from typing import List, Optional, Tuple

import torch

from ..cells.base import Block, Cell, Dense, Diagonal, Heads, State, as_tuple
from ..checks import check_bool, check_choice, check_int, is_number
from ..errors import ConvergenceError
from .adjoint import Buffers, Solution, Solved
from .base import Engine
from .compiled import HotFunctions
from .elk import ELK
from .iterate import NewtonSteps, Problem, SolveResult
from .linearize import (
    Layout,
    Step,
    complex_state,
    flatten,
    from_leaves,
    layout,
    linear_on_newton,
    quasi_layout,
    sizes,
)
from .newton_kernels import fused_kind, run_fused
from .probe import probe
from .sequential import Sequential

DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
CHUNK_BYTES = 2 ** 20  # compiled: Jacobian bytes per chunk of time (stays in cache)
EAGER_CHUNK_ELEMS = 2 ** 21  # eager: state numbers (B * steps * S) per chunk of time
MAX_ITERS, QUASI_MAX_ITERS = 50, 200  # the defaults of max_iters
COMPILE_MIN_ELEMS = 2 ** 20  # compile="auto" compiles from this many state numbers (B * T * S)


def method_of(damping, elk_sigma2) -> object:
    """The iteration method that ``Newton(damping=..., elk_sigma2=...)`` stands for."""
    if damping in ("elk", "quasi-elk"):
        return ELK(100.0 if elk_sigma2 is None else elk_sigma2, quasi=damping == "quasi-elk")
    return NewtonSteps(1.0 if damping is None else float(damping))


class Newton(Engine):
    """Parallel Newton engine for cells whose structure is Diagonal, Block, Heads or Dense
    (and linear cells on a real state: ``linearize.linear_on_newton``).

    Args:
        tol: residual tolerance; default 1e-5 (fp32) or 1e-10 (fp64).
        max_iters: the most iterations (linear solves) before giving up; default 50, or 200
            with ``quasi`` (it converges linearly).
        method: how to iterate (``iterate.py``): ``NewtonSteps(damping=w)`` (the default,
            w = 1: plain Newton; w in (0, 1) relaxes each step, ``h <- h + w (h_newton - h)``)
            or ``ELK(sigma2=100.0, quasi=False)``: Levenberg-Marquardt iterations whose steps
            are ELK's Kalman smoother (``elk.py``), for cells where plain Newton blows up.
        damping: shorthand for ``method``: a float w (``NewtonSteps(w)``), ``"elk"``
            (``ELK(elk_sigma2)``) or ``"quasi-elk"`` (``ELK(elk_sigma2, quasi=True)``).
        elk_sigma2: ELK's starting sigma^2 = 1 / lambda (large: close to Newton's step), with
            ``damping="elk"``.
        init: initial guess, ``"step"`` (``f(0, u_t)`` at every t, as ParaRNN) or ``"zeros"``.
        on_fail: ``"raise"`` (``ConvergenceError``) or ``"sequential"`` (recompute that batch
            with the sequential engine, warn once, count it in ``fallbacks``).
        dense_budget_bytes: the most bytes the stored Jacobian columns ``(T, B, M, S)`` of one
            call may take (default 4 GiB; ``Dense`` has M = S, the first to reach it, hence the
            name, but a wide ``Heads`` gets there too). A call over it is refused before
            anything is allocated: a ``ValueError`` that says what ``quasi=True`` would need,
            or, with ``on_fail="sequential"``, the sequential engine (warned once).
        compile: fuse each pass's linearization (f, Jacobian, residual norms) and the backward's
            VJP with ``torch.compile``: ``True``, ``False``, or ``"auto"`` (the default: compile
            when B*T*S >= ``COMPILE_MIN_ELEMS``, where the one-off compile, ~20-60 s per cell
            and chunk shape, pays back). If compiling fails the engine warns once and runs
            eagerly; it never needs a compiler.
        quasi: quasi-Newton (the ELK paper's quasi-DEER, widened to state tuples): iterate with
            only the same-channel part of each Jacobian (``linearize.quasi_layout``: the
            diagonal, or ``Block(L)`` across the L state leaves; a cell's ``quasi_jacobian``
            gives it in closed form), O(S) per step instead of O(S^2) for ``Dense`` or O(L d S)
            for ``Heads``. More iterations (linear convergence), each cheap; the residual is
            exact, so the solution is the same. The backward solves the exact adjoint by the
            same iteration transposed (``adjoint.quasi_adjoint``). Where the structure already
            is that part (``Diagonal``, ``Block``), it is plain Newton.

    The engine holds settings and caches (compiled functions, reusable buffers), nothing of a
    call: one object may serve every layer of a model. A call's statistics go into the
    ``stats`` dict passed to it (``engine(cell, x, stats=d)``; ``Recurrent.stats`` is its
    layer's last call): ``engine``, ``iterations``, ``residual``, ``converged``, ``history``,
    ``compiled``, ``fallback`` (recomputed sequentially), ``elk_sigma2`` (ELK's last) and,
    once the backward has run, ``adjoint_iterations`` (quasi). ``engine.stats`` is the last
    call's, whichever layer made it. ``solve(cell, x, ..., guess=states)`` runs one call from a
    warm start.
    """

    name = "newton"

    def __init__(self, tol: Optional[float] = None, max_iters: Optional[int] = None,
                 damping=None, init: str = "step", on_fail: str = "raise",
                 dense_budget_bytes: int = 2 ** 32, compile="auto",
                 elk_sigma2: Optional[float] = None, quasi: bool = False, method=None):
        if tol is not None and not (is_number(tol) and 0 < tol < math.inf):
            raise ValueError(f"Newton: tol must be a finite number > 0 or None, got {tol!r}")
        check_int("Newton", "max_iters", max_iters, 1, optional=True)
        if damping is not None and damping not in ("elk", "quasi-elk") and not (
                is_number(damping) and 0 < damping <= 1):
            raise ValueError(f"Newton: damping must be in (0, 1], 'elk' or 'quasi-elk', got "
                             f"{damping!r}")
        if elk_sigma2 is not None and not (is_number(elk_sigma2)
                                           and 0 < elk_sigma2 < math.inf):
            raise ValueError(f"Newton: elk_sigma2 must be a finite number > 0, got "
                             f"{elk_sigma2!r}")
        check_int("Newton", "dense_budget_bytes", dense_budget_bytes, 0)
        check_choice("Newton", "init", init, ("step", "zeros"))
        check_choice("Newton", "on_fail", on_fail, ("raise", "sequential"))
        check_bool("Newton", "quasi", quasi)
        if compile not in (True, False, "auto"):
            raise ValueError(f"Newton: compile must be True, False or 'auto', got {compile!r}")
        if method is None:
            method = method_of(damping, elk_sigma2)
        elif damping is not None or elk_sigma2 is not None:
            raise ValueError("Newton: give method= or its shorthand damping= / elk_sigma2=, "
                             f"not both (got method={method!r}, damping={damping!r}, "
                             f"elk_sigma2={elk_sigma2!r})")
        elif not callable(getattr(method, "iterate", None)):
            raise ValueError(f"Newton: method must be NewtonSteps(...), ELK(...) or an object "
                             f"with iterate(problem, cur, nxt, tol, stats), got {method!r}")
        if max_iters is None:
            max_iters = QUASI_MAX_ITERS if quasi else MAX_ITERS
        self.tol, self.max_iters, self.init, self.method = tol, max_iters, init, method
        self.on_fail, self.dense_budget_bytes, self.compile = on_fail, dense_budget_bytes, compile
        self.quasi = quasi
        if quasi:
            self.name = "quasi"
        self.fallbacks = 0  # calls recomputed sequentially, over the engine's life (warn once)
        self._fns = HotFunctions()
        self._buffers = Buffers()
        self._probed: "weakref.WeakSet[Cell]" = weakref.WeakSet()
        self._last: dict = {}

    @property
    def damping(self):
        """The ``damping`` shorthand of ``method``: a float, ``"elk"`` or ``"quasi-elk"``."""
        if isinstance(self.method, ELK):
            return "quasi-elk" if self.method.quasi else "elk"
        return getattr(self.method, "damping", None)

    @property
    def elk_sigma2(self) -> Optional[float]:
        """ELK's starting sigma^2 (None for other methods)."""
        return getattr(self.method, "sigma2", None)

    @property
    def stats(self) -> dict:
        """The statistics of this engine's last call, whichever layer made it."""
        return self._last

    def solve(self, cell: Cell, x: torch.Tensor, initial_state: Optional[State] = None,
              lengths=None, guess: Optional[State] = None, stats: Optional[dict] = None):
        """One call from a warm start: ``guess`` holds every step's state, each leaf
        ``(B, T, ...)`` (e.g. the previous solution for the same batch); -> ``(y, h_T)``."""
        return self(cell, x, initial_state, lengths, stats=stats, guess=guess)

    def supports(self, cell: Cell) -> bool:
        return ((isinstance(cell.structure, (Diagonal, Block, Heads, Dense))
                 or linear_on_newton(cell.structure))  # not: a step undefined off its path,
                and not cell.sequential_only and not complex_state(cell))  # complex (real solves)

    def __repr__(self) -> str:
        quasi = ", quasi=True" if self.quasi else ""
        return (f"Newton(tol={self.tol}, max_iters={self.max_iters}, method={self.method!r}, "
                f"init={self.init!r}, on_fail={self.on_fail!r}, compile={self.compile!r}"
                f"{quasi})")

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        return self.run_call(cell, x, h0, lengths, {})

    def run_call(self, cell: Cell, x: torch.Tensor, h0: State, lengths: Optional[torch.Tensor],
                 stats: dict, guess: Optional[State] = None) -> Tuple[torch.Tensor, State]:
        self._last = stats
        stats["engine"] = self.name
        B, T, _ = x.shape
        exact = layout(cell, h0)
        lay = quasi_layout(exact) if self.quasi else exact  # the Jacobian part iterated with
        over = self._over_budget(B, T, lay, exact, x.dtype)
        if over:
            return self._fail(cell, x, h0, lengths, over, stats, memory=True)
        u = cell.project(x)  # (B, T, D) -> (B, T, P)
        start = flatten(h0, lay)  # (B, S)
        if cell not in self._probed:
            probe(cell, u[:, 0].detach(), start, exact, quasi=lay)
            self._probed.add(cell)
        alive = None if lengths is None else (torch.arange(T, device=x.device)[None, :]
                                              < lengths[:, None])  # (B, T)
        kind = fused_kind(self, cell, x, guess)
        if kind is not None:
            y, h, failure = run_fused(self, kind, cell, u, start, lay, lengths, alive, stats)
            return self._fail(cell, x, h0, lengths, failure, stats) if failure else (y, h)
        use_compile = self.compile is True or (self.compile == "auto"
                                               and B * T * lay.size >= COMPILE_MIN_ELEMS)
        fns = self._fns.get(use_compile, cell)
        if guess is not None:
            guess = self._guess_states(guess, cell, h0, B, T, lay)
        with torch.no_grad():
            problem = Problem(cell, u.detach(), alive, lay, fns.terms,
                              self._bounds(B, T, lay, start, use_compile and not
                                           self._fns.broken),
                              self.max_iters, self._buffers)
            result = self._solve(problem, start.detach(), guess, fns, stats)
        stats["compiled"] = use_compile and not self._fns.broken
        if result.failure is not None:
            self._buffers.give(result.hbuf)
            return self._fail(cell, x, h0, lengths, result.failure, stats)
        return self._outputs(problem, u, start, result, fns, stats)

    # ---- the solve ---------------------------------------------------------------------------

    @staticmethod
    def _bounds(B: int, T: int, lay: Layout, like: torch.Tensor,
                compiled: bool) -> List[Tuple[int, int]]:
        """Chunks of time. CPU, compiled: about ``CHUNK_BYTES`` of Jacobian, so a chunk is
        still in cache when its sweep runs, a power of two of steps each (``_power_chunks``).
        CPU, eager: about ``EAGER_CHUNK_ELEMS`` state numbers, as few chunks as keep each op's
        temporaries under the allocator's mmap threshold. Other devices: one chunk."""
        if like.device.type != "cpu":
            return [(0, T)]
        if compiled:
            per = CHUNK_BYTES // (B * lay.width * lay.size * like.element_size())
            return _power_chunks(T, 1 << (max(1, per).bit_length() - 1))
        per = EAGER_CHUNK_ELEMS // (B * lay.size)
        per = min(T, 1 << (max(1, per).bit_length() - 1))
        return [(t0, min(t0 + per, T)) for t0 in range(0, T, per)]

    def _start(self, p: Problem, start, guess, first_guess) -> torch.Tensor:
        """hbuf ``(T+1, B, S)``: h0, then the initial guess of every h_t."""
        B, T = p.u.shape[:2]
        hbuf = p.buffers.take((T + 1, B, p.lay.size), start)
        hbuf[0] = start
        if guess is not None:
            hbuf[1:] = guess.transpose(0, 1)
        elif self.init == "zeros":
            hbuf[1:] = 0
        else:
            for t0, t1 in p.bounds:
                first_guess(p.cell, p.lay, p.u[:, t0:t1], hbuf[t0 + 1:t1 + 1])
        return hbuf

    def _solve(self, p: Problem, start, guess, fns, stats: dict) -> SolveResult:
        """Iterate by ``method`` from the initial guess; the result says why when it failed."""
        tol = self.tol or DEFAULT_TOL.get(start.dtype, 1e-5)
        cur = self._start(p, start, guess, fns.first_guess)
        nxt = p.buffers.take(cur.shape, cur)
        nxt[0] = start
        result = self.method.iterate(p, cur, nxt, tol, stats)
        if not math.isfinite(result.residual):
            result.failure = "NaN or inf in the iterates"
        elif result.residual > tol:
            result.failure = (f"no convergence to tol={tol:g} within {self.max_iters} "
                              f"iterations")
        return result

    # ---- outputs, gradients and failures ------------------------------------------------------

    def _outputs(self, p: Problem, u, start, result: SolveResult, fns, stats: dict):
        """The states z_t = f(h*_{t-1}, u_t), from the last linearization, per leaf and
        batch-major, and the last of them; with a graph to build, through ``Solution``
        (``adjoint.py``: the adjoint backward)."""
        cell, lay, alive = p.cell, p.lay, p.alive
        B, T = u.shape[:2]
        split = sizes(lay)
        steps = [result.hbuf.new_empty(B, T, n) for n in split]  # L x (B, T, S_l)
        for (t0, t1), f_c in zip(p.bounds, result.f):
            for z, f_l in zip(steps, f_c.split(split, -1)):
                z[:, t0:t1] = f_l.transpose(0, 1)  # (C, B, S_l) -> (B, C, S_l)
        last = _finals(steps, start, alive, split)  # L x (B, S_l)
        named = [(n, t) for n, t in itertools.chain(cell.named_parameters(),
                                                     cell.named_buffers())
                 if t.requires_grad]
        if torch.is_grad_enabled() and (u.requires_grad or start.requires_grad or named):
            solved = Solved(shape=(B, T, lay.size), split=split, A=result.A, bounds=p.bounds,
                            src=lay.src(u.device), step=Step(cell, lay),
                            names=[f"cell.{n}" for n, _ in named], hbuf=result.hbuf,
                            alive=alive, vjp=fns.step_vjp, buffers=p.buffers,
                            outputs=steps + last, quasi=lay.exact is not None,
                            state_vjp=fns.state_vjp, stats=stats,
                            tol=self.tol or DEFAULT_TOL.get(start.dtype, 1e-5),
                            max_iters=self.max_iters)
            out = Solution.apply(solved, u, start, *[t for _, t in named])
            steps, last = out[:len(split)], out[len(split):]
        else:
            p.buffers.give(result.hbuf)
        parts = [z.view(B * T, n) for z, n in zip(steps, split)]  # L x (B*T, S_l)
        y = cell.readout(from_leaves(parts, lay), u.reshape(B * T, u.shape[-1]))
        y = y.unflatten(0, (B, T))  # (B*T, H_out) -> (B, T, H_out)
        if alive is not None:
            y = torch.where(alive.view(B, T, *([1] * (y.dim() - 2))), y, torch.zeros_like(y))
        return y, from_leaves(last, lay)

    @staticmethod
    def _guess_states(guess: State, cell, h0, B, T, lay) -> torch.Tensor:
        """The warm start as flat ``(B, T, S)``, checked against the state's layout."""
        leaves, template = as_tuple(guess), as_tuple(h0)
        want = [(B, T, *t.shape[1:]) for t in template]
        if len(leaves) != len(want) or any(tuple(g.shape) != w for g, w in zip(leaves, want)):
            raise ValueError(f"guess: expected every step's state, leaves shaped {want} for "
                             f"{type(cell).__name__}, got {[tuple(g.shape) for g in leaves]}")
        flat = tuple(g.detach().flatten(0, 1).to(t.dtype) for g, t in zip(leaves, template))
        return flatten(flat if isinstance(h0, tuple) else flat[0], lay).unflatten(0, (B, T))

    def _fail(self, cell, x, h0, lengths, why, stats: dict, memory=False):
        msg = f"Newton on {type(cell).__name__} (T={x.shape[1]}): {why}"
        if self.on_fail == "raise":
            if memory:
                raise ValueError(msg)
            raise ConvergenceError(msg, stats.get("history", []))
        stats["fallback"] = True
        if self.fallbacks == 0:
            warnings.warn(f"{msg}; recomputing with the sequential engine (warned once; see "
                          f"engine.fallbacks)", RuntimeWarning, stacklevel=4)
        self.fallbacks += 1
        return Sequential().run(cell, x, h0, lengths)

    def _over_budget(self, B, T, lay, exact, dtype) -> Optional[str]:
        """Why the stored Jacobians of this call would not fit ``dense_budget_bytes``, or
        None."""
        size = torch.promote_types(dtype, torch.float32).itemsize
        need = B * T * lay.width * lay.size * size
        if need <= self.dense_budget_bytes:
            return None
        quasi = quasi_layout(exact)
        hint = ("" if self.quasi or quasi is exact else
                f"; quasi=True (engine='quasi') would store {lay.width // quasi.width}x less")
        return (f"its Jacobian columns (B={B}, T={T}, {lay.width} of S={lay.size} per step) "
                f"need {need / 2 ** 20:.0f} MiB > dense_budget_bytes "
                f"({self.dense_budget_bytes / 2 ** 20:.0f} MiB); use the sequential engine, "
                f"shorter sequences{hint}, or raise the budget")


def _power_chunks(T: int, per: int) -> List[Tuple[int, int]]:
    """Chunks of ``per`` steps (a power of two), then what is left in falling powers of two
    (T = 100, per = 64: 64, 32, 4): whatever T, a chunk has one of log2(per) + 1 lengths, so
    the compiled linearization meets few shapes (a cell whose JVPs pin the chunk length, where
    symbolic sizes do not hold, compiles once per length instead of once per T)."""
    bounds, t0 = [], 0
    while t0 < T:
        n = min(per, 1 << ((T - t0).bit_length() - 1))
        bounds.append((t0, t0 + n))
        t0 += n
    return bounds


def _finals(steps, start: torch.Tensor, alive: Optional[torch.Tensor],
            split) -> List[torch.Tensor]:
    """Each sequence's final state, per leaf ``(B, S_l)``: z at its last valid step
    ``f(h*_{n-2}, u_{n-1})``, or h0 for an empty one. Not z at T-1: past the end the solve
    carries the iterate ``h_{n-1}`` forward unchanged, one Newton correction behind z_{n-1}
    (its error is the residual, where z's is far smaller), so a padded batch would return a
    worse final state than the same sequence unpadded. At the fixed point both are equal, so
    the adjoint backward (which sends the final state's gradient to T-1, back through the
    padded identity steps) stays exact."""
    if alive is None:
        return [z[:, -1].clone() for z in steps]
    n = alive.sum(1)  # (B,): alive is a prefix mask
    rows, last = torch.arange(n.shape[0], device=n.device), (n - 1).clamp(min=0)
    empty = (n == 0)[:, None]  # (B, 1)
    return [torch.where(empty, h0_l, z[rows, last])
            for z, h0_l in zip(steps, start.detach().split(split, -1))]
