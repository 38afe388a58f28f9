"""GRU as torch.nn.GRU: gate order (r, z, n), two biases, reset applied after the matmul.

    r, z = sigmoid(W_i. x + b_i. + W_h. h + b_h.)
    n    = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h'   = (1 - z) * n + z * h

``reset_after=False`` gives Cho et al.'s original form,
``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Dense
from .registry import register
from .torch_style import TorchStyleCell


@register("gru")
class GRU(TorchStyleCell):
    """GRU cell. State ``h: (B, H)``; ``u_t: (B, 3H)``."""

    structure = Dense()
    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 reset_after: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.reset_after = reset_after
        self.reset_parameters()

    def step(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        H = self.hidden_size
        if self.reset_after:
            g = self.recur(h)  # (B, 3H)
            r, z = torch.sigmoid(u_t[:, :2 * H] + g[:, :2 * H]).chunk(2, dim=-1)
            n = torch.tanh(u_t[:, 2 * H:] + r * g[:, 2 * H:])
        else:
            w_rz, w_n = self.weight_hh[:2 * H], self.weight_hh[2 * H:]
            b_rz, b_n = (None, None) if self.bias_hh is None else self.bias_hh.split(2 * H)
            r, z = torch.sigmoid(u_t[:, :2 * H] + F.linear(h, w_rz, b_rz)).chunk(2, dim=-1)
            n = torch.tanh(u_t[:, 2 * H:] + F.linear(r * h, w_n, b_n))
        return n + z * (h - n)  # = (1 - z) * n + z * h
