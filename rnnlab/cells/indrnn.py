"""IndRNN (Li et al. 2018): ``h' = phi(W x + b + u * h)`` with a recurrent *vector* u, so each
channel recurs only on itself (diagonal Jacobian).

Init as the reference code: u ~ U(0, 1) (or U(0, recurrent_max)), W ~ U(-1/sqrt(H), 1/sqrt(H)),
b = 0. ``recurrent_max`` (e.g. ``2 ** (1 / T)``) clips |u| inside the step, keeping gradients
over T steps bounded as the paper prescribes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Cell, Diagonal
from .registry import register

_NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}


@register("indrnn")
class IndRNN(Cell):
    """IndRNN cell. State ``h: (B, H)``; ``u_t: (B, H)``."""

    structure = Diagonal()

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "relu",
                 bias: bool = True, recurrent_max: float | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"IndRNN: nonlinearity must be one of {sorted(_NONLINEARITIES)}, "
                             f"got {nonlinearity!r}")
        if recurrent_max is not None and not recurrent_max > 0:
            raise ValueError(f"IndRNN: recurrent_max must be > 0 or None, got {recurrent_max!r}")
        kw = dict(device=device, dtype=dtype)
        self.nonlinearity = nonlinearity
        self.recurrent_max = recurrent_max
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, **kw))  # the vector u
        self.bias = nn.Parameter(torch.zeros(hidden_size, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, 0.0, min(1.0, self.recurrent_max or 1.0))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_ih, self.bias)  # (B, T, D) -> (B, T, H)

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        u = self.weight_hh
        if self.recurrent_max is not None:
            u = u.clamp(-self.recurrent_max, self.recurrent_max)
        return _NONLINEARITIES[self.nonlinearity](u_t + u * h)
