"""Kalman filter + Rauch-Tung-Striebel smoother of ELK's state-space model as two associative
scans over time (Särkkä & García-Fernández 2021, "Temporal parallelization of Bayesian
smoothers"; used by ELK, Gonzalez et al. 2024), beside its loop-over-time reference.

The model, for N independent groups of M numbers (``engines/elk.py`` gathers them):

    x_t = F_t x_{t-1} + r_t + w_t,   w_t ~ N(0, I),   x_{-1} = 0 exactly,
    0   = x_t + v_t,                 v_t ~ N(0, sigma2 I);

the smoothed means E[x_t | all observations] are the Levenberg-Marquardt step of ELK.
With c = sigma2 / (1 + sigma2) and k = 1 / (1 + sigma2):

**Filter elements** a_t = (A, b, C, eta, Jn): ``p(x_t | x_{t-1}, y_t) = N(A x_{t-1} + b, C)``
and the likelihood of y_t as a function of x_{t-1}, in information form (eta, Jn). For this
model ``A = c F_t``, ``b = c r_t``, ``C = c I``, ``eta = -k F_t^T r_t``, ``Jn = k F_t^T F_t``;
the first step has no previous state, so it uses F_0 = 0 (A = eta = Jn = 0). Composing an
earlier element i with a later one j (conditioning on the observations of both, with x_{i-1}
as the only free state), with W = (I + C_i Jn_j)^{-1}:

    A  = A_j W A_i                      b   = A_j W (b_i + C_i eta_j) + b_j
    C  = A_j W C_i A_j^T + C_j          eta = (W A_i)^T (eta_j - Jn_j b_i) + eta_i
    Jn = (W A_i)^T Jn_j A_i + Jn_i

(``(W A_i)^T`` is the paper's ``A_i^T (I + Jn_j C_i)^{-1}``, as C and Jn are symmetric, so one
solve against I + C_i Jn_j gives every term.) The prefix a_0 ∘ ... ∘ a_t has A = 0 and holds
the filtered mean m_t in b and the filtered covariance P_t in C.

**Smoother elements** (E, g): ``E[x_t | x_{t+1}, y_{0..t}] = E_t x_{t+1} + g_t`` with the RTS
gain ``E_t = P_t F_{t+1}^T (F_{t+1} P_t F_{t+1}^T + I)^{-1}`` and ``g_t = m_t - E_t (F_{t+1}
m_t + r_{t+1})``; the last step has E = 0, g = m_{T-1}. Composing from the end (element t with
the later suffix s): ``E = E_t E_s``, ``g = E_t g_s + g_t``; the suffix from t holds the smoothed
mean in g. The paper's elements also carry the conditional covariance L; only means are asked
for here and L never feeds E or g, so it is not computed.

Both scans are ``ops.associative.associative_scan`` (O(T) combines in O(log T) levels). Work is
in float64 whatever the inputs, as in the sequential sweeps. For M >= 2 the affine parts sit side
by side, [A | b], [Jn | eta] and [E | g] as ``(..., M, M+1)``, so each product of a combine is
one batched matmul; M = 1 (Diagonal, quasi-ELK) runs on scalars with no linear-algebra calls.
Accuracy matches the sweeps (rel. ~1e-12) for sigma2 up to ~1e4 even where |F_t| > 1; at very
large sigma2 (towards 1e12) with expanding F the step is ill-conditioned (cond ~1e13) and the
scan loses more digits than the sweeps do.
"""
from __future__ import annotations

import math

import torch

from ..checks import check_number
from .associative import associative_scan


def _check(J, r, sigma2) -> None:
    if not isinstance(J, torch.Tensor) or not isinstance(r, torch.Tensor):
        bad, x = ("J", J) if not isinstance(J, torch.Tensor) else ("r", r)
        raise TypeError(f"{bad}: expected a torch.Tensor, got {type(x).__name__}")
    if J.dim() != 4 or J.shape[-1] != J.shape[-2]:
        raise ValueError(f"J: expected shape (T, N, M, M), got {tuple(J.shape)}")
    if tuple(r.shape) != tuple(J.shape[:3]):
        raise ValueError(f"r: expected shape (T, N, M) = {tuple(J.shape[:3])}, "
                         f"got {tuple(r.shape)}")
    # (0, inf): finite and > 0; a wrong type raises OptionTypeError, a ValueError too
    check_number(None, "sigma2", sigma2, 0, math.inf, low_open=True)


