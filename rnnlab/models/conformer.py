"""Stateful cache-aware streaming Conformer (Noroozi et al. 2023, NVIDIA NeMo).

    model = Conformer(input_size=32, d_model=64, n_layers=4, left_context=32, chunk=4)
    y = model(x, lengths)                      # (B, T, F) -> (B, T, D): offline, chunked mask
    y, state = model.step(x[:, :4], model.initial_state(B))   # streaming: one chunk at a time

**The mask** (``chunk_mask``): frames are grouped into chunks of ``chunk`` frames
(``[0, C), [C, 2C), ...``). A frame sees every frame of its own chunk (the chunk-aware right
context: up to ``C - 1`` frames of look-ahead, never beyond its chunk) and the ``left_context``
frames before its chunk's first frame (limited left context L). All frames of a chunk share one
key set, so a chunk can be computed as soon as its last frame arrives. NeMo's
``att_context_size [L, R]`` with ``att_context_style="chunked_limited"`` is ``left_context=L,
chunk=R + 1`` (NeMo counts the left context in whole chunks; here it is L frames, the same when
C divides L).

**The block** (Gulati et al. 2020, as NeMo builds it): ``x + FF/2``, ``x + MHSA(LN(x))``,
``x + Conv(LN(x))``, ``x + FF/2``, ``LN``. Attention uses rotary positions (NeMo uses
Transformer-XL relative positions; both see only offsets, and rotary needs no table). The conv
module is pointwise conv -> GLU -> causal depthwise conv (``nn.conv.ShortConv``) -> norm ->
SiLU -> pointwise conv. Its norm is a **LayerNorm**: NeMo's default BatchNorm is exact in
streaming only in eval mode (its training statistics mix time steps and padding), a per-frame
LayerNorm is exact always.

**The state** of a block is ``(cache (B, L, D), conv (B, K - 1, D), seen ())``: the last L
attention inputs (the LayerNorm'd block activations the keys and values are projected from:
NeMo's ``cache_last_channel``), the depthwise conv's last ``K - 1`` input frames (NeMo's
``cache_last_time``, here in the frames-first layout of ``nn.conv``), and the frames seen so far
(NeMo's cache length; it gives the rotary positions and masks the zero-filled cache before L
frames have been seen). Shapes never grow. The stack's state is the list of its blocks' states,
as the LM's is. ``step(x_chunk, state)`` treats ``x_chunk`` as one attention chunk, so streaming
chunks of ``C`` frames (the last may be shorter) equals ``forward(x, chunk=C)``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..checks import check_int, check_number
from ..errors import OptionTypeError
from ..nn.conv import ShortConv
from .attention import rotary

State = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (cache, conv tail, frames seen)


def chunk_mask(T: int, chunk: int, left_context: int, device=None) -> torch.Tensor:
    """``(T, T)`` bool, True where query frame t may attend to key frame s: s lies in t's chunk
    or in the ``left_context`` frames before that chunk's first frame."""
    check_int("chunk_mask", "T", T, 1)
    check_int("chunk_mask", "chunk", chunk, 1)
    check_int("chunk_mask", "left_context", left_context, 0)
    t = torch.arange(T, device=device)
    first = t // chunk * chunk  # (T,): first frame of each frame's chunk
    s = t[None, :]
    return (s < first[:, None] + chunk) & (s >= first[:, None] - left_context)  # (T, T)


class FeedForward(nn.Sequential):
    """LN -> Linear(D, mult D) -> SiLU -> dropout -> Linear(mult D, D) -> dropout."""

    def __init__(self, d_model: int, mult: int, dropout: float):
        super().__init__(nn.LayerNorm(d_model), nn.Linear(d_model, mult * d_model), nn.SiLU(),
                         nn.Dropout(dropout), nn.Linear(mult * d_model, d_model),
                         nn.Dropout(dropout))


