"""LSTM as torch.nn.LSTM: gate order (i, f, g, o), two biases, optional projection.

    i, f, o = sigmoid(.),  g = tanh(.)   of  W_ih x + b_ih + W_hh h + b_hh
    c' = f * c + i * g
    h' = o * tanh(c'),  then  h' <- W_hr h'  when proj_size > 0

Torch adds nothing to the forget bias at init; ``forget_bias`` (default 0) opts in to the +1 trick.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import Dense
from .options import check_range
from .registry import register
from .torch_style import TorchStyleCell


@register("lstm")
class LSTM(TorchStyleCell):
    """LSTM cell. State ``(h: (B, H_out), c: (B, H))`` with ``H_out = proj_size or H``;
    ``u_t: (B, 4H)``."""

    structure = Dense()
    gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, proj_size: int = 0,
                 forget_bias: float = 0.0, device=None, dtype=None):
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or proj_size < 0:
            raise ValueError(f"LSTM: proj_size must be an int >= 0, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"LSTM: proj_size must be smaller than hidden_size={hidden_size}, "
                             f"got {proj_size}")
        check_range("LSTM", "forget_bias", forget_bias)
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype,
                         recurrent_size=proj_size or hidden_size)
        self.proj_size = proj_size
        self.forget_bias = float(forget_bias)
        kw = dict(device=device, dtype=dtype)
        self.weight_hr = (nn.Parameter(torch.empty(proj_size, hidden_size, **kw)) if proj_size
                          else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias and self.forget_bias:
            H = self.hidden_size
            with torch.no_grad():
                self.bias_ih[H:2 * H] += self.forget_bias

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def state_shapes(self):
        return ((self.output_size,), (self.hidden_size,))

    def step(self, u_t: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        h, c = state
        i, f, g, o = (u_t + self.recur(h)).chunk(4, dim=-1)  # 4 x (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.weight_hr is not None:
            h = F.linear(h, self.weight_hr)  # (B, H) -> (B, P)
        return h, c
