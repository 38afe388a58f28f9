"""PD-SSM (Terzić et al. 2025): a selective SSM whose transition is permutation-diagonal,

    h_t = A_t h_{t-1} + B x_t,   A_t = D_t P_t,   y_t = Re(C h_t)

per head, with P_t one-hot per row (each state entry reads one source entry) and D_t diagonal,
|d| < 1. PD matrices are closed under products and compose in O(N) (``ops/pd_scan.py``), so the
scan engine prefix-scans the elements (index, value, b) with that combine; and one layer can
track non-solvable groups (S5, A5 word problems), which diagonal transitions cannot (Merrill et
al. 2026: PD linear RNNs are NC^1-complete).

P_t from the input, as in PD-SSM: softmax weights s_t over a dictionary of K learned N x N score
matrices, M_t = sum_k s_tk M_k, and a hardmax over each row of M_t picks the source column.

**Gradient of the hardmax: two estimators** (option ``estimator``).

- ``"straight_through"`` (PD-SSM's): the forward is the hard PD step with |A_ij| = |d_i|; the
  backward is that of the dense ``diag(d) (P + S - sg(S))``, S the row softmax. To keep that
  gradient inside an O(N)-index scan, each element also carries ``E = diag(d) (S - sg(S))``:
  a dense N x N tensor whose values are exactly 0, composed to first order (``A_b E_a + E_b
  A_a``, and ``E_b b_a`` in the bias; ``E_b E_a`` is second order, 0 in value and gradient). So
  the scan and the step give the paper's gradient ``g_t h_{t-1}^T`` to S_t identically, at
  O(N^2) per combine. That scan measured slower than the loop, so this mode declares ``Dense()``
  (the sequential engine, or Newton, runs it; the test suite still checks its scan). It is not
  the derivative of the forward, so finite differences (gradcheck) disagree by design.
- ``"exact"`` (default): the chosen entry is scaled by its softmax probability to a small power,
  ``|A_i,index_i| = |d_i| p_i^gamma`` (gamma = ``confidence``): still exactly PD and O(N) per
  combine, with the true gradient (gradcheck holds), reaching the dictionary and the selection
  through p (a wrong source lowers its p and raises its rivals' until the argmax moves).
  gamma = 0 would be the plain hardmax, whose dictionary then gets no gradient at all.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..checks import check_choice
from ..ops.pd_scan import pd_combine, pd_constant, pd_identity
from .base import Dense
from .monoid import MonoidCell
from .options import check_range
from .registry import register

ESTIMATORS = ("exact", "straight_through")
STARTS = ("zero", "one_hot")


def _first_order(a, b):
    """``pd_combine`` plus the zero-valued dense corrections E ``(..., N, N)`` of the
    straight-through mode, to first order: ``A_b E_a + E_b A_a`` and ``E_b b_a``."""
    (i_a, v_a, b_a, E_a), (i_b, v_b, _, E_b) = a, b
    index, value, bias = pd_combine(a[:3], b[:3])
    lead = torch.broadcast_shapes(E_a.shape[:-1], E_b.shape[:-1])  # (..., N)
    N = E_a.shape[-1]
    rows = i_b.unsqueeze(-1).expand(*lead, N)  # row i of A_b E_a is v_b[i] E_a[i_b[i], :]
    AE = v_b.unsqueeze(-1) * E_a.expand(*lead, N).gather(-2, rows)
    cols = i_a.unsqueeze(-2).expand(*lead, N)  # (E_b A_a)[:, i_a[j]] += E_b[:, j] v_a[j]
    src = (E_b * v_a.unsqueeze(-2)).expand(*lead, N)
    EA = torch.zeros_like(src).scatter_add(-1, cols, src)
    bias = bias + (E_b @ b_a.unsqueeze(-1)).squeeze(-1)  # (..., N, 1) -> (..., N)
    return index, value, bias, AE + EA


class _Spread(torch.autograd.Function):
    """``(S - sg(S)) h`` of the straight-through step, ``S (.., N, N)``, ``h (.., N, C)`` real:
    zero in value, so nothing is computed forward, and backward S gets ``g h^T`` and h nothing
    (its factor ``S - sg(S)`` is zero). Autograd through the plain product spent two of its
    three N x N products on zeros, the forward and h's gradient: an arena training step (2
    layers, d 64, B 64, T 64, complex, N = 64, one thread) took 410 ms with them, 306 without."""

    generate_vmap_rule = True  # Newton differentiates the step under torch.func

    @staticmethod
    def forward(soft, h):
        return torch.zeros_like(h)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        return grad @ h.transpose(-1, -2), None  # (.., N, C) @ (.., C, N)

    @staticmethod
    def jvp(ctx, d_soft, d_h):  # the tangent of (S - sg(S)) h is dS h
        (h,) = ctx.saved_tensors
        return torch.zeros_like(h) if d_soft is None else d_soft @ h


@register("pd_ssm")
class PDSSM(MonoidCell):
    """PD-SSM cell. State ``h: (B, heads, N)``, real or (``complex=True``) complex;
    ``u_t: (B, P)`` with P = heads * (K + 2N) (complex: K + 4N): selection logits, magnitude (and
    phase) pre-activations, and B x_t. H is the read-out width.

    Args:
        state_size: N, the state per head (the permutations act on N entries).
        heads: independent PD blocks.
        dictionary_size: K, the learned score matrices P_t is selected from.
        complex: complex diagonal with a learned phase (as the paper); real (0, 1) otherwise.
        estimator: the hardmax's gradient, "exact" or "straight_through" (see the module).
        confidence: gamma in [0, 1], the power of the chosen entry's softmax probability in |A|
            (``estimator="exact"`` only: refused with the straight-through one, which has no
            such power); None: 0.25.
        start: the state before the first step, ``"zero"`` or ``"one_hot"`` (e_0 in every head,
            the paper's): an automaton's start state, which the transitions then move around.

    Paper: Terzić, Hersche, Camposampiero, Hofmann, Sebastian, Rahimi, "Structured Sparse
    Transition Matrices to Enable State Tracking in State-Space Models", NeurIPS 2025,
    https://arxiv.org/abs/2509.22284

    Example (the scan engine's O(N)-per-combine prefix scan gives the step-by-step outputs):

    >>> import torch, rnnlab
    >>> cell = rnnlab.cells.get("pd_ssm", 3, 8, state_size=5, heads=2)
    >>> x = torch.randn(2, 7, 3)  # (B, T, D)
    >>> y, h = rnnlab.Recurrent(cell, engine="scan")(x)
    >>> y.shape, h.shape
    (torch.Size([2, 7, 8]), torch.Size([2, 2, 5]))
    >>> torch.allclose(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], atol=1e-5)
    True
    """

    def __init__(self, input_size: int, hidden_size: int, state_size: int = 16, heads: int = 4,
                 dictionary_size: int = 8, complex: bool = False, estimator: str = "exact",
                 confidence: Optional[float] = None, start: str = "zero", device=None,
                 dtype=None):
        super().__init__(input_size, hidden_size)
        owner = type(self).__name__
        check_range(owner, "state_size", state_size, 1)
        check_range(owner, "heads", heads, 1)
        check_range(owner, "dictionary_size", dictionary_size, 1)
        check_choice(owner, "estimator", estimator, ESTIMATORS)
        if confidence is not None and estimator == "straight_through":
            raise ValueError(f"{owner}: confidence applies to estimator='exact' only, got "
                             f"confidence={confidence!r} with estimator='straight_through'")
        confidence = 0.25 if confidence is None else confidence
        check_range(owner, "confidence", confidence, 0.0, 1.0)
        check_choice(owner, "start", start, STARTS)
        self.start = start
        self.straight = estimator == "straight_through"
        if self.straight:
            # Carrying E makes a combine O(N^2) and the scan measured ~2x slower than the loop
            # (fwd+bwd, B=32, T=256, H=64, CPU): declared Dense, this mode runs step by step
            # (or on Newton), never on a scan that loses to the loop.
            self.structure = Dense()
        self.N, self.heads, self.K = state_size, heads, dictionary_size
        self.complex, self.confidence = complex, float(confidence)
        kw = dict(device=device, dtype=dtype)
        parts = 4 if complex else 2  # magnitude, (phase), b (real, imaginary)
        self.proj = nn.Linear(input_size, heads * (dictionary_size + parts * state_size), **kw)
        # Scores of std 1/sqrt(N), as the paper's: the row softmax starts near uniform, where its
        # (straight-through) gradient is largest; std 1 starts it saturated.
        self.dictionary = nn.Parameter(torch.randn(heads, dictionary_size, state_size,
                                                   state_size, **kw) / state_size ** 0.5)
        self.out = nn.Linear(heads * state_size * (2 if complex else 1), hidden_size, bias=False,
                             **kw)
        with torch.no_grad():  # start with long memory: |d| = sigmoid(3) ~ 0.95
            self.proj.bias[heads * dictionary_size:heads * (dictionary_size + state_size)] = 3.0

    def state_shapes(self):
        return ((self.heads, self.N),)

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32, device=None):
        if self.complex:
            dtype = torch.promote_types(dtype, torch.complex64)
        h = torch.zeros(batch, self.heads, self.N, dtype=dtype, device=device)
        if self.start == "one_hot":
            h[..., 0] = 1
        return h

    def project(self, x):
        return self.proj(x)  # (B, T, D) -> (B, T, P)

    def _parts(self, u):
        """``index, value, b`` (each ``(B, T, heads, N)``: row i of A_t reads entry index[i])
        and, while the straight-through correction is carried, the row softmax ``S`` of the
        scores ``(B, T, heads, N, N)`` (else None)."""
        h, N, K = self.heads, self.N, self.K
        sel, rest = u.split([h * K, u.shape[-1] - h * K], dim=-1)
        rest = rest.unflatten(-1, (-1, h, N))  # (B, T, parts, heads, N)
        s = torch.softmax(sel.unflatten(-1, (h, K)), dim=-1)  # (B, T, heads, K)
        scores = torch.einsum("bthk,hkij->bthij", s, self.dictionary)  # (.., N, N)
        magnitude = torch.sigmoid(rest[:, :, 0])
        if self.straight:
            index = scores.argmax(dim=-1)  # (B, T, heads, N)
        else:
            log_p, index = torch.log_softmax(scores, dim=-1).max(dim=-1)  # (B, T, heads, N)
            magnitude = magnitude * torch.exp(self.confidence * log_p)
        value, b = magnitude, rest[:, :, 1]
        if self.complex:
            value = torch.polar(magnitude, rest[:, :, 1])  # |d| e^{i theta}
            b = torch.complex(rest[:, :, 2], rest[:, :, 3])
        soft = torch.softmax(scores, dim=-1) if self._carries_correction() else None
        return index, value, b, soft

    def elements(self, u):
        """``(index, value, b)``, each ``(B, T, heads, N)``, and in the straight-through mode
        (under autograd) ``E = diag(value) (S - sg(S))``, ``(B, T, heads, N, N)``, zero."""
        index, value, b, soft = self._parts(u)
        if soft is None:
            return index, value, b
        return index, value, b, value.unsqueeze(-1) * (soft - soft.detach())  # zeros (.., N, N)

    def step(self, u_t, h):
        """The straight-through step without the complex N x N E: ``h' = value * h[index] + b +
        value * ((S - sg(S)) h)``, the same values and gradients as composing the state with
        the step's element (``_first_order``), for a real matrix-vector product a step. Forward
        and backward at B = 64, T = 40, complex, against composing elements: 0.51 -> 0.28 s at
        N = 64, 2.6 -> 0.96 s at N = 128 (back to back, machine shared)."""
        if not self._carries_correction():
            return super().step(u_t, h)
        index, value, b, soft = (p[:, 0] for p in self._parts(u_t.unsqueeze(1)))  # (B, 1, ..)
        moved = pd_combine(pd_constant(h), (index, value, b))[2]  # A h + b
        soft = soft.to(h.real.dtype)  # (B, heads, N, N)
        if h.is_complex():  # a real matrix on the real and imaginary parts: (.., N, 2)
            spread = torch.view_as_complex(_Spread.apply(soft, torch.view_as_real(h)))
        else:
            spread = _Spread.apply(soft, h.unsqueeze(-1)).squeeze(-1)  # (.., N, 1)
        return moved + value * spread

    def _carries_correction(self) -> bool:
        """Whether elements carry the straight-through correction E: only while autograd
        records (E is zero in value; without a graph it would be dead weight)."""
        return self.straight and torch.is_grad_enabled()

    def combine(self, a, b):
        return _first_order(a, b) if len(a) == len(b) == 4 else pd_combine(a[:3], b[:3])

    def identity(self, elems):
        ident = pd_identity(elems[:3])
        return (*ident, torch.zeros_like(elems[3])) if len(elems) == 4 else ident

    def to_element(self, h):
        const = pd_constant(h)
        if not self._carries_correction():
            return const
        return (*const, torch.zeros(*h.shape, h.shape[-1], dtype=h.dtype, device=h.device))

    def from_element(self, e):
        return e[2]

    def readout(self, h, u_t):
        flat = h.flatten(-2)  # (..., heads, N) -> (..., heads * N)
        if self.complex:
            flat = torch.cat([flat.real, flat.imag], dim=-1)  # Re(C h) with C = Cr + i Ci
        return self.out(flat)  # (..., H)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, state_size={self.N}, heads={self.heads}, "
                f"dictionary_size={self.K}, complex={self.complex}, "
                f"estimator={'straight_through' if self.straight else 'exact'}, "
                + ("" if self.straight else f"confidence={self.confidence}, ")
                + f"start={self.start}")