class ChunkAttention(nn.Module):
    """Multi-head attention of queries from ``h (B, T, D)`` over keys and values from
    ``memory (B, S, D)`` (the cached inputs, then ``h``), rotary positions, a boolean mask."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor, memory: torch.Tensor, positions: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        """``positions (S,)`` of the memory frames (the queries are its last T);
        ``allowed (B or 1, T, S)``."""
        B, T, D = h.shape
        S, d = memory.shape[1], D // self.heads
        q = self.query(h).view(B, T, self.heads, d).transpose(1, 2)  # (B, heads, T, d)
        k, v = self.key_value(memory).view(B, S, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, positions[S - T:]), rotary(k, positions)  # k, v: (B, heads, S, d)
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        return self.out(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class ConvModule(nn.Module):
    """Pointwise conv -> GLU -> causal depthwise conv -> LayerNorm -> SiLU -> pointwise conv;
    the state is the depthwise conv's last ``kernel - 1`` input frames ``(B, K - 1, D)``."""

    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(d_model, 2 * d_model)
        self.depthwise = ShortConv(d_model, kernel, bias=True, init="uniform")
        self.norm = nn.LayerNorm(d_model)
        self.project = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor]):
        h = nn.functional.glu(self.expand(x), dim=-1)  # (B, T, 2D) -> (B, T, D)
        h, state = self.depthwise(h, state)
        return self.drop(self.project(nn.functional.silu(self.norm(h)))), state


def _check_sizes(owner: str, d_model, heads, left_context, kernel, ff_mult, dropout, chunk):
    check_int(owner, "d_model", d_model, 1)
    check_int(owner, "heads", heads, 1)
    if d_model % heads:
        raise ValueError(f"{owner}: heads must divide d_model={d_model}, got heads={heads}")
    check_int(owner, "left_context", left_context, 0)
    check_int(owner, "kernel", kernel, 1)
    check_int(owner, "ff_mult", ff_mult, 1)
    check_number(owner, "dropout", dropout, 0, 1, high_open=True)
    check_int(owner, "chunk", chunk, 1)


