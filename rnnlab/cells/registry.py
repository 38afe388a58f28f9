"""Cells by name: ``register`` (a decorator), ``get``, ``available``; and the generic option check
every cell (and task, and model) gets from its constructor's signature: ``check_options``."""
from __future__ import annotations

import difflib
import inspect
import math
import numbers
import types
import typing
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from .base import Cell, OptionTypeError

_REGISTRY: Dict[str, Tuple[Callable[..., Cell], dict]] = {}

_PLAIN = (bool, int, float, str, type(None))  # the option types a signature check understands
_SIZES = ("input_size", "hidden_size")  # given positionally to every cell, not options


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
    and types are checked against the constructor's signature first (``check_options``)."""
    factory = constructor(name)
    check_options(f"cell {name!r}", factory, kwargs, fixed=_SIZES)  # sizes: Cell checks them
    return factory(input_size, hidden_size, **{**_REGISTRY[name][1], **kwargs})


def constructor(name: str) -> Callable[..., Cell]:
    """The class (or factory) registered as ``name``, e.g. to read its options' types."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"cell: unknown name {name!r}{did_you_mean(name, available())}; "
                         f"available: {', '.join(available())}")
    return _REGISTRY[name][0]


def available() -> List[str]:
    """Names of all registered cells, sorted."""
    return sorted(_REGISTRY)


# ---- generic checks from a signature ------------------------------------------------------------

def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'gru'?)"`` for the closest of ``choices`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def option_types(fn: Callable) -> Dict[str, Optional[tuple]]:
    """Each keyword parameter of ``fn`` (a class: its constructor) -> the plain types it accepts
    (among bool, int, float, str, None), from its annotation, else from its default; None for a
    parameter whose type is not one of those (tensors, devices...), which stays unchecked."""
    signature = inspect.signature(fn)
    init = fn.__init__ if isinstance(fn, type) else fn
    scope = getattr(inspect.unwrap(init), "__globals__", {})
    out = {}
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        accepted = _annotation_types(p.annotation, scope)
        if accepted is None and p.default is not p.empty and type(p.default) in _PLAIN[:-1]:
            accepted = (type(p.default),)
        if accepted is not None and p.default is None:
            accepted = tuple(dict.fromkeys(accepted + (type(None),)))
        out[p.name] = accepted
    return out


def _annotation_types(annotation, scope: dict) -> Optional[tuple]:
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):  # ``from __future__ import annotations``
        try:
            annotation = eval(annotation, dict(scope))  # what typing.get_type_hints does
        except Exception:  # noqa: BLE001 - a name only a type checker knows: leave unchecked
            return None
    if annotation in _PLAIN:
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return args if all(a in _PLAIN for a in args) else None
    return None


def accepts(value, accepted: tuple) -> bool:
    """Whether ``value`` is one of the ``accepted`` plain types: a bool is no int, an int is a
    float, and numpy scalars count as what they are."""
    for t in accepted:
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True
        if t in (str, type(None)) and isinstance(value, t):
            return True
    return False


def describe(accepted: tuple) -> str:
    """``(int, NoneType)`` -> ``"an int or None"``."""
    words = {bool: "a bool (True or False)", int: "an int", float: "a number", str: "a string",
             type(None): "None"}
    return " or ".join(words[t] for t in accepted)


def check_options(what: str, fn: Callable, options: dict, fixed: Tuple[str, ...] = ()) -> None:
    """Check ``options`` (name -> value) against the signature of ``fn``: an unknown name raises
    a ValueError listing the valid ones (and the closest), a value of the wrong type an
    ``OptionTypeError`` (a TypeError as torch.nn raises, and a ValueError) naming the option, the
    type expected and what was given; a NaN a ValueError. ``fixed``: the parameters the caller
    fills itself (not listed as options)."""
    accepted = option_types(fn)
    open_ended = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    for name, value in options.items():
        if name not in accepted:
            if open_ended:
                continue
            valid = [n for n in accepted if n not in fixed]
            raise ValueError(f"{what}: unknown option {name!r}{did_you_mean(name, valid)}; "
                             f"valid options: {', '.join(valid) or 'none'}")
        if accepted[name] is not None and not accepts(value, accepted[name]):
            raise OptionTypeError(f"{what}: {name} must be {describe(accepted[name])}, "
                                  f"got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and math.isnan(value):  # no option means anything by NaN
            raise ValueError(f"{what}: {name} must be a number, got nan")
