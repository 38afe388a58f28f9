"""The sequential engine: the reference. Loops over time calling ``cell.step``; works for every
cell; gradients by autograd through the loop."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..cells.base import Cell, State, map_state
from .base import Engine


def _where(alive: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per-sample select: ``alive: (B,)`` against a state leaf ``(B, ...)``."""
    return torch.where(alive.view(-1, *([1] * (new.dim() - 1))), new, old)


class Sequential(Engine):
    """Step-by-step reference engine (streaming, constant memory per step)."""

    name = "sequential"

    def run(self, cell: Cell, x: torch.Tensor, h: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        # unbind, not u[:, t]: its backward is one stack, where T slices would each scatter into
        # a zero tensor the size of u (O(T^2) memory traffic).
        us = cell.project(x).unbind(1)  # (B, T, D) -> T x (B, P)
        # Steps where every sequence is alive need no masking; after the longest ends, none run,
        # but at least one (masked) step does, so that even when every sequence is empty the
        # outputs and state hang on the graph (zero gradients, as the other engines give,
        # rather than fresh zeros that cannot backward).
        t_all = T if lengths is None else int(lengths.min())
        t_any = T if lengths is None else max(int(lengths.max()), 1)
        ys = []
        for t in range(t_any):
            if t < t_all:
                h, y = cell.step_readout(us[t], h)
                ys.append(y)
            else:
                h_new = cell.step(us[t], h)
                alive = t < lengths  # (B,)
                h = map_state(lambda n, o: _where(alive, n, o), h_new, h)
                y = cell.readout(h, us[t])
                ys.append(_where(alive, y, torch.zeros_like(y)))
        if t_any < T:
            y = cell.readout(h, us[-1])
            ys.extend([torch.zeros_like(y)] * (T - t_any))
        return torch.stack(ys, dim=1), h  # (B, T, H_out)