def _sym(X: torch.Tensor) -> torch.Tensor:
    return 0.5 * (X + X.transpose(-1, -2))


def _mv(X: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product: ``(..., M, K) x (..., K) -> (..., M)``."""
    return (X @ v.unsqueeze(-1)).squeeze(-1)


def _filter_combine(earlier, later):
    """Blocks stored as ([A | b], C, [Jn | eta]): ``(..., M, M+1), (..., M, M), (..., M, M+1)``,
    so that each product below is one batched matmul."""
    Ab1, C1, Je1 = earlier
    Ab2, C2, Je2 = later
    M = C1.shape[-1]
    eye = torch.eye(M, dtype=C1.dtype, device=C1.device)
    CJe = C1 @ Je2  # [C_i Jn_j | C_i eta_j]: (..., M, M+1)
    rhs = torch.cat((Ab1, C1), dim=-1)  # [A_i | b_i | C_i]: (..., M, 2M+1)
    rhs[..., M] += CJe[..., M]
    W = torch.linalg.solve(eye + CJe[..., :M], rhs)  # [W A_i | W (b_i + C_i eta_j) | W C_i]
    AW = Ab2[..., :M] @ W  # [A_j W A_i | A_j W (b_i + C_i eta_j) | A_j W C_i]: (..., M, 2M+1)
    Ab = AW[..., :M + 1].clone()  # (..., M, M+1)
    Ab[..., M] += Ab2[..., M]
    C = _sym(AW[..., M + 1:] @ Ab2[..., :M].transpose(-1, -2)) + C2
    JAb = Je2[..., :M] @ Ab1  # [Jn_j A_i | Jn_j b_i] -> [Jn_j A_i | eta_j - Jn_j b_i]
    JAb[..., M] = Je2[..., M] - JAb[..., M]
    Je = W[..., :M].transpose(-1, -2) @ JAb + Je1  # (..., M, M+1)
    Je[..., :M] = _sym(Je[..., :M])
    return Ab, C, Je


def _filter_combine_scalar(earlier, later):
    A1, b1, C1, e1, J1 = earlier
    A2, b2, C2, e2, J2 = later
    den = 1.0 + C1 * J2
    wa = A1 / den
    return (A2 * wa, A2 * (b1 + C1 * e2) / den + b2, A2 * A2 * C1 / den + C2,
            wa * (e2 - J2 * b1) + e1, wa * J2 * A1 + J1)


def _smooth_combine(later, earlier):
    """Reverse-scan order: the later-in-time suffix comes first (``associative_scan``); the
    element is stored as [E | g] ``(..., M, M+1)``."""
    Eg = earlier[0][..., :-1] @ later[0]  # [E_t E_s | E_t g_s]
    Eg[..., -1] += earlier[0][..., -1]
    return (Eg,)


def _smooth_combine_scalar(later, earlier):
    Es, gs = later
    Et, gt = earlier
    return Et * Es, Et * gs + gt


def _smooth_blocks(F, r, sigma2):
    """M >= 2: F ``(T, N, M, M)`` (F[0] = 0), r ``(T, N, M)`` float64 -> means ``(T, N, M)``."""
    c, k = sigma2 / (1.0 + sigma2), 1.0 / (1.0 + sigma2)
    M = F.shape[-1]
    eye = torch.eye(M, dtype=F.dtype, device=F.device)
    Fr = torch.cat((F, r.unsqueeze(-1)), dim=-1)  # [F | r]: (T, N, M, M+1)
    Ft = F.transpose(-1, -2)
    Je = k * (Ft @ Fr)  # [F^T F | F^T r]: (T, N, M, M+1)
    Je[..., M] = -Je[..., M]
    elems = (c * Fr, (c * eye).expand_as(F), Je)
    mb, P, _ = associative_scan(_filter_combine, elems, dim=0)
    m = mb[..., M]  # the prefixes have A = 0 and b = m_t: (T, N, M)
    # RTS gains for t < T-1: E_t^T = (F_{t+1} P_t F_{t+1}^T + I)^{-1} F_{t+1} P_t
    FP = F[1:] @ P[:-1]  # (T-1, N, M, M)
    E = torch.linalg.solve(_sym(FP @ Ft[1:]) + eye, FP).transpose(-1, -2)
    g = m[:-1] - _mv(E, _mv(F[1:], m[:-1]) + r[1:])
    Eg = torch.cat((E, g.unsqueeze(-1)), dim=-1)  # [E | g]: (T-1, N, M, M+1)
    last = torch.cat((torch.zeros_like(F[-1:]), m[-1:].unsqueeze(-1)), dim=-1)  # E = 0, g = m
    Eg = torch.cat((Eg, last))  # (T, N, M, M+1)
    return associative_scan(_smooth_combine, (Eg,), dim=0, reverse=True)[0][..., M]


def _smooth_scalars(F, r, sigma2):
    """M = 1: F, r ``(T, N)`` float64 (F[0] = 0) -> means ``(T, N)``."""
    c, k = sigma2 / (1.0 + sigma2), 1.0 / (1.0 + sigma2)
    elems = (c * F, c * r, torch.full_like(F, c), -k * F * r, k * F * F)
    _, m, P, _, _ = associative_scan(_filter_combine_scalar, elems, dim=0)
    E = P[:-1] * F[1:] / (F[1:] * F[1:] * P[:-1] + 1.0)  # (T-1, N)
    g = m[:-1] - E * (F[1:] * m[:-1] + r[1:])
    E = torch.cat((E, torch.zeros_like(F[:1])))  # (T, N)
    g = torch.cat((g, m[-1:]))
    return associative_scan(_smooth_combine_scalar, (E, g), dim=0, reverse=True)[1]


def parallel_smoother(J: torch.Tensor, r: torch.Tensor, sigma2: float) -> torch.Tensor:
    """Smoothed means of the model in the module docstring, by two associative scans.

    Args:
        J: ``(T, N, M, M)`` transition blocks F_t (F_0 is ignored: x_{-1} = 0).
        r: ``(T, N, M)`` offsets r_t.
        sigma2: observation variance (ELK's 1 / lambda), a finite number > 0.

    Returns:
        ``(T, N, M)`` smoothed means, in r's dtype (computed in float64).
    """
    _check(J, r, sigma2)
    if J.shape[0] == 0:
        return r.clone()
    F = J.double().clone()
    F[0] = 0.0  # the first step's prior is N(r_0, I): no previous state to map
    rr = r.double()
    if J.shape[-1] == 1:
        return _smooth_scalars(F[..., 0, 0], rr[..., 0], float(sigma2)).unsqueeze(-1).to(r.dtype)
    return _smooth_blocks(F, rr, float(sigma2)).to(r.dtype)


def smoother_reference(J: torch.Tensor, r: torch.Tensor, sigma2: float) -> torch.Tensor:
    """The same smoothed means by one filter sweep forward and one RTS sweep back (the reference,
    float64): J ``(T, N, M, M)``, r ``(T, N, M)`` -> ``(T, N, M)`` in r's dtype."""
    _check(J, r, sigma2)
    T, N, M, _ = J.shape
    if T == 0:
        return r.clone()
    J, rr = J.double(), r.double()
    eye = torch.eye(M, dtype=J.dtype, device=J.device)
    mean = rr.new_zeros(N, M)
    cov = J.new_zeros(N, M, M)
    means, preds, gains = [], [], [None]
    for t in range(T):
        pred = _mv(J[t], mean) + rr[t]
        pcov = J[t] @ cov @ J[t].transpose(-1, -2) + eye
        if t > 0:
            gains.append(torch.linalg.solve(pcov, J[t] @ cov).transpose(-1, -2))
        inv = torch.linalg.inv(pcov + sigma2 * eye)
        mean = sigma2 * _mv(inv, pred)
        cov = _sym(sigma2 * (inv @ pcov))
        means.append(mean)
        preds.append(pred)
    out = [means[-1]]
    for t in range(T - 2, -1, -1):
        out.append(means[t] + _mv(gains[t + 1], out[-1] - preds[t + 1]))
    return torch.stack(out[::-1]).to(r.dtype)  # T x (N, M) -> (T, N, M)