class ConformerBlock(nn.Module):
    """One Conformer block ``(B, T, D) -> (B, T, D)`` with limited left context
    ``left_context`` (L), chunk-aware right context (``chunk`` C, the default of ``forward``)
    and a causal depthwise conv of width ``kernel`` (K)."""

    def __init__(self, d_model: int, heads: int = 4, left_context: int = 32, kernel: int = 15,
                 ff_mult: int = 4, dropout: float = 0.0, chunk: int = 4):
        super().__init__()
        _check_sizes("ConformerBlock", d_model, heads, left_context, kernel, ff_mult, dropout,
                     chunk)
        self.d_model, self.left_context, self.kernel, self.chunk = d_model, left_context, \
            kernel, chunk
        self.ff1 = FeedForward(d_model, ff_mult, dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = ChunkAttention(d_model, heads)
        self.attn_drop = nn.Dropout(dropout)
        self.conv_norm = nn.LayerNorm(d_model)
        self.conv = ConvModule(d_model, kernel, dropout)
        self.ff2 = FeedForward(d_model, ff_mult, dropout)
        self.out_norm = nn.LayerNorm(d_model)

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        """Zero caches and no frame seen: ``(cache (B, L, D), conv (B, K - 1, D), seen ())``."""
        check_int("ConformerBlock.initial_state", "batch", batch, 1)
        weight = self.out_norm.weight
        device = weight.device if device is None else device
        dtype = weight.dtype if dtype is None else dtype
        return (torch.zeros(batch, self.left_context, self.d_model, device=device, dtype=dtype),
                torch.zeros(batch, self.kernel - 1, self.d_model, device=device, dtype=dtype),
                torch.zeros((), dtype=torch.long, device=device))

    def _run(self, x: torch.Tensor, past: torch.Tensor, conv_state, start: int,
             allowed: torch.Tensor):
        """The block on ``x (B, T, D)`` after the cached attention inputs ``past (B, P, D)``
        (frames ``start - P .. start - 1``) -> ``(y, memory (B, P + T, D), conv state)``."""
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)  # what the cache keeps
        memory = torch.cat([past.to(h.dtype), h], dim=1)  # (B, P + T, D)
        positions = torch.arange(start - past.shape[1], start + x.shape[1], device=x.device)
        x = x + self.attn_drop(self.attn(h, memory, positions, allowed))
        c, conv_state = self.conv(self.conv_norm(x), conv_state)
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x), memory, conv_state

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                chunk: Optional[int] = None) -> torch.Tensor:
        """The whole sequence at once under ``chunk_mask(T, chunk, L)`` (``chunk``: default
        ``self.chunk``); ``lengths (B,)`` masks padded key frames (real frames never read them,
        whatever they hold)."""
        _check_input("ConformerBlock", x, self.d_model)
        allowed, x = offline_mask(x, lengths, self.chunk if chunk is None else chunk,
                                  self.left_context, "ConformerBlock")
        y, _, _ = self._run(x, x.new_zeros(x.shape[0], 0, x.shape[2]), None, 0, allowed)
        return y

    def step(self, x_chunk: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One attention chunk ``x_chunk (B, t, D)`` (t >= 1) from ``state``: ``(y (B, t, D),
        state)``; the caches keep their shapes."""
        _check_input("ConformerBlock.step", x_chunk, self.d_model, "x_chunk")
        _check_state("ConformerBlock.step", "state", state, self, x_chunk)
        return self._step(x_chunk, state)

    def _step(self, x_chunk: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        cache, conv_state, seen = state
        L, t, start = self.left_context, x_chunk.shape[1], int(seen)
        key_positions = torch.arange(start - L, start + t, device=x_chunk.device)  # (L + t,)
        allowed = (key_positions >= 0).expand(1, t, L + t)  # the cache's unfilled slots masked
        y, memory, conv_state = self._run(x_chunk, cache, conv_state, start, allowed)
        return y, (memory[:, memory.shape[1] - L:], conv_state, seen + t)


def offline_mask(x: torch.Tensor, lengths, chunk, left_context: int, owner: str):
    """``chunk_mask`` with padded keys hidden, ``(B or 1, T, T)``, and ``x`` with its padded
    frames zeroed. A padded query keeps itself (an empty row would be NaN), and zeroed padding
    keeps every activation finite (a NaN value reaches real frames through 0 * NaN)."""
    check_int(owner, "chunk", chunk, 1)
    B, T = x.shape[:2]
    allowed = chunk_mask(T, chunk, left_context, x.device)[None]  # (1, T, T)
    if lengths is None:
        return allowed, x
    _check_lengths(owner, lengths, B, T)
    real = torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
    eye = torch.eye(T, dtype=torch.bool, device=x.device)
    return allowed & (real[:, None, :] | eye), x.masked_fill(~real[..., None], 0)  # (B, T, T)


class Conformer(nn.Module):
    """A stack: ``Linear(input_size, D)`` -> ``n_layers`` ``ConformerBlock`` -> optional
    ``Linear(D, n_outputs)`` (e.g. CTC logits). ``(B, T, F) -> (B, T, n_outputs or D)``.

    ``chunk`` is the attention chunk (C = NeMo's right context + 1) ``forward`` uses by default;
    training may pass a different one per batch (NeMo's multi-lookahead training)."""

    def __init__(self, input_size: int, d_model: int = 64, n_layers: int = 4, heads: int = 4,
                 left_context: int = 32, chunk: int = 4, kernel: int = 15, ff_mult: int = 4,
                 dropout: float = 0.0, n_outputs: Optional[int] = None):
        super().__init__()
        owner = "Conformer"
        check_int(owner, "input_size", input_size, 1)
        check_int(owner, "n_layers", n_layers, 1)
        check_int(owner, "n_outputs", n_outputs, 1, optional=True)
        _check_sizes(owner, d_model, heads, left_context, kernel, ff_mult, dropout, chunk)
        self.input_size, self.chunk, self.left_context = input_size, chunk, left_context
        self.embed = nn.Linear(input_size, d_model)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, heads, left_context, kernel, ff_mult, dropout, chunk)
            for _ in range(n_layers))
        self.head = nn.Linear(d_model, n_outputs) if n_outputs is not None else nn.Identity()

    def initial_state(self, batch: int, device=None, dtype=None) -> List[State]:
        """Every block's zero state (``ConformerBlock.initial_state``)."""
        check_int("Conformer.initial_state", "batch", batch, 1)
        return [block.initial_state(batch, device, dtype) for block in self.blocks]

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                chunk: Optional[int] = None) -> torch.Tensor:
        """Offline: ``x (B, T, F)`` under the chunked mask (``chunk``: default ``self.chunk``),
        ``lengths (B,)`` for padded batches -> ``(B, T, n_outputs or D)``."""
        _check_input("Conformer", x, self.input_size)
        allowed, x = offline_mask(x, lengths, self.chunk if chunk is None else chunk,
                                  self.left_context, "Conformer")
        h = self.embed(x)  # (B, T, D)
        empty = h.new_zeros(h.shape[0], 0, h.shape[2])
        for block in self.blocks:
            h, _, _ = block._run(h, empty, None, 0, allowed)
        return self.head(h)

    def step(self, x_chunk: torch.Tensor, state: List[State]) -> Tuple[torch.Tensor, List[State]]:
        """Streaming: one chunk ``x_chunk (B, t, F)`` (t >= 1, one attention chunk) from
        ``state`` (``initial_state(B)``) -> ``(y (B, t, n_outputs or D), state)``."""
        _check_input("Conformer.step", x_chunk, self.input_size, "x_chunk")
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            got = f"{len(state)} entries" if isinstance(state, (list, tuple)) \
                else type(state).__name__
            raise ValueError(f"Conformer.step: state must hold one entry per layer "
                             f"({len(self.blocks)}), as initial_state(B) makes it, got {got}")
        for i, (block, s) in enumerate(zip(self.blocks, state)):
            _check_state("Conformer.step", f"state[{i}]", s, block, x_chunk)
        h, new = self.embed(x_chunk), []  # (B, t, D)
        for block, s in zip(self.blocks, state):
            h, s = block._step(h, s)
            new.append(s)
        return self.head(h), new


