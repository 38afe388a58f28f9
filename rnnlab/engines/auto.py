"""``engine="auto"``: the engine measured fastest for the cell, the sizes and the device.

At construction (``engines.auto``) linear cells get the scan engine and cells that declare
no ``newton_wins`` (``cells/base.py NewtonWins``) the sequential one, for good. A cell
that declares where Newton measured faster gets ``Auto``, which picks per call, since the
winner depends on that call's sizes: Newton (or quasi-Newton, as the cell's figures say) on CPU
for long enough sequences of few enough batch x state numbers, else the sequential engine.
CUDA has no figures yet, so it stays sequential there.

Newton runs with ``on_fail="sequential"``: a solve that does not converge, or whose Jacobians
would not fit the memory budget, is recomputed sequentially (warned once), and from then on
this ``Auto`` keeps that cell on the sequential engine (trained weights that need many
iterations would keep paying for a solve thrown away). Either way a call returns what the
sequential engine would, within Newton's tolerance.
"""
from __future__ import annotations

import weakref
from typing import Optional, Tuple

import torch

from ..cells.base import Cell, NewtonWins, State
from .base import Engine
from .linearize import layout
from .newton import Newton
from .sequential import Sequential

AUTO_MAX_ITERS = 50  # quasi-Newton under "auto": a failing solve costs at most this many passes


def prefers_newton(wins: Optional[NewtonWins], batch: int, steps: int, state_size: int,
                   device: torch.device, training: bool) -> bool:
    """Whether a call of ``batch`` sequences of ``steps`` steps, ``state_size`` state numbers
    each, on ``device``, lies where the cell's ``wins`` says Newton measured faster
    (``training``: the call builds a graph, so its backward counts too)."""
    if wins is None or device.type != "cpu" or steps < wins.min_steps:
        return False
    return batch * state_size <= (wins.train if training else wins.infer)


class Auto(Engine):
    """Newton or the sequential engine, per call, as ``prefers_newton`` says.

    A call's ``stats`` (``engine(cell, x, stats=d)``, ``Recurrent.stats``) name the engine that
    ran it (``"engine"``) and hold Newton's statistics when Newton ran it (``"fallback"`` when
    it handed the call to the sequential engine). ``last`` and ``stats`` are the last call's,
    whichever layer made it; ``newton.fallbacks`` counts the calls Newton handed over.
    """

    name = "auto"

    def __init__(self, cell: Cell):
        wins = getattr(cell, "newton_wins", None)
        self.newton = Newton(on_fail="sequential", quasi=bool(wins and wins.quasi),
                             max_iters=AUTO_MAX_ITERS)
        self.sequential = Sequential()
        self._gave_up: "weakref.WeakSet[Cell]" = weakref.WeakSet()
        self._last: dict = {}

    def supports(self, cell: Cell) -> bool:
        return True  # the sequential engine runs every cell

    @property
    def stats(self) -> dict:
        """The statistics of this engine's last call, whichever layer made it."""
        return self._last

    @property
    def last(self) -> Optional[str]:
        """The engine that ran this engine's last call (``stats["engine"]``)."""
        return self._last.get("engine")

    def choose(self, cell: Cell, x: torch.Tensor, h0: State) -> Engine:
        """The engine for one call on ``x (B, T, D)`` from ``h0``."""
        if cell in self._gave_up or not self.newton.supports(cell):
            return self.sequential
        training = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in cell.parameters()))
        fast = prefers_newton(getattr(cell, "newton_wins", None), x.shape[0], x.shape[1],
                              layout(cell, h0).size, x.device, training)
        return self.newton if fast else self.sequential

    def run(self, cell: Cell, x: torch.Tensor, h0: State,
            lengths: Optional[torch.Tensor]) -> Tuple[torch.Tensor, State]:
        return self.run_call(cell, x, h0, lengths, {})

    def run_call(self, cell: Cell, x: torch.Tensor, h0: State, lengths: Optional[torch.Tensor],
                 stats: dict) -> Tuple[torch.Tensor, State]:
        self._last = stats
        engine = self.choose(cell, x, h0)
        out = engine.run_call(cell, x, h0, lengths, stats)
        if stats.get("fallback"):
            self._gave_up.add(cell)
        return out

    def __repr__(self) -> str:
        return f"Auto(newton={self.newton!r})"
