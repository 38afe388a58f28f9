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

from ..checks import check_choice, check_number
from .base import Cell, Diagonal
from .registry import register

_NONLINEARITIES = {"relu": torch.relu, "tanh": torch.tanh}


@register("indrnn")
class IndRNN(Cell):
    """IndRNN cell. State ``h: (B, H)``; ``u_t: (B, H)``.

    Paper: Li, Li, Cook, Zhu, Gao, "Independently Recurrent Neural Network (IndRNN): Building
    A Longer and Deeper RNN", CVPR 2018, https://arxiv.org/abs/1803.04831

    Example (``recurrent_max = 2 ** (1 / T)`` as the paper prescribes for T steps):

    >>> import torch, rnnlab
    >>> layer = rnnlab.Recurrent("indrnn", input_size=3, hidden_size=8,
    ...                          recurrent_max=2 ** (1 / 5))
    >>> y, h = layer(torch.randn(2, 5, 3))  # x: (B, T, D)
    >>> y.shape, bool((y >= 0).all())  # relu by default
    (torch.Size([2, 5, 8]), True)
    """

    structure = Diagonal()

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "relu",
                 bias: bool = True, recurrent_max: float | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_choice("IndRNN", "nonlinearity", nonlinearity, sorted(_NONLINEARITIES))
        check_number("IndRNN", "recurrent_max", recurrent_max, 0, low_open=True, optional=True)
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
