"""Cells whose step composes an associative monoid element into the state (``Linear("monoid")``):
Aaren's softmax (m, u, w), MinMax's (r, s), mLSTM's stabilized (g, m, C, n). Their steps are not
affine (max-stabilizers, min/max), but the composition is associative, so the scan engine runs
them as a parallel prefix scan (``rnnlab.ops.associative_scan``) with the same ``combine``.

A monoid cell writes ``elements(u)`` (one leaf per step, each ``(B, T, ...)``), ``combine(a, b)``
(a earlier), ``identity(elems)``, and the two adapters between its state and an element:
``to_element(h)`` (the state as the constant-output element) and ``from_element(e)``.
``step(u_t, h) = from_element(combine(to_element(h), leaf_t))``; ``transition(u)`` gives the
leaves.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .base import Linear, State
from .linear import LinearCell

Elems = Tuple[torch.Tensor, ...]


class MonoidCell(LinearCell):
    structure = Linear("monoid")

    def elements(self, u: torch.Tensor) -> Elems:
        raise NotImplementedError

    def combine(self, a: Elems, b: Elems) -> Elems:
        raise NotImplementedError

    def identity(self, elems: Elems) -> Elems:
        raise NotImplementedError

    def to_element(self, h: State) -> Elems:
        raise NotImplementedError

    def from_element(self, e: Elems) -> State:
        raise NotImplementedError

    def transition(self, u: torch.Tensor) -> Elems:
        return self.elements(u)

    def step(self, u_t: torch.Tensor, h: State) -> State:
        return self._advance(self.elements(u_t.unsqueeze(1)), h)  # (B, P) -> (B, 1, P)

    def _advance(self, elements: Elems, h: State) -> State:
        """Compose the state with one step's leaves ``(B, 1, ...)``."""
        leaf = tuple(e[:, 0] for e in elements)  # (B, 1, ..) -> (B, ..)
        return self.from_element(self.combine(self.to_element(h), leaf))
