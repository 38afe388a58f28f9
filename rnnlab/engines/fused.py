"""The fused engine: FlashRNN-style kernels for the classic cells (``ops/fused_rnn``).

On CUDA, where triton imports, Elman (tanh), GRU, LSTM and sLSTM run as one Triton kernel over
time per direction of the pass (each head's recurrent weights and the state kept on chip); on
any other device, or in float64, the same math runs as ``fused_rnn_reference``'s plain loop, so
the engine gives the sequential engine's numbers everywhere. ``stats["kernel"]`` says which ran
("triton" or "torch"); the layer's ``engine_name`` is "fused".

Cells it takes: the kernels' default options only (``ops.fused_rnn.engine_supports``: no LSTM
projection or peepholes, GRU with ``reset_after``, heads of at most 64 channels); any other cell
is refused with the engine's usual error.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..cells.base import Cell, State, as_tuple
from ..ops import fused_rnn as fr
from .base import Engine


class Fused(Engine):
    """Fused kernels for Elman / GRU / LSTM / sLSTM (see the module docstring)."""

    name = "fused"

    def supports(self, cell: Cell) -> bool:
        return fr.engine_supports(cell) is not None

    def run_call(self, cell: Cell, x: torch.Tensor, h0: State, lengths: Optional[torch.Tensor],
                 stats: dict, **options) -> Tuple[torch.Tensor, State]:
        if options:
            raise TypeError(f"engine 'fused' takes no per-call options, got {sorted(options)}")
        stats["engine"] = self.name
        stats["kernel"] = "torch" if x.dtype == torch.float64 else fr.backend(x.device)
        return self.run(cell, x, h0, lengths)

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        name = fr.engine_supports(cell)
        leaves = as_tuple(h0)
        bias = None if name == "slstm" else cell.bias_hh  # sLSTM's bias is inside project
        y, h = fr.fused_rnn(name, cell.project(x), cell.weight_hh, bias, leaves, lengths)
        h = tuple(s.to(leaf.dtype) for s, leaf in zip(h, leaves))
        return y, (h if isinstance(h0, tuple) else h[0])
