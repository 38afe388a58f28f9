"""Cells by name: ``register`` (a decorator), ``get``, ``available``. The generic option checks
(``check_options`` and friends) live in ``options.py`` and are re-exported here."""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from .base import SIZES, Cell, named
from .options import (accepts, check_options, describe, did_you_mean,  # noqa: F401
                      option_types)

_REGISTRY: Dict[str, Tuple[Callable[..., Cell], dict]] = {}


def register(name: str, **defaults) -> Callable:
    """Register a cell class (or factory) under ``name``; ``defaults`` are keyword options applied
    before the caller's, so one class can serve several names (``rnn_tanh``, ``rnn_relu``)."""
    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"cell name {name!r} is already registered "
                             f"(by {_REGISTRY[name][0].__qualname__})")
        _REGISTRY[name] = (factory, dict(defaults))
        return factory
    return deco


def get(name: str, input_size: int, hidden_size: int, **kwargs) -> Cell:
    """Build the cell registered as ``name``: ``get("gru", 16, 32, bias=False)``. Option names
    and types are checked against the constructor's signature first (``check_options``); errors
    name the cell as registered (``cell 'gru'``)."""
    factory = constructor(name)
    options = {**_REGISTRY[name][1], **kwargs}
    if isinstance(factory, type) and issubclass(factory, Cell):
        with named(f"cell {name!r}"):  # a Cell's constructor checks its own arguments
            return factory(input_size, hidden_size, **options)
    check_options(f"cell {name!r}", factory, kwargs, fixed=SIZES)  # sizes: Cell checks them
    return factory(input_size, hidden_size, **options)


def constructor(name: str) -> Callable[..., Cell]:
    """The class (or factory) registered as ``name``, e.g. to read its options' types."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"cell: unknown name {name!r}{did_you_mean(name, available())}; "
                         f"available: {', '.join(available())}")
    return _REGISTRY[name][0]


def available() -> List[str]:
    """Names of all registered cells, sorted."""
    return sorted(_REGISTRY)
