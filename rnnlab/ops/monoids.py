"""Monoids for :func:`rnnlab.ops.associative_scan` (see linear_models.md §0).

Each family gives: a leaf constructor (inputs at each step -> scan elements), ``*_combine(a, b)``
with ``a`` the earlier and ``b`` the later element, ``*_identity(elems)`` (identity elements
shaped like ``elems``), and a function turning the scanned elements into the recurrence's
outputs. All element tensors are ``(B, T, ...)``; combines broadcast over every leading dim, so
they work on any time length (the scan passes slices) and with the time dim anywhere.

- affine (diagonal): ``h_t = a_t ⊙ h_{t-1} + b_t``; element (a, b).
- matrix affine: ``h_t = A_t h_{t-1} + b_t``; element (A, b); O(N³) per combine.
- Aaren (softmax attention as an RNN): element (m, u, w) with a max stabilizer m.
- MinMax: element (r, s), the map ``x -> max(min(r, x), s)``; not commutative.
- mLSTM, stabilized: element (g, m, C̃, ñ) with g the summed log forget gates.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import torch

Elems = Tuple[torch.Tensor, ...]


class Monoid(NamedTuple):
    """A combine and its identity, for code (and tests) that loop over all monoids."""
    combine: Callable[[Elems, Elems], Elems]  # combine(earlier, later) -> composed
    identity: Callable[[Elems], Elems]  # identity(elems) -> identity elements shaped like elems


def _stable_max(m_a: torch.Tensor, m_b: torch.Tensor):
    """``m = max(m_a, m_b)`` and an offset to subtract before exponentiating: m itself, except 0
    where m is −∞ (both operands −∞, e.g. two identities), so ``m_a − offset`` is −∞ (its
    exponential 0) instead of ``−∞ − (−∞) = nan``."""
    m = torch.maximum(m_a, m_b)
    return m, torch.where(torch.isneginf(m), torch.zeros_like(m), m)


def _apply_at(x0: Optional[torch.Tensor], like: torch.Tensor, dim: int,
              name: str) -> torch.Tensor:
    """The initial value ``(B, ...)`` with a time dim inserted at ``dim``: ``(B, 1, ...)``."""
    if x0 is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    dim = dim % like.dim()
    expected = tuple(like.shape[:dim] + like.shape[dim + 1:])
    if tuple(x0.shape) != expected:
        raise ValueError(f"{name}: expected shape {expected} (the scanned shape without its time "
                         f"dim {dim}), got {tuple(x0.shape)}")
    return x0.unsqueeze(dim)  # (B, ...) -> (B, 1, ...)


# --- diagonal affine: h_t = a_t ⊙ h_{t-1} + b_t -------------------------------------------

def affine_combine(a: Elems, b: Elems) -> Elems:
    """(a_a, b_a) then (a_b, b_b): ``(a_b a_a, a_b b_a + b_b)``; all tensors ``(B, T, ...)``."""
    (a_a, b_a), (a_b, b_b) = a, b
    return a_b * a_a, a_b * b_a + b_b


def affine_identity(elems: Elems) -> Elems:
    return torch.ones_like(elems[0]), torch.zeros_like(elems[1])


def affine_apply(a: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                 dim: int = 1) -> torch.Tensor:
    """States from the scanned (a, b), each ``(B, T, D)``: ``h_t = a_t ⊙ h0 + b_t``; h0 ``(B, D)``
    (zeros when None)."""
    return a * _apply_at(h0, b, dim, "h0") + b


# --- general affine: h_t = A_t h_{t-1} + b_t ----------------------------------------------

def matrix_affine_combine(a: Elems, b: Elems) -> Elems:
    """(A_a, b_a) then (A_b, b_b): ``(A_b A_a, A_b b_a + b_b)``; A ``(B, T, ..., N, N)``, b
    ``(B, T, ..., N)``. Costs O(N³) per element, against O(N²) for one sequential step."""
    (A_a, b_a), (A_b, b_b) = a, b
    return A_b @ A_a, (A_b @ b_a.unsqueeze(-1)).squeeze(-1) + b_b  # (..., N, 1) -> (..., N)


def matrix_affine_identity(elems: Elems) -> Elems:
    A, b = elems
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return eye.expand_as(A).clone(), torch.zeros_like(b)


def matrix_affine_apply(A: torch.Tensor, b: torch.Tensor, h0: Optional[torch.Tensor] = None,
                        dim: int = 1) -> torch.Tensor:
    """States ``h_t = A_t h0 + b_t`` from the scanned A ``(B, T, ..., N, N)``, b ``(B, T, ..., N)``;
    h0 ``(B, ..., N)`` (zeros when None)."""
    if h0 is None:
        return b
    h0 = _apply_at(h0, b, dim, "h0")  # (B, ..., N) -> (B, 1, ..., N)
    return (A @ h0.unsqueeze(-1)).squeeze(-1) + b  # (..., N, 1) -> (..., N)


# --- Aaren: o_k = Σ_{i≤k} e^{s_i} v_i / Σ_{i≤k} e^{s_i} -----------------------------------

def aaren_leaf(s: torch.Tensor, v: torch.Tensor) -> Elems:
    """Scores s ``(B, T, ...)``, values v ``(B, T, ..., V)`` -> leaves ``(m, u, w) = (s, 1, v)``."""
    return s, torch.ones_like(s), v


def aaren_combine(a: Elems, b: Elems) -> Elems:
    """``m = max(m_a, m_b)``, ``u = u_a e^{m_a−m} + u_b e^{m_b−m}``, w likewise; m, u ``(B, T,
    ...)``, w ``(B, T, ..., V)``. Exponents are ≤ 0, so scores of any size cannot overflow."""
    (m_a, u_a, w_a), (m_b, u_b, w_b) = a, b
    m, offset = _stable_max(m_a, m_b)
    e_a, e_b = torch.exp(m_a - offset), torch.exp(m_b - offset)
    return m, u_a * e_a + u_b * e_b, w_a * e_a.unsqueeze(-1) + w_b * e_b.unsqueeze(-1)


def aaren_identity(elems: Elems) -> Elems:
    m, u, w = elems
    return torch.full_like(m, float("-inf")), torch.zeros_like(u), torch.zeros_like(w)


def aaren_output(m: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``o = w / u``: ``(B, T, ..., V)``. m is not needed (it cancels); u ≥ 1 after any leaf."""
    return w / u.unsqueeze(-1)


