"""Shared parameter layout of torch's RNN/GRU/LSTM cells: ``weight_ih (G*H, D)``,
``weight_hh (G*H, H_rec)``, two biases ``bias_ih``, ``bias_hh`` (redundant, kept so torch and cuDNN
weights load as they are), all drawn from U(-1/sqrt(H), 1/sqrt(H)) as torch does."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_bool
from .base import Cell


class TorchStyleCell(Cell):
    """A cell with G gates whose input part ``W_ih x + b_ih`` is hoisted out of time."""

    gates: int = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 recurrent_size: int | None = None, device=None, dtype=None):
        super().__init__(input_size, hidden_size)
        check_bool(type(self).__name__, "bias", bias)
        kw = dict(device=device, dtype=dtype)
        gh = self.gates * hidden_size
        rec = hidden_size if recurrent_size is None else recurrent_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(gh, rec, **kw))
        self.bias_ih = nn.Parameter(torch.empty(gh, **kw)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gh, **kw)) if bias else None

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (B, T, D) -> (B, T, G*H)

    def recur(self, h: torch.Tensor) -> torch.Tensor:
        """The recurrent matmul ``W_hh h + b_hh``: ``(B, H_rec) -> (B, G*H)``."""
        return F.linear(h, self.weight_hh, self.bias_hh)