def _check_input(owner: str, x, width: int, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise OptionTypeError(f"{owner}: {name} must be a float tensor (B, T, {width}), "
                              f"got {got}")
    if x.dim() != 3 or x.shape[2] != width or 0 in x.shape:
        raise ValueError(f"{owner}: {name} must be (B, T, {width}) with B, T >= 1, "
                         f"got {tuple(x.shape)}")


def _check_lengths(owner: str, lengths, B: int, T: int) -> None:
    if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point \
            or lengths.shape != (B,):
        got = tuple(lengths.shape) if isinstance(lengths, torch.Tensor) \
            else type(lengths).__name__
        raise ValueError(f"{owner}: lengths must be an integer tensor (B,) = ({B},), got {got}")
    low, high = int(lengths.min()), int(lengths.max())
    if low < 1 or high > T:
        raise ValueError(f"{owner}: lengths must be in [1, T={T}], got min {low}, max {high}")


def _check_state(owner: str, name: str, state, block: ConformerBlock, x: torch.Tensor) -> None:
    """``(cache (B, L, D), conv (B, K - 1, D), seen ())`` on the device of ``x``."""
    B, D = x.shape[0], block.d_model
    want = [(B, block.left_context, D), (B, block.kernel - 1, D), ()]
    ok = isinstance(state, (tuple, list)) and len(state) == 3 \
        and all(isinstance(s, torch.Tensor) for s in state)
    if not ok or [tuple(s.shape) for s in state] != want:
        got = [tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
               for s in state] if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(f"{owner}: {name} must be (cache {want[0]}, conv {want[1]}, seen ()) "
                         f"as initial_state(B={B}) makes it, got {got}")
    for s in state:
        if s.device != x.device:
            raise ValueError(f"{owner}: {name} is on {s.device} but x_chunk is on {x.device}; "
                             f"make it with initial_state(B, x_chunk.device)")
