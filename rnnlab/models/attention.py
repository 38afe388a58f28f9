"""Causal multi-head self-attention with rotary positions: the Transformer baseline's mixer and
the attention layers of hybrid stacks.

Rotary embeddings (RoPE) encode relative position, so the model runs at any length without a
learned position table; torch's ``scaled_dot_product_attention`` does the attention itself.
``window`` limits each query to the last ``window`` positions (sliding-window attention);
``rotary=False`` leaves positions out (the caller adds them to the input, as the Universal
Transformer's paper does).
Streaming: ``forward(x, state) -> (y, state)`` where the state is the KV cache
``(k (B, heads, S, d), v (B, heads, S, d), position ())``; with a window the cache keeps only the
last ``window - 1`` keys, so its memory is constant.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..cells.registry import check_options
from ..checks import check_bool, check_int

KVCache = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rotary(x: torch.Tensor, positions: Optional[torch.Tensor] = None,
           base: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs of ``x (B, heads, T, d)`` by angles of ``positions (T,)`` (RoPE)."""
    T, d = x.shape[-2], x.shape[-1]
    half = d // 2
    if positions is None:
        positions = torch.arange(T, device=x.device)
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    angles = positions.to(torch.float32)[:, None] * freqs  # (T, d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half:]], dim=-1)  # odd d keeps its last channel


class CausalSelfAttention(nn.Module):
    """``y, cache = attention(x, cache=None)`` for ``x (B, T, D)``; each position sees itself and
    the past (the last ``window`` positions when ``window`` is set)."""

    def __init__(self, d_model: int, heads: int = 4, window: Optional[int] = None,
                 rotary: bool = True):
        super().__init__()
        check_options("CausalSelfAttention", CausalSelfAttention,
                      dict(d_model=d_model, heads=heads, window=window, rotary=rotary))
        check_int("CausalSelfAttention", "d_model", d_model, 1)
        check_int("CausalSelfAttention", "heads", heads, 1)
        if d_model % heads:
            raise ValueError(f"CausalSelfAttention: d_model must be divisible by heads, got "
                             f"d_model={d_model}, heads={heads!r}")
        check_int("CausalSelfAttention", "window", window, 1, optional=True)
        check_bool("CausalSelfAttention", "rotary", rotary)
        self.heads, self.window, self.rotary = heads, window, rotary
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def initial_state(self, batch: int, device=None, dtype=torch.float32) -> KVCache:
        d = self.out.in_features // self.heads
        empty = torch.zeros(batch, self.heads, 0, d, device=device, dtype=dtype)
        return empty, empty.clone(), torch.zeros((), dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor, state: Optional[KVCache] = None,
                prefix: Optional[torch.Tensor] = None):
        """``prefix (B,)`` (whole sequences only): the first ``prefix[b]`` steps of row b also
        see each other ahead (a prefix-LM mask); the steps after stay causal."""
        B, T, D = x.shape
        both_ways = None if prefix is None else self._prefix_mask(prefix, B, T, state, x.device)
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        start = 0 if state is None else int(state[2])
        pos = torch.arange(start, start + T, device=x.device)  # (T,)
        if self.rotary:
            q, k = rotary(q, pos), rotary(k, pos)  # each (B, heads, T, D/heads)
        if state is not None:
            k = torch.cat([state[0].to(k.dtype), k], dim=2)  # (B, heads, S, D/heads)
            v = torch.cat([state[1].to(v.dtype), v], dim=2)
        if both_ways is not None:
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=both_ways)
        elif self.window is None and k.shape[2] == T:
            y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            key_pos = torch.arange(start + T - k.shape[2], start + T, device=x.device)  # (S,)
            allowed = key_pos[None, :] <= pos[:, None]  # (T, S)
            if self.window is not None:
                allowed = allowed & (key_pos[None, :] > pos[:, None] - self.window)
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        if self.window is not None:
            keep = self.window - 1
            k, v = k[:, :, k.shape[2] - min(keep, k.shape[2]):], v[:, :, v.shape[2] - min(
                keep, v.shape[2]):]
        cache = (k, v, torch.tensor(start + T, device=x.device))
        return self.out(y.transpose(1, 2).reshape(B, T, D)), cache  # (B, T, D)

    def _prefix_mask(self, prefix, B: int, T: int, state, device) -> torch.Tensor:
        """``(B, 1, T, T)`` bool: causal, plus both ways inside each row's prefix."""
        if self.window is not None or state is not None:
            raise ValueError("CausalSelfAttention: prefix needs window=None and no cache (it "
                             "reads a whole sequence's prefix at once)")
        if not isinstance(prefix, torch.Tensor) or prefix.shape != (B,) or \
                prefix.is_floating_point() or prefix.is_complex() or prefix.dtype == torch.bool:
            got = f"{prefix.dtype} {tuple(prefix.shape)}" if isinstance(prefix, torch.Tensor) \
                else type(prefix).__name__
            raise ValueError(f"CausalSelfAttention: prefix must be an integer tensor (B,) = "
                             f"({B},), got {got}")
        pos = torch.arange(T, device=device)
        inside = pos[None, :] < prefix.to(device)[:, None]  # (B, T): step in row b's prefix
        allowed = (pos[None, :] <= pos[:, None]) | (inside[:, :, None] & inside[:, None, :])
        return allowed[:, None]  # (B, 1, T, T)


class SelfAttention(CausalSelfAttention):
    """``CausalSelfAttention`` that can also attend both ways (``causal=False``); reads whole
    sequences: ``(B, T, D) -> (B, T, D)``, no cache."""

    def __init__(self, d_model: int, heads: int = 4, causal: bool = True, rotary: bool = True):
        super().__init__(d_model, heads, rotary=rotary)
        check_bool("SelfAttention", "causal", causal)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotary(q), rotary(k)  # each (B, heads, T, D/heads)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
