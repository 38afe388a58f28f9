"""Engines run a cell over a sequence: ``Sequential`` (the reference, every cell), ``Scan``
(linear cells, in parallel over time) and ``Newton`` (nonlinear cells, parallel Newton
iterations; its methods ``NewtonSteps`` and ``ELK``). ``resolve`` turns a name into an engine;
``"auto"`` picks by the cell's structure and, for nonlinear cells, by what was measured faster
at the sizes of each call (``auto.py``)."""
from __future__ import annotations

from typing import Callable, Dict, List, Union

from ..cells.base import Cell
from .auto import Auto
from .base import Engine, call_with_params, compute_dtype  # noqa: F401
from .elk import ELK  # noqa: F401 - Newton(method=ELK(...))
from .fused import Fused
from .iterate import NewtonSteps  # noqa: F401 - Newton(method=NewtonSteps(...))
from .newton import Newton
from .scan import Scan
from .sequential import Sequential

_ENGINES: Dict[str, Callable[[], Engine]] = {
    "sequential": Sequential, "scan": Scan, "newton": Newton,
    "quasi": lambda: Newton(quasi=True), "fused": Fused}


def available() -> List[str]:
    """Engine names accepted by ``resolve`` (besides ``"auto"``)."""
    return sorted(_ENGINES)


def auto(cell: Cell) -> Engine:
    """The scan engine for linear cells; for a cell that declares where Newton measured faster
    (``newton_wins``), ``Auto``, which picks Newton or the sequential engine per call
    (``auto.py``); else the sequential engine."""
    if Scan().supports(cell):
        return Scan()
    if getattr(cell, "newton_wins", None) is not None and Newton().supports(cell):
        return Auto(cell)
    return Sequential()


def resolve(engine: Union[str, Engine], cell: Cell) -> Engine:
    """An engine object from a name (``"sequential"``, ``"auto"``) or an engine object."""
    if isinstance(engine, Engine):
        chosen = engine
    elif engine == "auto":
        chosen = auto(cell)
    elif isinstance(engine, str) and engine in _ENGINES:
        chosen = _ENGINES[engine]()
    else:
        raise ValueError(f"engine: expected 'auto', one of {available()} or an Engine object, "
                         f"got {engine!r}")
    if not chosen.supports(cell):
        raise ValueError(f"engine: {chosen.name!r} cannot run {type(cell).__name__} "
                         f"(structure {cell.structure})")
    return chosen
