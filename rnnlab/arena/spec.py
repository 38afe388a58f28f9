"""Model and task specs as written on the command line and in presets.

A spec is ``name`` or ``name(key=value, ...)``: ``mod_arith(brackets=true)``,
``deltanet(heads=2)``. Model names are a registered cell, ``transformer``, or an alias below that
fixes options (``mamba[-1,1]`` is Mamba with negative eigenvalues allowed, Grazzi et al.'s name).
Lists are comma-separated; commas inside brackets or parentheses belong to the spec.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from typing import Dict, List, Tuple

from .. import cells, tasks
from ..models.sequence import ATTENTION

# alias -> (mixer, options). The [a,b] suffix is the range of the transition's eigenvalues.
ALIASES: Dict[str, Tuple[str, dict]] = {
    "transformer": (ATTENTION, {}),
    "mamba[0,1]": ("mamba", {"allow_neg_eigval": False}),
    "mamba[-1,1]": ("mamba", {"allow_neg_eigval": True}),
    "mamba2[0,1]": ("mamba2", {"allow_neg_eigval": False}),
    "mamba2[-1,1]": ("mamba2", {"allow_neg_eigval": True}),
    "deltanet[0,1]": ("deltanet", {"allow_neg_eigval": False}),
    "deltanet[-1,1]": ("deltanet", {"allow_neg_eigval": True}),
    "gated_deltanet[0,1]": ("gated_deltanet", {"allow_neg_eigval": False}),
    "gated_deltanet[-1,1]": ("gated_deltanet", {"allow_neg_eigval": True}),
    "deltaproduct[-1,1]": ("deltaproduct", {"allow_neg_eigval": True}),
}

ARENA_KINDS = ("tokens", "real")  # what SequenceModel reads and writes

_SPEC = re.compile(r"^\s*([A-Za-z0-9_\[\],.\-]+?)\s*(?:\((.*)\))?\s*$")


def split_list(text: str) -> List[str]:
    """``"lstm,mamba[-1,1],mod_arith(brackets=true)"`` -> the three specs."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(" and 1 or 0
        depth -= ch in "])" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse(spec: str, what: str) -> Tuple[str, dict]:
    """``"name(key=value, ...)"`` -> ``(name, {key: value})``; ``what`` names the argument."""
    match = _SPEC.match(spec)
    if not match:
        raise ValueError(f"{what}: cannot parse spec {spec!r}; expected name or name(key=value)")
    name, args = match.group(1), match.group(2)
    options = {}
    for item in split_list(args or ""):
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"{what}: option {item!r} in {spec!r} must look like key=value")
        options[key.strip()] = _value(value)
    return name, options


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    label: str  # as written; the name in tables
    mixer: str  # a registered cell name or "attention"
    options: Dict[str, object]  # cell options (or heads= for attention)


def model(spec: str) -> ModelSpec:
    """Resolve a model spec (see module docstring); unknown names raise listing the known ones."""
    name, options = parse(spec, "--models")
    if name in ALIASES:
        mixer, fixed = ALIASES[name]
        return ModelSpec(spec.strip(), mixer, {**fixed, **options})
    if name in cells.available():
        return ModelSpec(spec.strip(), name, options)
    raise ValueError(f"--models: unknown model {name!r}; expected a registered cell "
                     f"({', '.join(cells.available())}) or one of {', '.join(ALIASES)}")


def task(spec: str) -> Tuple[str, tasks.Task]:
    """Resolve a task spec to ``(label, task)``; the task validates its own options."""
    name, options = parse(spec, "--tasks")
    if name not in tasks.available():
        raise ValueError(f"--tasks: unknown task {name!r}; available: "
                         f"{', '.join(tasks.available())}")
    task = tasks.get(name, **options)
    if task.kind not in ARENA_KINDS:
        raise ValueError(f"--tasks: {name!r} is a {task.kind} task; the arena trains sequence "
                         f"models on {' and '.join(ARENA_KINDS)} tasks (pointer tasks need "
                         f"rnnlab.models.PointerNet)")
    return spec.strip(), task
