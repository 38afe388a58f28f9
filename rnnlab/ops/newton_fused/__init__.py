"""Fused Newton sweeps (ParaRNN's fused kernels, any T) for cells with a diagonal step Jacobian,
ParaGRU and IndRNN, and the Block(2) cell ParaLSTM (a 2 x 2 Jacobian per channel). One Newton
iteration (the step's f and Jacobian at the current iterate, the scan of the update, the new
iterate) is one kernel launch per chunk of time; the backward is the engine's adjoint
(``lam_t = g_t + A_{t+1}^T lam_{t+1}``, then the step's VJP at the solution), also one launch
per chunk. Same iteration, stopping rule and outputs as the Newton engine
(``engines/newton.py``, ``NewtonSteps``), so the results match it (and the sequential engine)
to its tolerance.

- ``reference.py``: the same sweep, solve and adjoint in plain torch (the tested reference and
  the path of every device without the kernels);
- ``triton_kernels.py``: the kernels and custom ops ``torch.ops.rnnlab.newton_fused_sweep``,
  ``newton_fused_adjoint`` and ``newton_fused_solve`` (autograd by the adjoint);
- here: the dispatch (``backend``: CUDA with triton importable -> "triton", else "torch"),
  which cells the kernels take (``engine_supports``) and ``newton_fused``.

The Newton engine calls it (``engines/newton_kernels.py``: ``fused_kind`` picks the kernels,
``run_fused`` runs them) when the method is plain ``NewtonSteps`` (not ELK), ``quasi`` is off,
no warm start (``guess``) is given, ``backend(x.device)`` is "triton" and ``engine_supports``
names the cell; the engine's ``stats`` then say ``kernel = "triton"``, and a failed solve
falls back or raises as the generic one does. The gradient flows to u (hence x and the
projection), h0 and the parameters (through ``cell_params``, which applies the cells' clamps
in torch).
"""
from __future__ import annotations

import functools
import importlib.util
import math
from typing import Optional

import torch

from .reference import CELLS, adjoint_reference, solve_reference

USE_TRITON = True  # CUDA takes the kernels where triton imports; False: the torch reference
DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # = engines/newton.py's


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(device="cpu") -> str:
    """The path ``newton_fused`` takes on ``device``: "triton" (CUDA kernels) or "torch"."""
    if torch.device(device).type == "cuda" and USE_TRITON and _triton_importable():
        return "triton"
    return "torch"


def engine_supports(cell) -> Optional[str]:
    """The kernels' name for an rnnlab cell they run exactly (``CELLS``), or None."""
    kind = type(cell).__name__
    if kind == "ParaGRU":
        return "paragru"
    if kind == "IndRNN":
        return f"indrnn_{cell.nonlinearity}"
    if kind == "ParaLSTM":
        return "paralstm"
    return None


def cell_params(cell) -> torch.Tensor:
    """The cell's recurrent parameters as the step uses them, ``(P, H)`` (clamps applied here,
    so their gradients are torch's)."""
    kind = type(cell).__name__
    if kind == "ParaGRU":
        return cell.recurrent()
    if kind == "ParaLSTM":
        return torch.cat(cell.recurrent())  # (3, H), (2, H) -> (5, H): a_f, a_c, a_o, C_f, C_o
    w = cell.weight_hh
    if cell.recurrent_max is not None:
        w = w.clamp(-cell.recurrent_max, cell.recurrent_max)
    return w[None]  # (H,) -> (1, H)


def _check(cell: str, u, h0, params, lengths, max_iters, damping, init, chunk):
    if cell not in CELLS:
        raise ValueError(f"newton_fused: cell must be one of {sorted(CELLS)}, got {cell!r}")
    G, P, L = CELLS[cell]
    if h0.dim() != 2 or h0.shape[1] % L:
        raise ValueError(f"newton_fused: h0 must be (B, S) with S = {L}*H for {cell}, got "
                         f"shape {tuple(h0.shape)}")
    B, H = h0.shape[0], h0.shape[1] // L
    if u.dim() != 3 or u.shape[0] != B or u.shape[2] != G * H:
        raise ValueError(f"newton_fused: u must be (B, T, G*H) = ({B}, T, {G * H}) for {cell}, "
                         f"got shape {tuple(u.shape)}")
    if tuple(params.shape) != (P, H):
        raise ValueError(f"newton_fused: params must be (P, H) = ({P}, {H}) for {cell}, got "
                         f"shape {tuple(params.shape)}")
    if lengths is not None and (tuple(lengths.shape) != (B,) or lengths.dtype.is_floating_point):
        raise ValueError(f"newton_fused: lengths must be ({B},) integers, got "
                         f"{tuple(lengths.shape)} {lengths.dtype}")
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"newton_fused: max_iters must be an int >= 1, got {max_iters!r}")
    if not 0 < damping <= 1:
        raise ValueError(f"newton_fused: damping must be in (0, 1], got {damping!r}")
    if init not in ("step", "zeros"):
        raise ValueError(f"newton_fused: init must be 'step' or 'zeros', got {init!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ValueError(f"newton_fused: chunk must be an int >= 0 (0: all of T), got "
                         f"{chunk!r}")


