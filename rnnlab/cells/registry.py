"""Cells by name: ``register`` (a decorator), ``get``, ``available``."""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from .base import Cell

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
    """Build the cell registered as ``name``: ``get("gru", 16, 32, bias=False)``."""
    if name not in _REGISTRY:
        raise ValueError(f"cell: unknown name {name!r}; available: {', '.join(available())}")
    factory, defaults = _REGISTRY[name]
    return factory(input_size, hidden_size, **{**defaults, **kwargs})


def available() -> List[str]:
    """Names of all registered cells, sorted."""
    return sorted(_REGISTRY)
