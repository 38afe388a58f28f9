"""The cell contract: one pure step plus a declared structure.

A cell is an ``nn.Module`` holding parameters. Engines run it over a sequence; they know it only
through this contract:

- ``project(x)``: the input-only part, for the whole sequence at once, ``(B, T, D) -> (B, T, P)``.
- ``step(u_t, h) -> h``: one time step, pure (no in-place write to ``h``, nothing kept on self);
  ``u_t: (B, P)``; ``h`` a tensor or a tuple of tensors, each ``(B, ...)``.
- ``readout(h, u_t) -> y_t``: the output of a step, ``(B, H_out)``, from the new state and the
  same step's projected input (selective SSMs read out with an input-dependent C_t, linear
  attention with q_t); default: the first state tensor.
- ``init_state(batch, dtype, device)``: the zero state.
- ``structure``: what ``dh_t/dh_{t-1}`` looks like (``Diagonal``, ``Block``, ``Heads``, ``Dense``,
  ``Linear``); engines pick what they can do from it.
- optionally ``newton_wins``: a ``NewtonWins``, the sizes where the Newton engine measured
  faster than the sequential one, for ``engine="auto"``.
- optionally ``quasi_jacobian(u_t, h) -> (step(u_t, h), cols)``: the part of the Jacobian that
  quasi-Newton keeps (``engines/linearize.py``'s ``quasi_layout``), in closed form: when the L
  state leaves all hold C numbers, ``cols[l]: (B, L, C)`` with ``cols[l][:, k, c] = d new_l[c] /
  d h_k[c]`` (the same channel of every leaf), else the diagonal, ``cols[l]: (B, 1, S_l)``. The
  probe checks it against torch.func's too.
- optionally ``jacobian(u_t, h) -> (step(u_t, h), cols)``: the step and its Jacobian in closed
  form, which the Newton engine then uses instead of one JVP per column. ``cols`` holds one
  tensor per state leaf (in ``h``'s order), ``(B, M, S_l)``, in ``engines/linearize.py``'s
  column layout for the structure: ``cols[l][:, m, s] = d new_l[s] / d h[src[m, s]]`` (``M``
  and ``src`` as that module defines them: 1 column for ``Diagonal``, leaf l' of ``Block(k)``'s
  channel at m = l', member ``l' d + k`` of the head for ``Heads(n, d)``). The engine's
  structure probe checks it against torch.func's JVPs at a random state and raises if they
  differ.
- linear cells (``structure`` is ``Linear``) also give ``transition(u) -> (A, b)`` for the whole
  sequence, so a scan engine never calls ``step``; or, better, their **factors**
  (``factors(u)`` and ``finish(o, u)``, see ``factors.py`` and ``linear.py``): "decay times state
  plus an outer product, read out by a query" (GLA, Mamba-2, mLSTM), Mamba's selective SSM, a
  time-invariant SSM (S4D, DLR, LSSL) or MinMax's bounds. From the factors ``LinearCell`` derives
  ``transition``, ``step`` and ``readout``, and the scan engine runs a chunkwise, fused or
  FFT-convolution op that never materialises the per-step states.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
from torch import nn

from ..checks import check_choice, check_int
from ..errors import OptionTypeError  # noqa: F401 - re-exported: its home before errors.py
from .options import check_call

State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


# ---- declared structure of the step Jacobian dh_t/dh_{t-1} -------------------------------------

@dataclass(frozen=True)
class Diagonal:
    """Each state channel depends only on itself (IndRNN, ParaGRU)."""


@dataclass(frozen=True)
class Block:
    """k x k blocks per channel: channel i of each of the k state tensors mix (ParaLSTM's c, h)."""
    k: int

    def __post_init__(self):
        check_int("Block(k)", "k", self.k, 1)


@dataclass(frozen=True)
class Heads:
    """Block-diagonal: n heads of d channels each, mixing only within a head (sLSTM)."""
    n: int
    d: int

    def __post_init__(self):
        for name, v in (("n", self.n), ("d", self.d)):
            check_int("Heads(n, d)", name, v, 1)


@dataclass(frozen=True)
class Dense:
    """Every state channel may depend on every other (GRU, LSTM, Elman)."""


LINEAR_KINDS = ("diagonal", "complex_diagonal", "scalar", "matrix", "householder", "monoid")


@dataclass(frozen=True)
class Linear:
    """``h_t = A_t h_{t-1} + b_t``; ``kind`` says what A_t is (one of ``LINEAR_KINDS``) and what
    the scan engine (``engines/scan.py``) then asks of the cell besides ``project``/``step``/
    ``readout`` (``LinearCell`` derives ``transition``, ``step`` and ``readout`` from
    ``factors``, ``factors.py``, where a cell writes those instead):

    - ``"diagonal"``, ``"scalar"``: ``transition(u) -> (A, b)`` with b ``(B, T, *S)`` and A
      broadcasting to it (size-1 dims for a decay per head or per key; ``"scalar"``: one
      number per head); ``h_t = A_t * h_{t-1} + b_t`` elementwise.
    - ``"complex_diagonal"``: the same with complex A and b (complex state leaves).
    - ``"matrix"``: ``transition(u) -> (A, b)``, A ``(B or 1, T or 1, ..., N, N)``, b
      ``(B, T, ..., N)``: ``h_t = A_t h_{t-1} + b_t``.
    - ``"householder"``: ``delta_inputs(u) -> (q, k, v, beta, g)`` over ``T * substeps``
      sub-steps, each ``(B, T * n, heads, ...)`` (g: a log-decay, or None), and the int attribute
      ``substeps`` (DeltaProduct's n_h; 1 for DeltaNet); the state per head is ``(K, V)``,
      ``S <- exp(g) (I - beta k k^T) S + beta k v^T`` per sub-step.
    - ``"monoid"``: ``elements(u)``, ``combine(a, b)`` (a earlier; associative),
      ``identity(elems)``, ``to_element(h)`` and ``from_element(e)`` (``monoid.py``).

    **Factored forms** (optional, and the fast path): a ``LinearCell`` whose ``factors(u)``
    returns one of ``factors.py``'s classes for the whole sequence ``u: (B, T, P)`` also writes
    ``finish(o, u) -> y`` (the read-out ``o`` of every step, ``(B, T, ...)``, to the output
    ``(B, T, H_out)``: a skip ``D u``, a gate, heads merged). The scan engine then runs the op
    named below (``engines/factored.py``) and never builds the ``(B, T, *S)`` states; the
    factors' ``kind`` must be the declared one (else a TypeError). Per kind:

    - ``"diagonal"``: ``OuterProduct(q, k, v, g)`` with the log-decay g ``(B, T, heads, K)``, a
      decay per key (GLA): chunkwise gated linear attention; or ``Selective(x, dt, A, B, C)``
      (Mamba's S6): the fused selective scan.
    - ``"scalar"``: ``OuterProduct(q, k, v, g)`` with g ``(B, T, heads)``, one decay per head
      (Mamba-2, with ``transposed=True`` for its state kept as ``(heads, V, K)``): the same
      chunkwise op. A decay that can be negative has no log: give it as ``a=`` (g None) and the
      engine falls back to the materialising scan of ``transition``.
    - ``"complex_diagonal"``: ``TimeInvariant(u, A, B, C)`` with complex ``A, B, C: (H, N)``
      (S4D, DLR); ``"matrix"``: the same with a real ``A: (H, N, N)`` (LSSL): the FFT long
      convolution.
    - ``"monoid"``: ``StabilizedOuterProduct(q, k, v, i, log_f)`` (mLSTM): the stabilised
      chunkwise form; ``MinMaxBounds(r, s)`` (MinMax): the fused min/max scan. The five monoid
      methods above stay (``step`` and ``Scan(factored=False)`` use them); ``elements(u)`` can be
      ``factors(u).transition()`` (mLSTM, MinMax), so both paths run one declaration.
    - ``"householder"``: no factored form; ``delta_inputs``/``substeps`` above are its fast path
      (the chunked delta rule).

    Padded steps need nothing from the cell: the engine makes them identity steps of the op.
    """
    kind: str

    def __post_init__(self):
        check_choice("Linear(kind)", "kind", self.kind, LINEAR_KINDS)


Structure = Union[Diagonal, Block, Heads, Dense, Linear]


@dataclass(frozen=True)
class NewtonWins:
    """Where the Newton engine measured faster than the sequential one for a cell, which
    ``engine="auto"`` then uses (``engines/auto.py``): on CPU, for calls of at least
    ``min_steps`` steps whose batch x state numbers (B * S, S the flat state size) are at most
    ``train`` when the call builds a graph, or at most ``infer`` when it does not (0: never);
    ``quasi``: in the quasi-Newton form. A cell without it always runs sequentially under
    "auto". Fitted on ``rnnlab bench cells`` (fwd and fwd+bwd, fp32, 2-core CPU) with a margin:
    Newton must have been >= 2x faster inside the region."""
    min_steps: int
    train: int
    infer: int = 0
    quasi: bool = False


# ---- state trees: a state is a tensor or a tuple of tensors -------------------------------------

def as_tuple(h: State) -> Tuple[torch.Tensor, ...]:
    return h if isinstance(h, tuple) else (h,)


def map_state(fn: Callable[..., torch.Tensor], *states: State) -> State:
    """Apply ``fn`` leaf-wise over states of the same layout; keeps the tensor/tuple layout."""
    if isinstance(states[0], tuple):
        return tuple(fn(*leaves) for leaves in zip(*states))
    return fn(*states)


# ---- every constructor checks its arguments ------------------------------------------------------

SIZES = ("input_size", "hidden_size")  # every cell's first two arguments (not options)

# How the cell being built names itself in option errors: its class name, or what ``named`` says
# (``cells.get`` says "cell 'mamba'"). Cleared while a constructor runs, so that cells built
# inside it name themselves.
_NAME: ContextVar[Optional[str]] = ContextVar("rnnlab_cell_name", default=None)


@contextmanager
def named(name: str) -> Iterator[None]:
    """Within: the cell constructed next names itself ``name`` in its option errors."""
    token = _NAME.set(name)
    try:
        yield
    finally:
        _NAME.reset(token)


def check_sizes(owner: str, input_size, hidden_size) -> None:
    """``input_size`` (D) and ``hidden_size`` (H) must be ints >= 1."""
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
        check_int(owner, name, v, 1)


def check_parameter_dtype(owner: str, dtype) -> None:
    """A cell's ``dtype`` (of its parameters) is None or a real floating torch.dtype: a complex
    cell keeps real parameters and builds its complex numbers from them, and an int or complex
    one would fail only at the first step, in torch's words."""
    if dtype is None:
        return
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{owner}: dtype must be a real floating torch.dtype (of the "
                        f"parameters) or None, got {dtype!r}")


def _checked(init: Callable) -> Callable:
    """``init`` (a Cell subclass's ``__init__``) checking its arguments against its signature
    first, as ``cells.get`` does: sizes, then each option's name and type. Only the constructor
    actually called checks; its ``super().__init__`` calls do not check again. (Construction
    only: pickling, ``copy.deepcopy`` and ``torch.func`` never call ``__init__``.)"""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if type(self).__init__ is not __init__:
            return init(self, *args, **kwargs)
        owner = _NAME.get() or type(self).__name__
        token = _NAME.set(None)
        try:
            given = check_call(owner, type(self), args, kwargs, fixed=SIZES)
            # Sizes before any constructor code uses them (LSTM compares proj_size with H before
            # Cell.__init__, which checks them again for cells built without this wrapper).
            if all(n in given for n in SIZES):
                check_sizes(type(self).__name__, *(given[n] for n in SIZES))
            check_parameter_dtype(owner, given.get("dtype"))
            init(self, *args, **kwargs)
        finally:
            _NAME.reset(token)
    return __init__


# ---- the base class -----------------------------------------------------------------------------

class Cell(nn.Module):
    """Base class of every cell. Subclasses set ``structure`` and implement ``step``.

    Every constructor takes ``input_size`` (D) and ``hidden_size`` (H) first, then options of its
    own with defaults, so any registered cell can be built from those two numbers alone. A
    subclass's constructor checks its arguments' names and plain types against its signature
    before it runs (``Mamba(4, 8, allow_neg_eigval="false")`` is a TypeError, as through
    ``cells.get``); ranges are each constructor's own to check (``options.check_range``).
    """

    structure: Structure = Dense()
    # True for a step defined only on the states the recurrence itself reaches (e.g. normalised
    # amplitudes): engines that iterate on guessed trajectories (Newton) refuse such a cell.
    sequential_only: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # built directly or by cells.get, checked the same
            cls.__init__ = _checked(cls.__dict__["__init__"])

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        check_sizes(type(self).__name__, input_size, hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size

    @property
    def output_size(self) -> int:
        """H_out, the width of ``readout(h, u_t)``."""
        return self.hidden_size

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Input-only part for all steps at once: ``(B, T, D) -> (B, T, P)``."""
        return x

    def step(self, u_t: torch.Tensor, h: State) -> State:
        """One pure time step: ``u_t: (B, P)``, ``h`` -> next ``h``."""
        raise NotImplementedError

    def readout(self, h: State, u_t: torch.Tensor) -> torch.Tensor:
        """Output of a step from its new state ``h`` and projected input ``u_t: (B, P)``:
        ``(B, H_out)``."""
        return as_tuple(h)[0]

    def step_readout(self, u_t: torch.Tensor, h: State) -> Tuple[State, torch.Tensor]:
        """``(step(u_t, h), readout(new h, u_t))``: one call for engines that need both, so a
        cell can share the work of the two (a factored cell builds its factors once)."""
        h = self.step(u_t, h)
        return h, self.readout(h, u_t)

    def state_shapes(self) -> Tuple[Tuple[int, ...], ...]:
        """Per-sample shape of each state tensor (without B). Default: one ``(H,)`` tensor."""
        return ((self.hidden_size,),)

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> State:
        """The zero state: a tensor ``(B, H)`` or a tuple of tensors ``(B, ...)``."""
        leaves = tuple(torch.zeros(batch, *s, dtype=dtype, device=device)
                       for s in self.state_shapes())
        return leaves if len(leaves) > 1 else leaves[0]

    def transition(self, u: torch.Tensor):
        """Linear cells only: ``(A, b)`` for the whole sequence, ``u: (B, T, P)``."""
        raise NotImplementedError(f"{type(self).__name__} is not a linear cell (structure "
                                  f"{self.structure}); it has no transition()")

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, structure={self.structure}"