class _ReferenceSolve(torch.autograd.Function):
    """The torch path with the same backward as the kernels' (the adjoint at the solution;
    A^T for ParaLSTM's blocks)."""

    @staticmethod
    def forward(ctx, cell, u, h0, params, lengths, tol, max_iters, damping, init, history):
        z, hsol, done = solve_reference(cell, u, h0, params, lengths, tol, max_iters, damping,
                                        init)
        history.extend(done)  # the caller's list: the stats
        ctx.cell = cell
        ctx.save_for_backward(u, h0, params, lengths, hsol)
        return z

    @staticmethod
    def backward(ctx, dz):
        u, h0, params, lengths, hsol = ctx.saved_tensors
        du, dh0, dp = adjoint_reference(ctx.cell, u, h0, hsol, params, lengths, dz)
        return None, du, dh0, dp, None, None, None, None, None, None


def _finals(z: torch.Tensor, h0: torch.Tensor, lengths) -> torch.Tensor:
    """Each sequence's final state: z at its last real step, or h0 when it has none (the
    engine's ``_finals``)."""
    if lengths is None:
        return z[:, -1]
    n = lengths.to(z.device)
    rows = torch.arange(z.shape[0], device=z.device)
    return torch.where((n == 0)[:, None], h0, z[rows, (n - 1).clamp(min=0)])


def newton_fused(cell: str, u: torch.Tensor, h0: torch.Tensor, params: torch.Tensor,
                 lengths: Optional[torch.Tensor] = None, tol: Optional[float] = None,
                 max_iters: int = 50, damping: float = 1.0, init: str = "step",
                 chunk: int = 0):
    """Solve ``h_t = f(h_{t-1}, u_t)`` for all t by Newton, each iteration one fused sweep.

    Args:
        cell: a name of ``CELLS`` ("paragru", "indrnn_relu", "indrnn_tanh", "paralstm").
        u: (B, T, G*H) the projected inputs (``cell.project(x)``), gate-major.
        h0: (B, S) the initial state, S = L*H: its leaves concatenated ([h, c] for paralstm).
        params: (P, H) the recurrent vectors as the step uses them (``cell_params(cell)``).
        lengths: (B,) real steps per sequence, or None; later steps are the identity.
        tol: the engine's residual tolerance, ``max_t ||f_t - h_t|| / (||h_t|| + 1e-6)``;
            None: 1e-5 (fp32) or 1e-10 (fp64).
        max_iters: the most Newton updates; damping: w in (0, 1], ``h <- h + w delta``;
        init: the first iterate, "step" (``f(0, u_t)``) or "zeros".
        chunk: steps per kernel launch (0: all of T in one launch per sweep).
    Returns:
        z (B, T, S): the step at the solution (the engine's states), h_T (B, S), and info:
        ``iterations``, ``residual``, ``converged``, ``history`` (as the engine's stats) and
        ``failure`` (None, or why it did not converge: NaN/inf, or not within max_iters).
    Gradients flow to u, h0 and params (the adjoint at the solution: exact BPTT there).
    half-precision inputs are computed in fp32.
    """
    _check(cell, u, h0, params, lengths, max_iters, damping, init, chunk)
    compute = torch.promote_types(u.dtype, torch.float32)
    tol = DEFAULT_TOL.get(compute, 1e-5) if tol is None else float(tol)
    B, T = u.shape[:2]
    if T == 0 or B == 0:
        empty = dict(iterations=0, residual=0.0, converged=True, history=[], failure=None)
        return u.new_zeros(B, T, h0.shape[-1]), h0, empty
    u, h0, params = (t.to(compute) for t in (u, h0, params))
    if backend(u.device) == "triton":
        z, history = _kernels(cell, u, h0, params, lengths, tol, max_iters, damping, init,
                              chunk)
    else:
        history = []
        z = _ReferenceSolve.apply(cell, u, h0, params, lengths, tol, max_iters, damping, init,
                                  history)
    return z, _finals(z, h0, lengths), _info(history, tol)


def _kernels(cell, u, h0, params, lengths, tol, max_iters, damping, init, chunk):
    from .triton_kernels import newton_solve

    B, T = u.shape[:2]
    n = (torch.full((B,), T, dtype=torch.int64, device=u.device) if lengths is None
         else lengths.to(device=u.device, dtype=torch.int64))
    z, _, info = newton_solve(cell, u.contiguous(), h0.contiguous(), params.contiguous(), n,
                              tol, max_iters, damping, init, chunk)
    return z, info[1:1 + int(info[0])].tolist()


def run_kernels(cell: str, u, h0, params, lengths=None, tol=None, max_iters: int = 50,
                damping: float = 1.0, init: str = "step", chunk: int = 0):
    """``newton_fused`` on the kernels whatever the device (CUDA, or CPU under
    ``TRITON_INTERPRET=1``: the tests)."""
    _check(cell, u, h0, params, lengths, max_iters, damping, init, chunk)
    tol = DEFAULT_TOL.get(u.dtype, 1e-5) if tol is None else float(tol)
    z, history = _kernels(cell, u, h0, params, lengths, tol, max_iters, damping, init, chunk)
    return z, _finals(z, h0, lengths), _info(history, tol)


def _info(history, tol: float) -> dict:
    r = history[-1]
    failure = None
    if not math.isfinite(r):
        failure = "NaN or inf in the iterates"
    elif r > tol:
        failure = f"no convergence to tol={tol:g} within {len(history) - 1} iterations"
    return dict(iterations=len(history) - 1, residual=r, converged=r <= tol,
                history=history, failure=failure)