# --- MinMax: x_t = max(min(r_t, x_{t-1}), s_t) --------------------------------------------

def minmax_leaf(r: torch.Tensor, s: torch.Tensor) -> Elems:
    """Per-step bounds r, s ``(B, T, D)`` -> leaves (r, s), the map ``x -> max(min(r, x), s)``."""
    return r, s


def minmax_combine(a: Elems, b: Elems) -> Elems:
    """Apply a, then b: ``(min(r_b, r_a), max(min(r_b, s_a), s_b))``, by distributivity of min
    over max. Not commutative. Tensors ``(B, T, D)``."""
    (r_a, s_a), (r_b, s_b) = a, b
    return torch.minimum(r_b, r_a), torch.maximum(torch.minimum(r_b, s_a), s_b)


def minmax_identity(elems: Elems) -> Elems:
    r, s = elems
    return torch.full_like(r, float("inf")), torch.full_like(s, float("-inf"))


def minmax_apply(R: torch.Tensor, S: torch.Tensor, x0: Optional[torch.Tensor] = None,
                 dim: int = 1) -> torch.Tensor:
    """``x_t = max(min(R_t, x0), S_t)`` from the scanned (R, S) ``(B, T, D)``; x0 ``(B, D)``,
    zeros when None (as in the paper)."""
    return torch.maximum(torch.minimum(R, _apply_at(x0, R, dim, "x0")), S)


# --- mLSTM, stabilized: C̃ = C e^{−m} ------------------------------------------------------

def mlstm_leaf(log_f: torch.Tensor, i_tilde: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> Elems:
    """Log forget gates and input pre-activations ``(B, T, ...)``, keys k ``(B, T, ..., K)``,
    values v ``(B, T, ..., V)`` -> leaves ``(g, m, C̃, ñ) = (log f, ĩ, k vᵀ, k)``, with C̃
    ``(B, T, ..., K, V)`` (fla layout, read out as C̃ᵀq) and ñ ``(B, T, ..., K)``.

    An initial state (C̃₀, ñ₀, m₀) enters as one more, earlier, element (0, m₀, C̃₀, ñ₀)."""
    return log_f, i_tilde, k.unsqueeze(-1) * v.unsqueeze(-2), k  # (..., K, 1)·(..., 1, V)


def mlstm_combine(a: Elems, b: Elems) -> Elems:
    """``g = g_a + g_b``, ``m = max(m_a + g_b, m_b)``, ``C̃ = e^{m_a+g_b−m} C̃_a + e^{m_b−m} C̃_b``,
    ñ likewise. g, m ``(B, T, ...)``; C̃ ``(B, T, ..., K, V)``; ñ ``(B, T, ..., K)``."""
    (g_a, m_a, C_a, n_a), (g_b, m_b, C_b, n_b) = a, b
    carried = m_a + g_b  # a's stabilizer after b's forget gates
    m, offset = _stable_max(carried, m_b)
    e_a, e_b = torch.exp(carried - offset), torch.exp(m_b - offset)  # (...)
    C = C_a * e_a[..., None, None] + C_b * e_b[..., None, None]
    n = n_a * e_a.unsqueeze(-1) + n_b * e_b.unsqueeze(-1)
    return g_a + g_b, m, C, n


def mlstm_identity(elems: Elems) -> Elems:
    g, m, C, n = elems
    return torch.zeros_like(g), torch.full_like(m, float("-inf")), torch.zeros_like(C), \
        torch.zeros_like(n)


def mlstm_output(m: torch.Tensor, C: torch.Tensor, n: torch.Tensor,
                 q: torch.Tensor) -> torch.Tensor:
    """``h̃ = C̃ᵀq / max(|ñᵀq|, e^{−m})`` (= Cᵀq / max(|nᵀq|, 1) for the unstabilized C, n):
    m ``(B, T, ...)``, C ``(B, T, ..., K, V)``, n and q ``(B, T, ..., K)`` -> ``(B, T, ..., V)``."""
    num = (C * q.unsqueeze(-1)).sum(-2)  # (..., K, V) -> (..., V)
    den = torch.maximum((n * q).sum(-1).abs(), torch.exp(-m))  # (...)
    return num / den.unsqueeze(-1)


MONOIDS = {
    "affine": Monoid(affine_combine, affine_identity),
    "matrix_affine": Monoid(matrix_affine_combine, matrix_affine_identity),
    "aaren": Monoid(aaren_combine, aaren_identity),
    "minmax": Monoid(minmax_combine, minmax_identity),
    "mlstm": Monoid(mlstm_combine, mlstm_identity),
}
