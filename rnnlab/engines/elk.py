"""ELK: Levenberg-Marquardt steps for the Newton engine (Gonzalez et al. 2024, "Towards scalable
and stable parallelization of nonlinear RNNs"), for the cases where plain Newton diverges.

At the iterate s^k, with the engine's linearization (Jacobian blocks J_t = df/dh at s^k_{t-1}
and r_t = f(s^k_{t-1}, u_t) - s^k_t), one ELK step is the exact minimizer of

    sum_t || delta_t - J_t delta_{t-1} - r_t ||^2  +  (1 / sigma2) sum_t || delta_t ||^2,

delta = s - s^k, delta_0 = 0 (h0 is given): the linearized residual plus a Levenberg-Marquardt
penalty on the step, lambda = 1 / sigma2. That is the MAP trajectory (= smoothed means) of a
linear-Gaussian state-space model, dynamics ``delta_t = J_t delta_{t-1} + r_t + w_t``,
``w_t ~ N(0, I)``, observed as ``0 = delta_t + v_t``, ``v_t ~ N(0, sigma2 I)``. We run its
Kalman filter and Rauch-Tung-Striebel smoother exactly, one sweep forward and one back, per
group of the declared structure (M x M covariances; scalars for Diagonal), so the step is the
exact LM step for the exact (structured) Jacobian. sigma2 -> inf gives the Newton step, sigma2
-> 0 no step; in between, every step is bounded (the filter gain is < 1), which is what keeps
unstable linearizations (|J| > 1 along time) from blowing up.

``quasi=True`` is quasi-ELK: the same smoother with only the diagonal of each Jacobian block
(scalars everywhere, O(S) per step). Its steps are not LM steps of the full linearization, so it
converges linearly, but to the same fixed point: the engine stops on the true residual, and its
gradients always use the full Jacobians at the solution, so results and gradients are exact
either way.

Two ways to run the filter and smoother: sequential sweeps over time (numba on CPU, M x M
algebra unrolled for M = 1, 2; a torch loop otherwise), or the parallel-in-time form of the ELK
paper, the filter and the smoother each an associative scan over time (``ops/kalman.py``: O(T)
work in O(log T) dependent steps, the form for GPUs). ``elk_step(parallel=None)`` takes the
parallel form off CPU; on CPU numba's sweeps (fp32/fp64 with numba installed), else the
parallel form for scalar groups (M = 1) and the torch loop for blocks (measured at T = 1024, one
thread: M = 1 scan 29 ms, numba 1.8 ms, loop 109 ms; M = 2 scan 190 ms, numba 3.7 ms, loop
118 ms: 2T small batched solves lose to the loop on a CPU). The module flag ``PARALLEL``
(None, True or False) overrides that default for every call that passes ``parallel=None``, so
the Newton engine can be steered (tests monkeypatch it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..checks import check_bool, check_number
from ..ops.kalman import parallel_smoother, smoother_reference
from ..ops.numba_pool import numba as _numba
from .iterate import Problem, SolveResult

USE_NUMBA = _numba is not None
# elk_step(parallel=None) reads this: None = the measured default (module docstring),
# True / False = always / never the parallel scan
PARALLEL = None


def _solve_small(Mat, rhs):  # pragma: no cover - compiled (used inside the numba kernel)
    """x = Mat^{-1} rhs for a small SPD-ish Mat (M x M) and rhs (M x K), Gauss-Jordan with
    partial pivoting; Mat and rhs are overwritten."""
    m = Mat.shape[0]
    for c in range(m):
        p = c
        for r in range(c + 1, m):
            if abs(Mat[r, c]) > abs(Mat[p, c]):
                p = r
        if p != c:
            for k in range(m):
                Mat[c, k], Mat[p, k] = Mat[p, k], Mat[c, k]
            for k in range(rhs.shape[1]):
                rhs[c, k], rhs[p, k] = rhs[p, k], rhs[c, k]
        piv = Mat[c, c]
        for k in range(m):
            Mat[c, k] /= piv
        for k in range(rhs.shape[1]):
            rhs[c, k] /= piv
        for r in range(m):
            if r != c and Mat[r, c] != 0.0:
                fac = Mat[r, c]
                for k in range(m):
                    Mat[r, k] -= fac * Mat[c, k]
                for k in range(rhs.shape[1]):
                    rhs[r, k] -= fac * rhs[c, k]
    return rhs


def _smooth(A, r, mem, sigma2, out):  # pragma: no cover - compiled
    """The Kalman filter + RTS smoother of the module docstring, in float64 whatever the
    inputs. A ``(T, B, M, S)`` columns, r ``(T, B, S)``, mem ``(G, M)`` group members; writes
    the smoothed delta into out ``(T, B, S)``."""
    steps, batch, m, _ = A.shape
    groups = mem.shape[0]
    eye = np.eye(m)
    for i in range(batch):
        for g in range(groups):
            idx = mem[g]
            means = np.zeros((steps, m))  # filtered m_t
            preds = np.zeros((steps, m))  # predicted m^-_t
            gains = np.zeros((steps, m, m))  # smoother gain G_{t-1}, kept at t
            mean = np.zeros(m)
            cov = np.zeros((m, m))
            J = np.empty((m, m))
            for t in range(steps):
                for a in range(m):
                    for c in range(m):
                        J[a, c] = A[t, i, c, idx[a]]
                pred = J @ mean
                for a in range(m):
                    pred[a] += r[t, i, idx[a]]
                pcov = J @ cov @ J.T + eye
                if t > 0:  # G_{t-1} = P_{t-1} J_t^T (P^-_t)^{-1}; solve for its transpose
                    gains[t] = _solve_small(pcov.copy(), J @ cov).T
                inv = _solve_small(pcov + sigma2 * eye, eye.copy())  # (P^- + sigma2 I)^{-1}
                mean = sigma2 * (inv @ pred)
                cov = sigma2 * (inv @ pcov)
                cov = 0.5 * (cov + cov.T)
                means[t], preds[t] = mean, pred
            smoothed = means[steps - 1].copy()
            for a in range(m):
                out[steps - 1, i, idx[a]] = smoothed[a]
            for t in range(steps - 2, -1, -1):
                smoothed = means[t] + gains[t + 1] @ (smoothed - preds[t + 1])
                for a in range(m):
                    out[t, i, idx[a]] = smoothed[a]


def _smooth_scalar(A, r, sigma2, out):  # pragma: no cover - compiled
    """``_smooth`` for M = 1 (Diagonal, quasi-ELK): every position its own scalar filter,
    vectorized over positions. A ``(T, B, 1, S)``, r and out ``(T, B, S)``."""
    steps, batch, _, size = A.shape
    for i in range(batch):
        means = np.empty((steps, size))
        preds = np.empty((steps, size))
        gains = np.zeros((steps, size))
        mean = np.zeros(size)
        cov = np.zeros(size)
        for t in range(steps):
            for s in range(size):
                a = A[t, i, 0, s]
                pred = a * mean[s] + r[t, i, s]
                pcov = a * a * cov[s] + 1.0
                gains[t, s] = cov[s] * a / pcov  # G_{t-1} = P_{t-1} a_t / P^-_t
                inv = 1.0 / (pcov + sigma2)
                mean[s] = sigma2 * pred * inv
                cov[s] = sigma2 * pcov * inv
                means[t, s], preds[t, s] = mean[s], pred
        for s in range(size):
            out[steps - 1, i, s] = mean[s]
        for t in range(steps - 2, -1, -1):
            for s in range(size):
                mean[s] = means[t, s] + gains[t + 1, s] * (mean[s] - preds[t + 1, s])
                out[t, i, s] = mean[s]


def _smooth_pair(A, r, mem, sigma2, out):  # pragma: no cover - compiled
    """``_smooth`` for M = 2 (ParaLSTM's (h, c) pairs), the 2 x 2 algebra unrolled."""
    steps, batch, _, _ = A.shape
    groups = mem.shape[0]
    for i in range(batch):
        means = np.empty((steps, 2, groups))
        preds = np.empty((steps, 2, groups))
        gains = np.zeros((steps, 4, groups))  # G_{t-1} row-major at t
        m0, m1 = np.zeros(groups), np.zeros(groups)
        p00, p01, p11 = np.zeros(groups), np.zeros(groups), np.zeros(groups)
        for t in range(steps):
            for g in range(groups):
                i0, i1 = mem[g, 0], mem[g, 1]
                j00, j01 = A[t, i, 0, i0], A[t, i, 1, i0]  # J[a, c] = A[c, member a]
                j10, j11 = A[t, i, 0, i1], A[t, i, 1, i1]
                x0 = j00 * m0[g] + j01 * m1[g] + r[t, i, i0]
                x1 = j10 * m0[g] + j11 * m1[g] + r[t, i, i1]
                q00, q01, q11 = p00[g], p01[g], p11[g]
                c00, c01 = j00 * q00 + j01 * q01, j00 * q01 + j01 * q11  # C = J P
                c10, c11 = j10 * q00 + j11 * q01, j10 * q01 + j11 * q11
                v00 = c00 * j00 + c01 * j01 + 1.0  # P^- = J P J^T + I
                v01 = c00 * j10 + c01 * j11
                v11 = c10 * j10 + c11 * j11 + 1.0
                det = v00 * v11 - v01 * v01
                # G_{t-1} = P_{t-1} J^T (P^-)^{-1} = C^T (P^-)^{-1} (P, P^- symmetric)
                gains[t, 0, g] = (c00 * v11 - c10 * v01) / det
                gains[t, 1, g] = (c10 * v00 - c00 * v01) / det
                gains[t, 2, g] = (c01 * v11 - c11 * v01) / det
                gains[t, 3, g] = (c11 * v00 - c01 * v01) / det
                s00, s11 = v00 + sigma2, v11 + sigma2  # (P^- + sigma2 I)^{-1}
                sdet = s00 * s11 - v01 * v01
                w00, w01, w11 = s11 / sdet, -v01 / sdet, s00 / sdet
                m0[g] = sigma2 * (w00 * x0 + w01 * x1)
                m1[g] = sigma2 * (w01 * x0 + w11 * x1)
                n00 = sigma2 * (w00 * v00 + w01 * v01)
                n01 = sigma2 * 0.5 * ((w00 * v01 + w01 * v11) + (w01 * v00 + w11 * v01))
                n11 = sigma2 * (w01 * v01 + w11 * v11)
                p00[g], p01[g], p11[g] = n00, n01, n11
                means[t, 0, g], means[t, 1, g] = m0[g], m1[g]
                preds[t, 0, g], preds[t, 1, g] = x0, x1
        for g in range(groups):
            out[steps - 1, i, mem[g, 0]], out[steps - 1, i, mem[g, 1]] = m0[g], m1[g]
        for t in range(steps - 2, -1, -1):
            for g in range(groups):
                d0, d1 = m0[g] - preds[t + 1, 0, g], m1[g] - preds[t + 1, 1, g]
                m0[g] = means[t, 0, g] + gains[t + 1, 0, g] * d0 + gains[t + 1, 1, g] * d1
                m1[g] = means[t, 1, g] + gains[t + 1, 2, g] * d0 + gains[t + 1, 3, g] * d1
                out[t, i, mem[g, 0]], out[t, i, mem[g, 1]] = m0[g], m1[g]


if _numba is not None:
    _solve_small = _numba.njit(cache=True)(_solve_small)
    _smooth_numba = _numba.njit(cache=True)(_smooth)
    _smooth_scalar_numba = _numba.njit(cache=True)(_smooth_scalar)
    _smooth_pair_numba = _numba.njit(cache=True)(_smooth_pair)


def _blocks(A, r, mem):
    """Columns -> per-group blocks: A ``(T, B, M, S)``, r ``(T, B, S)``, mem ``(G, M)`` ->
    J ``(T, B*G, M, M)`` with ``J[a, c] = A[c, member a]``, r ``(T, B*G, M)``."""
    J = A[:, :, :, mem].permute(0, 1, 3, 4, 2)  # (T, B, G, M_rows, M_cols)
    return J.flatten(1, 2), r[:, :, mem].flatten(1, 2)  # (T, B*G, M, M), (T, B*G, M)


def _scatter(x, r, mem):
    """Per-group x ``(T, B*G, M)`` -> ``(T, B, S)`` laid out (and typed) like r."""
    out = torch.empty_like(r)
    out[:, :, mem] = x.view(r.shape[0], r.shape[1], *mem.shape).to(r.dtype)  # (T, B, G, M)
    return out


def _smooth_torch(A, r, mem, sigma2):
    """The same filter and smoother as a torch loop over time (any device), batched over
    (B, G): A ``(T, B, M, S)``, r ``(T, B, S)``, mem ``(G, M)`` -> delta ``(T, B, S)``."""
    return _scatter(smoother_reference(*_blocks(A, r, mem), sigma2), r, mem)


def _smooth_parallel(A, r, mem, sigma2):
    """``_smooth_torch`` by the parallel-in-time scans of ``ops/kalman.py``."""
    return _scatter(parallel_smoother(*_blocks(A, r, mem), sigma2), r, mem)


def _numba_runs(A) -> bool:
    return (USE_NUMBA and _numba is not None and A.device.type == "cpu"
            and A.dtype in (torch.float32, torch.float64))


def _sweeps_numba(A, r, members, sigma2):
    """The numba sweeps (CPU, fp32/fp64), specialised for M = 1 and 2."""
    out = torch.empty_like(r)
    A_, r_ = A.contiguous().numpy(), r.contiguous().numpy()
    mem = members.cpu().numpy().astype(np.int64)
    if A.shape[2] == 1:
        _smooth_scalar_numba(A_, r_, sigma2, out.numpy())
    elif A.shape[2] == 2:
        _smooth_pair_numba(A_, r_, mem, sigma2, out.numpy())
    else:
        _smooth_numba(A_, r_, mem, sigma2, out.numpy())
    return out


@torch.no_grad()
def elk_step(A: torch.Tensor, r: torch.Tensor, members: torch.Tensor, within: torch.Tensor,
             sigma2: float, quasi: bool = False, parallel=None) -> torch.Tensor:
    """One (quasi-)ELK step: the smoothed update delta ``(T, B, S)`` for Jacobian columns A
    ``(T, B, M, S)``, residuals r = f - s ``(T, B, S)`` (time-major), the structure's group
    members ``(G, M)`` and within-group indices ``(S,)``. quasi: keep only each block's diagonal
    (then every position is its own scalar group). parallel: True runs the parallel-in-time
    scans (``ops/kalman.py``), False the sequential sweeps (numba where it runs, else a torch
    loop); None takes the module's ``PARALLEL``, and when that is None too, the parallel scans
    off CPU, and on CPU only for scalar groups (M = 1) where numba cannot run the sweeps."""
    if parallel is not None and not isinstance(parallel, bool):
        raise TypeError(f"parallel: expected None, True or False, got {parallel!r}")
    if quasi:
        A = A.gather(2, within.view(1, 1, 1, -1).expand(A.shape[0], A.shape[1], 1, -1))
        members = torch.arange(A.shape[-1], device=A.device).unsqueeze(1)  # (S, 1)
    parallel = PARALLEL if parallel is None else parallel
    if parallel is None:  # the measured default (module docstring)
        parallel = A.device.type != "cpu" or (not _numba_runs(A) and A.shape[2] == 1)
    if parallel:
        return _smooth_parallel(A, r, members.to(A.device), float(sigma2))
    if _numba_runs(A):
        return _sweeps_numba(A, r, members, float(sigma2))
    return _smooth_torch(A, r, members.to(A.device), float(sigma2))


# ---- the Levenberg-Marquardt method of the Newton engine --------------------------------------

def _linearize_all(p: Problem, h):
    """Every chunk's (A, f) at the iterate h ``(T+1, B, S)``, its largest relative residual and
    the merit ``sum_t ||f_t - h_t||^2``."""
    out = [p.terms(p.cell, p.lay, p.u[:, t0:t1], h[t0:t1 + 1], p.alive_tm(t0, t1))
           for t0, t1 in p.bounds]
    merit = sum(float(((o[1] - h[t0 + 1:t1 + 1]) ** 2).sum()) for o, (t0, t1) in zip(out, p.bounds))
    res = float(torch.stack([o[2] for o in out]).amax())
    return [o[0] for o in out], [o[1] for o in out], res, merit


@dataclass(frozen=True)
class ELK:
    """Levenberg-Marquardt iterations with (quasi-)ELK steps: ``Newton(method=ELK())``
    (``Newton(damping="elk")`` / ``"quasi-elk"`` for short). sigma2 = 1 / lambda starts at
    ``sigma2`` (large: close to Newton's step); a step that lowers the merit
    ``sum_t ||r_t||^2`` is taken and sigma2 grows x10 (towards the Newton step and its quadratic
    convergence), one that does not is dropped and sigma2 shrinks /10 (a shorter, safer step).
    ``quasi``: each step's smoother keeps only the diagonal of each Jacobian block (quasi-ELK).
    A call's last sigma2 goes into its stats as ``elk_sigma2``."""
    sigma2: float = 100.0
    quasi: bool = False

    def __post_init__(self):
        check_number("ELK", "sigma2", self.sigma2, 0, low_open=True,
                     note=" (a finite number > 0)")
        check_bool("ELK", "quasi", self.quasi)

    def iterate(self, p: Problem, cur: torch.Tensor, nxt: torch.Tensor, tol: float,
                stats: dict) -> SolveResult:
        """cur, nxt: ``(T+1, B, S)`` iterate buffers (h0 in row 0); ``nxt`` goes back to the
        buffer pool."""
        A, f, res, merit = _linearize_all(p, cur)
        history, sigma2 = [res], float(self.sigma2)
        members, within = p.lay.members(p.u.device), p.lay.within(p.u.device)
        it = 0
        while math.isfinite(res) and res > tol and it < p.max_iters:
            it += 1
            step = elk_step(torch.cat(A), torch.cat(f) - cur[1:], members, within, sigma2,
                            quasi=self.quasi)
            torch.add(cur[1:], step, out=nxt[1:])
            A2, f2, res2, merit2 = _linearize_all(p, nxt)
            if math.isfinite(merit2) and math.isfinite(res2) and merit2 < merit:
                cur, nxt, A, f, res, merit = nxt, cur, A2, f2, res2, merit2
                sigma2 = min(sigma2 * 10, 1e12)
            else:
                sigma2 = max(sigma2 / 10, 1e-12)
            history.append(res)
        stats.update(iterations=it, residual=res, converged=res <= tol, history=history,
                     elk_sigma2=sigma2)
        p.buffers.give(nxt)
        return SolveResult(cur, A, f, res)
