"""Argument checks shared by every layer (ops to CLI): each error names the owner, the argument,
what was expected and what was given.

``owner`` is the function or class that took the argument (``"SequenceModel"``); its errors read
``"SequenceModel: n_layers must be an int >= 1, got 0"``. Command-line options pass
``owner=None`` and the option as ``name``: ``"--steps: expected an integer >= 1, got 0"``.

A value of the wrong type raises ``OptionTypeError`` (a TypeError, as torch.nn raises for a
wrongly typed size, and a ValueError, as every rnnlab user error is); a value out of range or not
among the choices raises ValueError. ``bool`` is never an int here: ``True`` is not a size.
"""
from __future__ import annotations

import difflib
import math
import numbers
from typing import Iterable, Optional, Sequence

from .errors import OptionTypeError

try:  # numpy's bool is not a Python bool, and is no more a number than True is
    from numpy import bool_ as np_bool
except ImportError:  # pragma: no cover - numpy comes with torch
    np_bool = bool


def _prefix(owner: Optional[str], name: str) -> str:
    return f"{name}:" if owner is None else f"{owner}: {name}"


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'gru'?)"`` for the closest of ``choices`` to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_int(value) -> bool:
    """An integer that is not a bool (numpy integers count: they come out of data)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np_bool))


def is_number(value) -> bool:
    """A real number that is not a bool (numpy scalars count; a tensor does not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool))


def check_int(owner: Optional[str], name: str, value, low: Optional[int] = None,
              high: Optional[int] = None, *, optional: bool = False) -> None:
    """``value`` must be an int (not a bool) in ``[low, high]`` (a None bound is open);
    ``optional``: None passes too."""
    if optional and value is None:
        return
    if low is None and high is None:
        rng = ""
    elif high is None:
        rng = f" >= {low}"
    elif low is None:
        rng = f" <= {high}"
    else:
        rng = f" in [{low}, {high}]"
    what = f"an int{rng}{' or None' if optional else ''}"
    if owner is None:
        what = f"expected an integer{rng}{' or None' if optional else ''}"
    message = (f"{_prefix(owner, name)} {'' if owner is None else 'must be '}{what}, "
               f"got {value!r}")
    if not is_int(value):
        raise OptionTypeError(message)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(message)


def check_bool(owner: Optional[str], name: str, value) -> None:
    """``value`` must be ``True`` or ``False`` (not 0/1, not the string ``"false"``)."""
    if not isinstance(value, bool):
        verb = "expected" if owner is None else "must be"
        raise OptionTypeError(f"{_prefix(owner, name)} {verb} a bool (True or False), "
                              f"got {value!r}")


def check_number(owner: Optional[str], name: str, value, low: float = -math.inf,
                 high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
                 optional: bool = False, note: str = "") -> None:
    """``low <= value <= high`` (``<`` on an ``*_open`` side); infinite bounds are open (no
    argument means anything by inf) and NaN is never in range. ``optional``: None passes too.
    ``note`` is added after the range (``" (at most dt_max)"``)."""
    if optional and value is None:
        return
    low_open, high_open = low_open or low == -math.inf, high_open or high == math.inf
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    verb = "expected a number in" if owner is None else "must be in"
    message = (f"{_prefix(owner, name)} {verb} {interval}{' or None' if optional else ''}"
               f"{note}, got {value!r}")
    if not is_number(value):
        raise OptionTypeError(message)
    above = value > low if low_open else value >= low
    if not (above and (value < high if high_open else value <= high)):
        raise ValueError(message)


def check_choice(owner: Optional[str], name: str, value, choices: Sequence) -> None:
    """``value`` must be one of ``choices``; the error lists them and suggests the closest."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set
        ok = False
    if not ok:
        verb = "expected one of" if owner is None else "must be one of"
        hint = did_you_mean(value, [c for c in choices if isinstance(c, str)]) \
            if isinstance(value, str) else ""
        raise ValueError(f"{_prefix(owner, name)} {verb} {list(choices)}, got {value!r}{hint}")
