"""Linear cells: ``h_t = A_t h_{t-1} + b_t``. A linear cell writes ``transition(u) -> (A, b)`` for
the whole sequence; its ``step`` is that transition applied to one step, so the sequential and scan
engines cannot drift apart.

What ``transition`` returns, by ``Linear(kind)`` (S is the state's shape without B):

- ``diagonal`` / ``complex_diagonal``: ``A, b: (B, T, *S)``, real / complex; A may have size-1
  dims that broadcast against b (a time-invariant A is an ``expand``-ed view).
- ``scalar``: ``A: (B, T, n)``, ``b: (B, T, n, ...)``: one decay per head broadcast over the rest.
- ``matrix``: ``A: (B, T, *S[:-1], N, N)``, ``b: (B, T, *S)``; ``h_t = A_t @ h_{t-1} + b_t``.
- ``householder``: a matrix state ``(heads, K, V)`` with ``A: (B, T, heads, K, K)`` acting on K;
  the cells (``delta.py``) also give the factors (q, k, v, beta, g) the delta-rule op runs on.

**Factored form** (``factors.py``). A cell whose update is "decay times state plus an outer
product, read out by a query" (GLA, Mamba-2, mLSTM), Mamba's selective SSM, a time-invariant
SSM (S4D, DLR, LSSL) or MinMax's bounds writes ``factors(u)`` and ``finish(o, u)`` instead of
``transition`` and ``readout``: the scan engine then runs a chunkwise, fused or FFT-convolution
op and never builds the ``(B, T, *S)`` states, while ``transition``, ``step`` and ``readout``
below derive from the same declaration (one source of truth for every engine). Each factor type
names the kind its cell must declare (``OuterProduct``: ``diagonal`` with a decay per key,
``scalar`` with one per head; ``Selective``: ``diagonal``; ``TimeInvariant``:
``complex_diagonal`` or ``matrix``; ``StabilizedOuterProduct``, ``MinMaxBounds``: ``monoid``); a
mismatch is an error.
"""
from __future__ import annotations

import torch

from ..checks import check_int
from .base import Cell, Linear, State, map_state
from .options import check_range


def expand_decay(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """View a decay with fewer trailing dims than ``b`` (kind ``scalar``) as broadcastable to b."""
    return A.view(*A.shape, *([1] * (b.dim() - A.dim())))


def apply_transition(kind: str, A: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step ``A h + b`` of a ``Linear(kind)`` transition (A, b without the T dim)."""
    if kind == "matrix":
        return (A @ h.unsqueeze(-1)).squeeze(-1) + b  # (B, ..., N, N) @ (B, ..., N, 1)
    if kind == "householder":
        return A @ h + b  # (B, heads, K, K) @ (B, heads, K, V)
    return expand_decay(A, b) * h + b


class LinearCell(Cell):
    """Base of linear cells: subclasses set ``structure = Linear(kind)`` and write ``project``,
    (for a non-default state) ``state_shapes``/``init_state``, and either

    - ``factors(u)`` and ``finish(o, u)`` (the factored form, see ``factors.py``; preferred), or
    - ``transition(u)`` and ``readout(h, u_t)``.

    ``readout(h, u_t)`` and ``finish(o, u)`` must treat every leading dim as a batch: the scan
    engine calls them once on all B*T steps."""

    structure: Linear = Linear("diagonal")

    def init_heads(self, heads: int, key_dim: int | None):
        """Split H into ``heads`` of ``value_dim`` (V) each, with key dim K (default V)."""
        owner = type(self).__name__
        check_int(owner, "heads", heads, 1)
        if self.hidden_size % heads:
            raise ValueError(f"{owner}: heads must be an int >= 1 dividing "
                             f"hidden_size={self.hidden_size}, got {heads!r}")
        check_range(owner, "key_dim", key_dim, 1, optional=True)
        self.heads, self.value_dim = heads, self.hidden_size // heads
        self.key_dim = self.value_dim if key_dim is None else key_dim

    @property
    def linear_kind(self) -> str:
        """The kind of this cell's transition: its ``Linear`` structure's, or, where a subclass
        declares another structure for the engines (``Diagonal()`` to run Mamba on Newton as a
        nonlinear cell would, ``Dense()``), the kind its nearest linear ancestor declares."""
        if isinstance(self.structure, Linear):
            return self.structure.kind
        for klass in type(self).__mro__:
            declared = klass.__dict__.get("structure")
            if isinstance(declared, Linear):
                return declared.kind
        return LinearCell.structure.kind

    def factors(self, u: torch.Tensor):
        """The factored transition for the whole sequence ``u: (B, T, P)`` (a ``Factors``), or
        None when the cell has none."""
        return None

    def finish(self, o: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The output from the read-out factor ``o`` (``Factors.read``) and the projected input
        ``u (..., P)`` of the same steps: ``(..., H_out)``. Default: heads merged."""
        return o.flatten(-2)  # (..., heads, V) -> (..., H)

    def transition(self, u: torch.Tensor):
        f = self.factors(u)
        if f is None:
            raise NotImplementedError(f"{type(self).__name__} writes neither factors() nor "
                                      f"transition()")
        return self._checked(f).transition()

    def _checked(self, f):
        if f.kind != self.linear_kind:
            raise TypeError(f"{type(self).__name__}: its factors ({type(f).__name__}) are of "
                            f"kind {f.kind!r}, but it declares structure {self.structure}")
        return f

    def readout(self, h: State, u_t: torch.Tensor) -> torch.Tensor:
        f = self.factors(u_t.unsqueeze(1))  # (N, P) -> (N, 1, P)
        if f is None:
            return super().readout(h, u_t)
        o = f.read(map_state(lambda s: s.unsqueeze(1), h))  # states (N, 1, ...)
        return self.finish(o[:, 0], u_t)

    def step_readout(self, u_t: torch.Tensor, h: State):
        f = self.factors(u_t.unsqueeze(1))  # one step: (B, 1, ...)
        if f is None:
            return super().step_readout(u_t, h)
        h = self._advance(self._checked(f).transition(), h)
        o = f.read(map_state(lambda s: s.unsqueeze(1), h))  # states (B, 1, ...)
        return h, self.finish(o[:, 0], u_t)

    def _advance(self, transition, h: State) -> State:
        """One step of a transition for the whole sequence of one step, ``(B, 1, ...)``."""
        A, b = transition
        return apply_transition(self.linear_kind, A[:, 0], b[:, 0], h)

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32, device=None) -> State:
        """Zeros; complex (complex64 for fp32, complex128 for fp64) for ``complex_diagonal``."""
        if self.linear_kind == "complex_diagonal":
            dtype = torch.promote_types(dtype, torch.complex64)
        return super().init_state(batch, dtype, device)

    def step(self, u_t: torch.Tensor, h: State) -> State:
        return self._advance(self.transition(u_t.unsqueeze(1)), h)  # (B, P) -> (B, 1, P)
