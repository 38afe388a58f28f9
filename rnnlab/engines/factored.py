"""The scan engine's fast forms: a cell's declared factors (``cells/factors.py``) run by the op
made for them, never materialising the ``(B, T, *S)`` states.

- ``OuterProduct`` (GLA, Mamba-2): chunked gated linear attention (``ops.gated_linear_attention``),
  a decay per key or per head;
- ``StabilizedOuterProduct`` (mLSTM): the stabilised chunkwise form (``ops.mlstm_chunkwise``);
- ``Selective`` (Mamba): the fused selective scan (``ops.selective_scan``);
- ``TimeInvariant`` (S4D, DLR, LSSL): the FFT long convolution (``ops.ssm_convolution``);
- ``MinMaxBounds`` (MinMax): the fused min/max scan (``ops.minmax_scan``).

Padded steps (``alive`` False) become identity steps of the op (no decay, no input), so the
state stays and the final state is each sequence's own; outputs there are masked by the engine.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..cells.factors import (MinMaxBounds, OuterProduct, Selective, StabilizedOuterProduct,
                             TimeInvariant)
from ..ops import (gated_linear_attention, minmax_scan, mlstm_chunkwise, selective_scan,
                   ssm_convolution)


def _where(alive: Optional[torch.Tensor], x: torch.Tensor, fill: float) -> torch.Tensor:
    """``x (B, T, ...)`` where alive ``(B, T)``, else ``fill``."""
    if alive is None:
        return x
    mask = alive.view(*alive.shape, *([1] * (x.dim() - 2)))
    return torch.where(mask, x, torch.tensor(fill, dtype=x.dtype, device=x.device))


def _given(h0):
    """``h0``, or None when it is a constant zero state (no gradient wanted): the ops then skip
    the initial state's terms (for the convolution, a contraction as large as the output's)."""
    leaves = h0 if isinstance(h0, tuple) else (h0,)
    if any(t.requires_grad for t in leaves) or any(bool(t.any()) for t in leaves):
        return h0
    return None


def runs_factored(f) -> bool:
    """Whether the engine has an op for these factors (a signed decay has none yet)."""
    return not (isinstance(f, OuterProduct) and f.g is None)


def run_factored(f, h0, alive, lengths, chunk_size: Optional[int]):
    """``(o, final state)`` of the factors ``f`` from ``h0``: o is what ``f.read`` gives on the
    states, ``(B, T, ...)``; the final state has the cell's own layout."""
    given = _given(h0)
    if isinstance(f, OuterProduct):
        S0 = given
        if f.transposed and given is not None:
            S0 = given.transpose(-1, -2)  # (B, heads, V, K) -> (B, heads, K, V)
        o, S = gated_linear_attention(f.q, _where(alive, f.k, 0.0), f.v, _where(alive, f.g, 0.0),
                                      initial_state=S0, output_final_state=True,
                                      chunk_size=chunk_size)
        return o, (S.transpose(-1, -2) if f.transposed else S)
    if isinstance(f, StabilizedOuterProduct):
        i = _where(alive, f.i, -float("inf"))  # no input and ...
        log_f = _where(alive, f.log_f, 0.0)  # ... no forgetting: the state stays
        return mlstm_chunkwise(f.q, f.k, f.v, i, log_f, initial_state=given,
                               output_final_state=True, chunk_size=chunk_size)
    if isinstance(f, Selective):
        dt = _where(alive, f.dt, 0.0)  # a = 1, no input
        return selective_scan(f.x, dt, f.A, f.B, f.C, initial_state=given, output_final_state=True,
                              neg_eigval=f.neg_eigval)
    if isinstance(f, TimeInvariant):
        return ssm_convolution(f.u, f.A, f.B, f.C, initial_state=given, output_final_state=True,
                               lengths=lengths)
    if isinstance(f, MinMaxBounds):
        r = _where(alive, f.r, float("inf"))  # the identity map x -> max(min(inf, x), -inf)
        s = _where(alive, f.s, -float("inf"))
        return minmax_scan(r, s, initial_state=given, output_final_state=True)
    raise TypeError(f"factors: expected one of MinMaxBounds, OuterProduct, "
                    f"StabilizedOuterProduct, Selective, TimeInvariant, got {type(f).__name__}")
