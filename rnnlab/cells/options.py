"""Checks of the options a constructor is given, from its signature: names (an unknown one lists
the valid ones and suggests the closest), types (``check_options``, ``check_call``: a bool must be
a bool) and ranges (``check_range``). Cells, tasks and models all use them."""
from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from typing import Callable, Dict, Optional, Tuple

from ..checks import check_number, did_you_mean  # noqa: F401 - did_you_mean re-exported
from ..errors import OptionTypeError

_PLAIN = (bool, int, float, str, type(None))  # the option types a signature check understands


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


def check_call(what: str, fn: Callable, args: tuple, kwargs: dict,
               fixed: Tuple[str, ...] = ()) -> dict:
    """``check_options`` for a whole call ``fn(*args, **kwargs)``: every argument not in
    ``fixed``, given by position or by name, is checked against ``fn``'s signature. A call the
    signature cannot take raises Python's own TypeError, or the ``check_options`` ValueError for
    an unknown name (which lists the valid ones). Returns the arguments given, by name."""
    signature = inspect.signature(fn)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        check_options(what, fn, kwargs, fixed)
        raise TypeError(f"{what}: {e}") from None
    variadic = {p.name for p in signature.parameters.values()
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    given = {k: v for k, v in bound.arguments.items() if k not in fixed and k not in variadic}
    check_options(what, fn, given, fixed)
    return bound.arguments


def check_range(owner: str, name: str, value, low: float = -math.inf, high: float = math.inf, *,
                low_open: bool = False, high_open: bool = False, optional: bool = False,
                note: str = "") -> None:
    """``rnnlab.checks.check_number``: ``"{owner}: {name} must be in [low, high], got {value}"``
    unless ``low <= value <= high`` (``<`` on an ``*_open`` side)."""
    check_number(owner, name, value, low, high, low_open=low_open, high_open=high_open,
                 optional=optional, note=note)
