"""``linear_scan_reference``: the plain fp32-or-wider loop over time that every path of
``linear_scan`` is tested against (fla's ``naive``)."""
from __future__ import annotations

import torch

from ..varlen import segments
from .inputs import check_inputs, dtypes


def linear_scan_reference(a, b, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Plain loop over time, the source of truth: ``h_t = a_t * h_{t-1} + b_t``.

    a: (B, T, ...) broadcasting against b: (B, T, ...); initial_state: (B, ...) or (N, ...)
    with cu_seqlens (zeros if None). Returns h: (B, T, ...) in the input dtype and
    h_T: (B, ...) or (N, ...) in the compute dtype (>= fp32), or None.
    """
    cu = check_inputs(a, b, initial_state, cu_seqlens)
    io, compute = dtypes(a, b, initial_state)
    a, b = a.to(compute), b.to(compute)
    h0 = None if initial_state is None else initial_state.to(compute)
    spans = [(0, b.shape[1])] if cu is None else segments(cu)
    outs, finals = [], []
    for i, (start, end) in enumerate(spans):
        rows = slice(None) if cu is None else slice(i, i + 1)
        h = b.new_zeros((b.shape[0] if cu is None else 1,) + b.shape[2:])  # (B, ...)
        h = h if h0 is None else h0[rows]
        for t in range(start, end):
            h = a[:, t] * h + b[:, t]
            outs.append(h)
        finals.append(h)
    h = torch.stack(outs, 1) if outs else b.clone()  # (B, T, ...)
    return h.to(io), (torch.cat(finals) if output_final_state else None)  # h_T (B or N, ...)
