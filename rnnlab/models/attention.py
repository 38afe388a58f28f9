"""Causal multi-head self-attention with rotary positions: the Transformer baseline's mixer.

Rotary embeddings (RoPE) encode relative position, so the model runs at any length without a
learned position table; torch's ``scaled_dot_product_attention`` does the attention itself.
"""
from __future__ import annotations

import torch
from torch import nn


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs of ``x (B, heads, T, d)`` by position-dependent angles (RoPE)."""
    T, d = x.shape[-2], x.shape[-1]
    half = d // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * freqs  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half:]], dim=-1)  # odd d keeps its last channel


class CausalSelfAttention(nn.Module):
    """``y = attention(x)`` for ``x (B, T, D)``; each position sees itself and the past."""

    def __init__(self, d_model: int, heads: int = 4):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"CausalSelfAttention: d_model must be divisible by heads, got "
                             f"d_model={d_model}, heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)  # each (B, heads, T, D/heads)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
