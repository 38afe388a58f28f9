"""Factored transitions: what a linear cell declares so that the scan engine can run a chunkwise
(matmul-shaped), fused or convolutional form instead of materialising every step's state.

A cell with a factored form writes ``factors(u) -> Factors`` (one of the classes below, tensors
for the whole sequence ``(B, T, ...)``) and ``finish(o, u) -> y`` (the read-out factor ``o`` of
each step to the cell's output, e.g. a skip ``D x`` or an output gate). ``LinearCell`` derives
``transition``, ``step`` and ``readout`` from the same two methods, so the sequential engine, the
materialising scan and the fast ops compute one declared recurrence.

Each class names the ``Linear(kind)`` its cell must declare (``kind``) and gives
``transition() -> (A, b)`` (the materialised ``h_t = A_t h_{t-1} + b_t`` in the
layout ``Linear(kind)`` asks for) and ``read(h) -> o`` for states with a time dim ``(B, T, ...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from ..ops.monoids import mlstm_leaf, mlstm_output


@dataclass(frozen=True)
class OuterProduct:
    """``S_t = diag(a_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` per head (GLA, Mamba-2,
    simple GLA, RetNet). Kind ``diagonal`` for a decay per key, ``scalar`` for one per head.

    - q, k: ``(B, T, heads, K)``; v: ``(B, T, heads, V)``; o: ``(B, T, heads, V)``.
    - g: the log-decay, ``a = exp(g)``, ``(B, T, heads, K)`` (per key) or ``(B, T, heads)`` (per
      head). A decay that can be negative (eigenvalues in [-1, 1]) has no real log: give it as
      ``a`` instead (and g None); the engine then runs the materialising scan.
    - transposed: the cell keeps its state as ``(B, heads, V, K)`` (Mamba-2's ``(P, N)``)
      instead of ``(B, heads, K, V)``.
    """
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: Optional[torch.Tensor] = None
    a: Optional[torch.Tensor] = None
    transposed: bool = False

    def __post_init__(self):
        if (self.g is None) == (self.a is None):
            raise ValueError("OuterProduct: give exactly one of g (log-decay) and a (decay)")

    @property
    def kind(self) -> str:
        return "diagonal" if self.per_key else "scalar"

    @property
    def decay(self) -> torch.Tensor:
        return torch.exp(self.g) if self.a is None else self.a

    @property
    def per_key(self) -> bool:
        return (self.g if self.a is None else self.a).dim() == self.k.dim()

    def transition(self):
        a = self.decay  # (B, T, heads[, K])
        if self.transposed:
            b = self.v.unsqueeze(-1) * self.k.unsqueeze(-2)  # (B, T, heads, V, K)
            return (a.unsqueeze(-2) if self.per_key else a), b
        b = self.k.unsqueeze(-1) * self.v.unsqueeze(-2)  # (B, T, heads, K, V)
        return (a.unsqueeze(-1) if self.per_key else a), b

    def read(self, S: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return (S * self.q.unsqueeze(-2)).sum(-1)  # (.., V, K) -> (.., V)
        return (S * self.q.unsqueeze(-1)).sum(-2)  # (.., K, V) -> (.., V)


@dataclass(frozen=True)
class StabilizedOuterProduct:
    """mLSTM's stabilised matrix memory (kind ``monoid``), state ``(C~, n~, m)``::

        m_t = max(log_f_t + m_{t-1}, i_t)
        C~_t = e^{log_f_t + m_{t-1} - m_t} C~_{t-1} + e^{i_t - m_t} k_t v_t^T   (n~ likewise, k_t)
        o_t = C~_t^T q_t / max(|n~_t^T q_t|, e^{-m_t})

    q, k: ``(B, T, heads, K)``; v: ``(B, T, heads, V)``; i (input pre-activation) and log_f:
    ``(B, T, heads)``. ``transition`` gives the monoid leaves (see ``ops.monoids``)."""
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    i: torch.Tensor
    log_f: torch.Tensor
    kind = "monoid"

    def transition(self):
        return mlstm_leaf(self.log_f, self.i, self.k, self.v)

    def read(self, h) -> torch.Tensor:
        C, n, m = h
        return mlstm_output(m, C, n, self.q)  # (B, T, heads, V)


@dataclass(frozen=True)
class Selective:
    """Mamba's S6 per channel d and state index n (kind ``diagonal``, state ``(B, H, N)``)::

        h_t[d, n] = a_t[d, n] h_{t-1}[d, n] + dt_t[d] x_t[d] B_t[n],   a = exp(dt_t[d] A[d, n])
        o_t[d] = sum_n C_t[n] h_t[d, n]

    (``a -> 2a - 1`` with ``neg_eigval``). x, dt: ``(B, T, H)``; A: ``(H, N)``; B, C:
    ``(B, T, N)``, shared by the channels; o: ``(B, T, H)``."""
    x: torch.Tensor
    dt: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    neg_eigval: bool = False
    kind = "diagonal"

    def transition(self):
        a = torch.exp(self.dt.unsqueeze(-1) * self.A)  # (B, T, H, N)
        if self.neg_eigval:
            a = 2 * a - 1
        b = (self.dt * self.x).unsqueeze(-1) * self.B.unsqueeze(-2)  # (B, T, H, 1) * (B, T, 1, N)
        return a, b

    def read(self, h: torch.Tensor) -> torch.Tensor:
        return (h * self.C.unsqueeze(-2)).sum(-1)  # (B, T, H, N) -> (B, T, H)


@dataclass(frozen=True)
class TimeInvariant:
    """A time-invariant SSM per channel (S4D, DLR, LSSL), run as a long convolution::

        x_t = A x_{t-1} + B u_t,   o_t = Re(C . x_t)

    u: ``(B, T, H)``; diagonal form (kind ``complex_diagonal``): A, B, C ``(H, N)`` complex;
    dense form (kind ``matrix``): A ``(H, N, N)``, B, C ``(H, N)`` real. o: ``(B, T, H)``."""
    u: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor

    @property
    def dense(self) -> bool:
        return self.A.dim() == 3

    @property
    def kind(self) -> str:
        return "matrix" if self.dense else "complex_diagonal"

    def transition(self):
        b = self.B * self.u.unsqueeze(-1)  # (B, T, H, 1) -> (B, T, H, N)
        if self.dense:
            return self.A.expand(*b.shape, b.shape[-1]), b  # (B, T, H, N, N)
        return self.A.expand_as(b), b

    def read(self, h: torch.Tensor) -> torch.Tensor:
        o = (h * self.C).sum(-1)  # (B, T, H, N) -> (B, T, H)
        return o.real if o.is_complex() else o


@dataclass(frozen=True)
class MinMaxBounds:
    """The MinMax neuron, elementwise (kind ``monoid``): ``x_t = max(min(r_t, x_{t-1}), s_t)``,
    o_t = x_t. r, s: ``(B, T, H)``; ``transition`` gives the (r, s) monoid leaves."""
    r: torch.Tensor
    s: torch.Tensor
    kind = "monoid"

    def transition(self):
        return self.r, self.s

    def read(self, x: torch.Tensor) -> torch.Tensor:
        return x


Factors = Union[OuterProduct, StabilizedOuterProduct, Selective, TimeInvariant, MinMaxBounds]
FACTOR_TYPES: Tuple[type, ...] = (OuterProduct, StabilizedOuterProduct, Selective, TimeInvariant,
                                  MinMaxBounds)
