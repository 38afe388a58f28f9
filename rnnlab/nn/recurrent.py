"""``Recurrent(cell, engine)``: the user-facing layer that runs any cell on any engine it allows."""
from __future__ import annotations

import numbers
from typing import Optional, Tuple, Union

import torch
from torch import nn

from .. import cells as _cells
from ..checks import check_int
from ..cells.base import Cell, OptionTypeError, State, as_tuple
from ..engines import Engine, available as available_engines, compute_dtype, resolve


class Recurrent(nn.Module):
    """A recurrent layer: ``y, h_n = layer(x, initial_state=None, lengths=None)``.

    Args:
        cell: a ``Cell`` or a registered cell name (then ``input_size`` and ``hidden_size`` are
            required and ``cell_kwargs`` go to the cell).
        engine: ``"auto"`` (the scan engine for linear cells; for nonlinear ones Newton or
            the sequential engine per call, whichever the cell's ``newton_wins`` says measured
            faster at that call's sizes, ``engines/auto.py``), ``"sequential"``, ``"scan"``,
            ``"newton"``, ``"quasi"``, or an ``Engine`` object.

    Shapes: ``x: (B, T, D)``, ``y: (B, T, H_out)``, ``lengths: (B,)``; the state is what
    ``cell.init_state`` gives (a tensor ``(B, H)`` or a tuple), kept in at least fp32.

    Streaming: ``state = layer.initial_state(B)``, then ``y_chunk, state = layer.step(x_chunk,
    state)`` for chunks ``(B, t, D)`` of any length; equal to one run over the whole sequence.

    ``stats``: this layer's last call, as its engine reported it (``stats["engine"]`` names the
    engine that ran it; Newton adds ``iterations``, ``residual``, ``converged``... and, after
    the backward, ``adjoint_iterations`` for quasi-Newton). Layers that share one engine object
    each keep their own.
    """

    def __init__(self, cell: Union[Cell, str], engine: Union[str, Engine] = "auto",
                 input_size: Optional[int] = None, hidden_size: Optional[int] = None,
                 **cell_kwargs):
        super().__init__()
        if isinstance(engine, numbers.Number):  # Recurrent("gru", 4, 8): sizes given by position
            hint = "" if not isinstance(cell, str) else (
                f"; give the sizes by name: Recurrent({cell!r}, input_size={engine!r}, "
                f"hidden_size={'H' if input_size is None else input_size})")
            raise OptionTypeError(f"Recurrent: engine (the second argument) must be 'auto', one "
                                  f"of {available_engines()} or an Engine object, got {engine!r}"
                                  f"{hint}")
        if isinstance(cell, str):
            if input_size is None or hidden_size is None:
                raise ValueError(f"Recurrent: building cell {cell!r} by name needs input_size "
                                 f"and hidden_size, got {input_size!r} and {hidden_size!r}")
            cell = _cells.get(cell, input_size, hidden_size, **cell_kwargs)
        elif not isinstance(cell, Cell):
            raise TypeError(f"Recurrent: cell must be a rnnlab Cell or a registered name "
                            f"({', '.join(_cells.available())}), got {type(cell).__name__}")
        elif cell_kwargs or input_size is not None or hidden_size is not None:
            raise ValueError("Recurrent: sizes and cell options go to the cell's constructor "
                             "when a built Cell is passed")
        self.cell = cell
        self.engine = resolve(engine, cell)
        self.stats: dict = {}

    @property
    def engine_name(self) -> str:
        """Name of the engine this layer runs on (what ``"auto"`` picked: ``"auto"`` itself
        when it picks per call; ``stats["engine"]`` says which ran the last call)."""
        return self.engine.name

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def forward(self, x: torch.Tensor, initial_state: Optional[State] = None,
                lengths=None) -> Tuple[torch.Tensor, State]:
        self._check_devices(x, initial_state, "initial_state")
        self.stats = {}
        return self.engine(self.cell, x, initial_state, lengths, stats=self.stats)

    def _check_devices(self, x, state, name: str) -> None:
        """``x``, ``state`` and the parameters on one device, said in the caller's terms (the
        engine would fail deep inside with "Tensor on device cpu is not on the expected
        device")."""
        if not isinstance(x, torch.Tensor):
            return  # the engine names a wrong type
        weight = next(self.cell.parameters(), None)
        if weight is not None and weight.device != x.device:
            raise ValueError(f"x: expected the device of the layer's parameters "
                             f"({weight.device}), got {x.device}; move one with .to(device)")
        leaves = as_tuple(state) if isinstance(state, (torch.Tensor, tuple)) else ()
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor) and leaf.device != x.device:
                where = f"{name}[{i}]" if isinstance(state, tuple) else name
                raise ValueError(f"{where}: expected the device of x ({x.device}), "
                                 f"got {leaf.device}; move both to one device")

    def initial_state(self, batch: int, device=None) -> State:
        """The zero state for ``batch`` sequences, in the dtype runs keep state in (>= fp32)."""
        check_int("initial_state", "batch", batch, 1)
        params = list(self.cell.parameters())
        device = device if device is not None else (params[0].device if params else None)
        dtype = compute_dtype(torch.empty(0), params)
        return self.cell.init_state(batch, dtype, device)

    def step(self, x_chunk: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """Run one chunk ``(B, t, D)`` (t >= 1) from ``state``: ``(y_chunk, state)``."""
        self._check_devices(x_chunk, state, "state")
        self.stats = {}
        return self.engine(self.cell, x_chunk, state, input_name="x_chunk", state_name="state",
                           stats=self.stats)

    def extra_repr(self) -> str:
        return f"engine={self.engine_name}"
