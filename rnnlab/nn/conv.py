"""Causal depthwise convolutions that stream: short conv, dynamic short conv, FSMN memory.

All three mix each channel with its own past frames only. Their streaming state is the window of
past input frames they read, ``(B, W, D)``; ``forward(x, state) -> (y, state)`` on chunks of any
length equals one run over the whole sequence.

- ``ShortConv``: ``y_t = sum_{w<W} k[w] * x_{t-w} (+ bias)`` (the short conv of Mamba, GLA,
  DeltaNet and xLSTM before a mixer).
- ``DynamicShortConv``: ``y_t = x_t + sum_{w<W} (K_t[w] + k[w]) * x_{t-w}`` with per-token filters
  ``K_t = (norm(x_t) P) U`` shared by the channels of a head, ``U = 0`` at init (Dynamic Short
  Convolutions, Sieberling et al. 2026).
- ``FSMNMemory``: ``y_t = x_t + sum_{i=1..N} a_i * x_{t - i*dilation}`` (FSMN memory block, the
  dilated residual depthwise conv of MossFormer2).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..checks import check_bool, check_choice, check_int

CONV_INITS = ("identity", "uniform")  # ShortConv's weight init


def with_history(x: torch.Tensor, state: Optional[torch.Tensor], past: int
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prepend the ``past`` previous frames (zeros at the start): ``x (B, T, D)`` ->
    ``(B, past + T, D)`` and the new state, the last ``past`` frames ``(B, past, D)``."""
    B, T, D = x.shape
    if state is None:
        state = x.new_zeros(B, past, D)
    elif state.shape != (B, past, D):
        raise ValueError(f"conv state: expected shape {(B, past, D)}, got {tuple(state.shape)}")
    full = torch.cat([state.to(x.dtype), x], dim=1)  # (B, past + T, D)
    return full, full[:, full.shape[1] - past:]


def taps(full: torch.Tensor, T: int, lags) -> torch.Tensor:
    """Frames at each lag: ``full (B, past + T, D)`` -> ``(B, T, len(lags), D)``, entry
    ``[:, t, i]`` = ``x_{t - lags[i]}``."""
    past = full.shape[1] - T
    return torch.stack([full[:, past - lag: past - lag + T] for lag in lags], dim=2)


class ShortConv(nn.Module):
    """Causal depthwise conv of width ``kernel`` over ``(B, T, D)``.

    ``init="identity"`` (default) starts near the identity (lag 0 weight 1, noise 0.02);
    ``init="uniform"`` is torch's ``nn.Conv1d`` default for a depthwise conv, U(+-1/sqrt(W)) for
    weights and bias, as the published Mamba, DeltaNet and xLSTM layers start. ``bias`` adds one
    per channel."""

    def __init__(self, d_model: int, kernel: int = 4, bias: bool = False,
                 init: str = "identity"):
        super().__init__()
        check_int("ShortConv", "d_model", d_model, 1)
        check_int("ShortConv", "kernel", kernel, 1)
        check_bool("ShortConv", "bias", bias)
        check_choice("ShortConv", "init", init, CONV_INITS)
        self.kernel = kernel
        self.weight = nn.Parameter(torch.zeros(kernel, d_model))  # (W, D): lag-major
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        bound = kernel ** -0.5  # nn.Conv1d's: fan_in is the kernel width for a depthwise conv
        with torch.no_grad():
            if init == "identity":
                self.weight[0] = 1.0  # starts as the identity
                self.weight.add_(torch.randn_like(self.weight) * 0.02)
            else:
                self.weight.uniform_(-bound, bound)
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch, self.kernel - 1, self.weight.shape[1], device=device,
                           dtype=dtype)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None):
        full, state = with_history(x, state, self.kernel - 1)
        window = taps(full, x.shape[1], range(self.kernel))  # (B, T, W, D)
        y = (window * self.weight).sum(2)  # (B, T, D)
        return (y if self.bias is None else y + self.bias), state


class DynamicShortConv(nn.Module):
    """Short conv whose filters also depend on the current token (low-rank, per head)."""

    def __init__(self, d_model: int, kernel: int = 4, heads: int = 4, rank: int = 15):
        super().__init__()
        check_int("DynamicShortConv", "kernel", kernel, 1)
        check_int("DynamicShortConv", "rank", rank, 1)
        check_int("DynamicShortConv", "heads", heads, 1)
        if d_model % heads:
            raise ValueError(f"DynamicShortConv: heads must divide d_model={d_model}, "
                             f"got heads={heads}")
        self.kernel, self.heads = kernel, heads
        self.static = nn.Parameter(torch.randn(kernel, d_model) * 0.02)  # (W, D)
        self.norm = nn.LayerNorm(d_model)
        self.down = nn.Linear(d_model, rank, bias=False)  # P
        self.up = nn.Linear(rank, heads * kernel, bias=False)  # U, zero at init
        nn.init.zeros_(self.up.weight)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch, self.kernel - 1, self.static.shape[1], device=device,
                           dtype=dtype)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None):
        B, T, D = x.shape
        full, state = with_history(x, state, self.kernel - 1)
        window = taps(full, T, range(self.kernel))  # (B, T, W, D)
        dyn = self.up(self.down(self.norm(x))).view(B, T, self.heads, self.kernel, 1)
        dyn = dyn.expand(-1, -1, -1, -1, D // self.heads).transpose(2, 3).reshape(
            B, T, self.kernel, D)  # (B, T, heads, W) -> (B, T, W, D)
        return x + (window * (dyn + self.static)).sum(2), state


class FSMNMemory(nn.Module):
    """Residual dilated causal depthwise conv over ``order`` past frames."""

    def __init__(self, d_model: int, order: int = 4, dilation: int = 1):
        super().__init__()
        check_int("FSMNMemory", "order", order, 1)
        check_int("FSMNMemory", "dilation", dilation, 1)
        self.order, self.dilation = order, dilation
        self.weight = nn.Parameter(torch.zeros(order, d_model))  # (N, D): a_1..a_N

    @property
    def past(self) -> int:
        return self.order * self.dilation

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(batch, self.past, self.weight.shape[1], device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None):
        full, state = with_history(x, state, self.past)
        lags = [i * self.dilation for i in range(1, self.order + 1)]
        return x + (taps(full, x.shape[1], lags) * self.weight).sum(2), state
