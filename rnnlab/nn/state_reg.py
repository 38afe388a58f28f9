"""State regularisation (Wang & Niepert, ICML 2019): a cell whose state snaps to k centroids.

    u_t = inner.step(x_t, h_{t-1})               the wrapped cell's own new state
    alpha_t = softmax(u_t S^T / tau)             (B, k): a score per centroid S_j (rows of S)
    h_t = alpha_t S                              soft mode: a convex mix of the centroids

``StateRegularized(inner, centroids=k, temperature=tau, mode=...)`` wraps any rnnlab cell whose
first state leaf is a vector ``(B, H)`` (GRU, Elman, IndRNN, an LSTM's h: its c stays free, as
the paper's SR-LSTM). ``S: (k, H)`` starts U(-0.5, 0.5) as the paper's code. As tau -> 0 the
network moves between k discrete states, which is what ``rnnlab.tools.automata.extract`` reads.

Modes (what replaces ``alpha_t`` in ``h_t = alpha_t S``):

- ``"soft"``: alpha itself (the paper's practical choice; deterministic, smooth).
- ``"hard"``: the one-hot of argmax alpha in the forward pass with alpha's gradient
  (straight-through): the state is exactly a centroid, training still sees a gradient.
- ``"gumbel"``: while training, the one-hot of argmax(log alpha + g), g Gumbel noise drawn
  from this module's own generator (seeded by ``seed``, so runs repeat): a sample of
  Cat(alpha), with the straight-through gradient of softmax(log alpha + g); in eval mode,
  ``"hard"``. The
  noise makes ``step`` draw from the generator: run it on the sequential engine (the one
  ``Recurrent(..., engine="sequential")`` names), where each step runs once.

The wrapper is Dense (alpha mixes every channel) and keeps its inner cell's ``project`` and
``readout``. ``SRAcceptor`` is the small model of the paper's experiments around it: one-hot
tokens with a start symbol -> an SR cell -> a linear read-out of h at every step.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..cells import get as get_cell
from ..cells.base import Cell, Dense, State, as_tuple
from ..checks import check_choice, check_int, check_number
from .recurrent import Recurrent

MODES = ("soft", "hard", "gumbel")


class StateRegularized(Cell):
    """``inner`` with its first state leaf ``(B, H)`` replaced by ``alpha(u) S`` after each step.

    Args:
        inner: the wrapped cell (its first state leaf must be a vector, ``state_shapes()[0]``
            ``== (H,)``).
        centroids: k, the number of learnable states (rows of ``centroids``, ``(k, H)``).
        temperature: tau > 0 in ``softmax(u S^T / tau)``.
        mode: ``"soft"``, ``"hard"`` or ``"gumbel"`` (module docstring).
        seed: the Gumbel noise generator's seed.
    """

    structure = Dense()

    def __init__(self, inner: Cell, centroids: int = 50, temperature: float = 1.0,
                 mode: str = "soft", seed: int = 0):
        owner = "StateRegularized"
        if not isinstance(inner, Cell):
            raise TypeError(f"{owner}: inner must be a rnnlab Cell, got {type(inner).__name__}")
        shape = inner.state_shapes()[0]
        if len(shape) != 1:
            raise ValueError(f"{owner}: inner's first state leaf must be a vector (H,), got "
                             f"{shape} ({type(inner).__name__})")
        check_int(owner, "centroids", centroids, 1)
        check_number(owner, "temperature", temperature, 0.0, low_open=True)
        check_choice(owner, "mode", mode, MODES)
        check_int(owner, "seed", seed, 0)
        super().__init__(inner.input_size, shape[0])
        self.inner = inner
        self.temperature = float(temperature)
        self.mode = mode
        self.centroids = nn.Parameter(torch.empty(centroids, shape[0]).uniform_(-0.5, 0.5))
        self._noise = torch.Generator().manual_seed(seed)

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @property
    def output_size(self) -> int:
        return self.inner.output_size

    def state_shapes(self):
        return self.inner.state_shapes()

    def init_state(self, batch: int, dtype: torch.dtype = torch.float32, device=None) -> State:
        return self.inner.init_state(batch, dtype, device)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.project(x)

    def readout(self, h: State, u_t: torch.Tensor) -> torch.Tensor:
        return self.inner.readout(h, u_t)

    def scores(self, v: torch.Tensor) -> torch.Tensor:
        """``u S^T / tau``: ``(B, H) -> (B, k)``, the logits of alpha."""
        return v @ self.centroids.to(v.dtype).T / self.temperature  # (B, H) @ (H, k)

    def alpha(self, v: torch.Tensor) -> torch.Tensor:
        """The centroid weights ``softmax(u S^T / tau)``: ``(B, H) -> (B, k)``."""
        return torch.softmax(self.scores(v), -1)

    def weights(self, v: torch.Tensor) -> torch.Tensor:
        """What multiplies S in this mode: alpha, or a straight-through one-hot ``(B, k)``."""
        logits = self.scores(v)
        soft = torch.softmax(logits, -1)
        if self.mode == "soft":
            return soft
        if self.mode == "gumbel" and self.training:
            u = torch.rand(logits.shape, generator=self._noise).to(logits)
            exp1 = -torch.log(u.clamp_min(1e-20))  # Exp(1) draws, > 0
            gumbel = -torch.log(exp1.clamp_min(1e-20))
            # log alpha + g is logits + g up to a per-row constant: its argmax ~ Cat(alpha)
            soft = torch.softmax(logits + gumbel, -1)
        hard = F.one_hot(soft.argmax(-1), self.k).to(soft)
        return hard + (soft - soft.detach())  # the forward value is hard, the gradient soft's

    def step_alpha(self, u_t: torch.Tensor, h: State) -> Tuple[State, torch.Tensor]:
        """``(step(u_t, h), alpha)``: the new state and the centroid weights ``(B, k)`` that
        made it (extraction reads the argmax of alpha)."""
        new = as_tuple(self.inner.step(u_t, h))
        a = self.weights(new[0])
        snapped = a @ self.centroids.to(a.dtype)  # (B, k) @ (k, H) -> (B, H)
        out = (snapped,) + new[1:]
        return (out if len(out) > 1 else out[0]), a

    def step(self, u_t: torch.Tensor, h: State) -> State:
        return self.step_alpha(u_t, h)[0]

    def extra_repr(self) -> str:
        return f"k={self.k}, temperature={self.temperature}, mode={self.mode!r}"


class SRAcceptor(nn.Module):
    """The paper's acceptor: ``(B, T)`` tokens -> logits ``(B, T + 1, n_outputs)``, one per
    prefix, the first for the empty string (after the start symbol).

    A start symbol (token ``vocab_size``) is prepended, tokens are one-hot, an SR cell (``cell``
    any registered name with a vector first state leaf, ``cell_kwargs`` its options) runs on
    the sequential engine, and ``head`` (a linear map) reads each step's state: applied to a
    centroid it says whether that state accepts (extraction step 1).
    """

    def __init__(self, vocab_size: int, n_outputs: int = 2, hidden_size: int = 32,
                 cell: str = "gru", centroids: int = 10, temperature: float = 1.0,
                 mode: str = "soft", seed: int = 0, **cell_kwargs):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("n_outputs", n_outputs),
                        ("hidden_size", hidden_size)):
            check_int("SRAcceptor", name, v, 1)
        self.vocab_size = vocab_size
        inner = get_cell(cell, vocab_size + 1, hidden_size, **cell_kwargs)
        self.cell = StateRegularized(inner, centroids, temperature, mode, seed)
        self.layer = Recurrent(self.cell, engine="sequential")
        self.head = nn.Linear(self.cell.output_size, n_outputs)

    def one_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` tokens -> ``(B, T + 1, vocab + 1)``: the start symbol, then the tokens."""
        start = torch.full_like(tokens[:, :1], self.vocab_size)
        return F.one_hot(torch.cat([start, tokens], 1), self.vocab_size + 1).float()

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None):
        y, _ = self.layer(self.one_hot(tokens), lengths=lengths)  # (B, T + 1, H_out)
        return self.head(y)  # (B, T + 1, n_outputs)

    @torch.no_grad()
    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """The argmax centroid after every step, start symbol included: ``(B, T + 1)`` long."""
        u = self.cell.project(self.one_hot(tokens))  # (B, T + 1, P)
        h = self.cell.init_state(tokens.shape[0], u.dtype, u.device)
        out = []
        for t in range(u.shape[1]):
            h, a = self.cell.step_alpha(u[:, t], h)
            out.append(a.argmax(-1))
        return torch.stack(out, 1)  # T + 1 x (B,) -> (B, T + 1)
