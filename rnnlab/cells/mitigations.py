"""State-collapse mitigations (Chen et al. 2024, "Stuffed Mamba", arXiv 2410.07145, the
training-free methods; all off by default, where the cell is exactly the plain one). ``Mitigated``
gives them to Mamba-2, GLA and Mamba (their factors are ``OuterProduct`` / ``Selective``):

- ``decay_scale = s`` (forget more): every decay a_t becomes a_t^s, i.e. the log-decay is
  multiplied by s (s > 1 forgets faster; for Mamba-2 the same as scaling A or dt in the decay
  only; with ``allow_neg_eigval`` the power applies before the map a -> 2a - 1). The cell stays
  linear: every engine runs it.
- ``state_norm = c`` (state normalisation): after every update each head's state (Mamba: each
  channel's N numbers) is rescaled to Frobenius norm at most c, ``h <- h min(1, c / ||h||)``. The
  paper normalises the state after each update; the bound is our variant: it leaves the cell
  unchanged while the norm stays in the range it had in training (calibrate c there, e.g. with
  ``rnnlab.tools.collapse``) and caps it beyond. The step is then nonlinear: the cell declares
  ``Heads`` (one block per head), so the scan engine refuses it and the sequential (reference)
  or Newton engine runs it.
- ``window = W`` (sliding window by state difference): the state keeps only the last W inputs,
  ``h_t - (prod_{r=t-W+1..t} A_r) h_{t-W}``, which equals the recurrence restarted from zero W
  steps back. Kept exactly, step by step, as ``h^W_t = A_t h^W_{t-1} + b_t - (prod A) b_{t-W}``
  with a ring of the last W inputs' factors (k, v and the decay; Mamba: x, dt, B) in the state
  (O(W (K + V)) per head, not W states). The state becomes a tuple ``(h, ring...)``: the cell
  declares ``Dense``, the scan engine refuses it, the sequential engine runs it (reference
  only; the parallel form would subtract shifted materialised states in the scan engine, not
  done). An initial state is not windowed out (it entered before the ring).

``window`` and ``state_norm`` are exclusive (a rescaled state no longer is a sum of its inputs).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..checks import check_int
from .base import Dense, Heads
from .factors import OuterProduct, Selective
from .linear import apply_transition, expand_decay
from .options import check_range

# the factor fields that make an input's contribution b_t (the decay comes from transition())
WINDOW_FIELDS = {OuterProduct: ("k", "v"), Selective: ("x", "dt", "B")}


class Mitigated:
    """Mixin for a ``LinearCell`` whose factors are ``OuterProduct`` or ``Selective``: the
    options ``decay_scale``, ``state_norm`` and ``window`` of the module docstring. The cell
    calls ``init_mitigations`` in its constructor, scales its log-decay with ``scaled`` and
    says the per-step shapes of its window ring in ``window_shapes``. With every option at its
    default, nothing here runs: the cell's numbers are the plain cell's."""

    decay_scale, state_norm, window = 1.0, None, 0

    def init_mitigations(self, decay_scale: float, state_norm, window: int) -> None:
        owner = type(self).__name__
        check_range(owner, "decay_scale", decay_scale, 0, math.inf, low_open=True,
                    high_open=True)
        check_range(owner, "state_norm", state_norm, 0, math.inf, low_open=True, high_open=True,
                    optional=True)
        check_int(owner, "window", window, 0)
        if window and state_norm is not None:
            raise ValueError(f"{owner}: window and state_norm are exclusive (a rescaled state is "
                             f"no longer the sum of its last inputs), got window={window}, "
                             f"state_norm={state_norm}")
        self.decay_scale, self.state_norm, self.window = float(decay_scale), state_norm, window
        if window:  # the state is a tuple (h, ring...): not h = A h + b any more
            self.structure = Dense()
        elif state_norm is not None:  # nonlinear, but each head's block on its own
            head, *rest = self.state_shapes()[0]
            self.structure = Heads(head, math.prod(rest))

    @property
    def mitigated(self) -> bool:
        """Whether the step differs from ``h_t = A_t h_{t-1} + b_t`` (state_norm, window)."""
        return bool(self.window) or self.state_norm is not None

    def scaled(self, log_a: torch.Tensor) -> torch.Tensor:
        """The log-decay times ``decay_scale`` (a -> a^s); untouched at s = 1."""
        return log_a if self.decay_scale == 1.0 else log_a * self.decay_scale

    def window_shapes(self):
        """Per-step shapes (without B) of the ring leaves: one per ``WINDOW_FIELDS`` entry of the
        cell's factors, then the decay as ``transition()`` gives it for one step."""
        raise NotImplementedError

    def with_ring(self, shapes):
        """The cell's state shapes, plus the window ring's ``(W, ...)`` leaves when windowed."""
        if not self.window:
            return shapes
        return shapes + tuple((self.window, *s) for s in self.window_shapes())

    def step(self, u_t, h):
        if not self.mitigated:
            return super().step(u_t, h)
        return self._mitigated_step(self.factors(u_t.unsqueeze(1)), h)  # (B, P) -> (B, 1, P)

    def step_readout(self, u_t, h):
        if not self.mitigated:
            return super().step_readout(u_t, h)
        f = self.factors(u_t.unsqueeze(1))  # one step: (B, 1, ...)
        h = self._mitigated_step(f, h)
        return h, self._read(f, h, u_t)

    def readout(self, h, u_t):
        return super().readout(h[0] if self.window else h, u_t)

    def _read(self, f, h, u_t):
        S = h[0] if self.window else h
        return self.finish(f.read(S.unsqueeze(1))[:, 0], u_t)  # states (B, 1, ...)

    def _mitigated_step(self, f, h):
        A, b = self._checked(f).transition()  # (B, 1, ...)
        A, b = A[:, 0], b[:, 0]
        if not self.window:
            return self._normed(apply_transition(self.linear_kind, A, b, h))
        S, *ring = h
        pieces, decays = ring[:-1], ring[-1]  # each (B, W, ...), oldest first
        fields = WINDOW_FIELDS[type(f)]
        # b_{t-W}, the input leaving the window, rebuilt from its factors
        old = dataclasses.replace(f, **{n: p[:, :1] for n, p in zip(fields, pieces)})
        b_old = old.transition()[1][:, 0]
        carry = decays[:, 1:].prod(dim=1) * A  # prod_{r=t-W+1..t} A_r
        S = apply_transition(self.linear_kind, A, b, S) - expand_decay(carry, b_old) * b_old
        pieces = tuple(torch.cat([p[:, 1:], getattr(f, n)], dim=1)  # drop oldest, add newest
                       for n, p in zip(fields, pieces))
        return (S, *pieces, torch.cat([decays[:, 1:], A.unsqueeze(1)], dim=1))

    def _normed(self, S: torch.Tensor) -> torch.Tensor:
        """Each head's block rescaled to norm at most ``state_norm`` (below it: untouched)."""
        norm = S.flatten(2).norm(dim=-1)  # (B, heads, ...) -> (B, heads)
        scale = self.state_norm / norm.clamp(min=self.state_norm)
        return S * scale.view(*scale.shape, *([1] * (S.dim() - 2)))
