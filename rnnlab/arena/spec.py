"""Model and task specs as written on the command line and in presets.

A spec is ``name`` or ``name(key=value, ...)``: ``mod_arith(brackets=true)``,
``deltanet(heads=2)``. Model names are a registered cell, ``transformer``, or an alias below that
fixes options (``mamba[-1,1]`` is Mamba with negative eigenvalues allowed, Grazzi et al.'s name).
A plain cell name runs the cell in the generic block (``block="default"``); the aliases run the
family's published block (``block="published"``: Mamba's conv and gate, DeltaNet's convs and
norms, ...); ``block=default`` / ``block=published`` in a spec's options picks either.
``ut`` is the Universal Transformer (``models.universal``: one shared attention block, repeated in
depth with ACT), with its options (``ut(max_steps=8,act=false)``).
``lr=...`` sets one model's learning rate (any model: ``gla(lr=3e-3)``): each family has its
own best rate, so a fair comparison sweeps it per model (Zoology's protocol), row by row.
``prefix=true`` runs the cells in prefix mode (JRT-RNN, ``nn/prefix.py``: ``gla(prefix=true)``,
``mamba2[-1,1](prefix=true)``), on tasks that give a context prefix (``Task.prefix``).
Lists are comma-separated; commas inside brackets or parentheses belong to the spec.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from typing import Dict, List, Optional, Tuple

from .. import cells, tasks
from ..cells.registry import check_options, option_types
from ..checks import check_bool, check_choice, check_number, did_you_mean
from ..models.attention import CausalSelfAttention
from ..models.block import ATTENTION, BLOCKS, check_block, check_mixer
from ..models.universal import UniversalTransformer

# alias -> (mixer, options, block). The [a,b] suffix is the range of the transition's
# eigenvalues; the cell runs in its family's published block.
ALIASES: Dict[str, Tuple[str, dict, str]] = {
    "transformer": (ATTENTION, {}, "default"),
    "mamba[0,1]": ("mamba", {"allow_neg_eigval": False}, "published"),
    "mamba[-1,1]": ("mamba", {"allow_neg_eigval": True}, "published"),
    "mamba2[0,1]": ("mamba2", {"allow_neg_eigval": False}, "published"),
    "mamba2[-1,1]": ("mamba2", {"allow_neg_eigval": True}, "published"),
    "deltanet[0,1]": ("deltanet", {"allow_neg_eigval": False}, "published"),
    "deltanet[-1,1]": ("deltanet", {"allow_neg_eigval": True}, "published"),
    "gated_deltanet[0,1]": ("gated_deltanet", {"allow_neg_eigval": False}, "published"),
    "gated_deltanet[-1,1]": ("gated_deltanet", {"allow_neg_eigval": True}, "published"),
    "deltaproduct[-1,1]": ("deltaproduct", {"allow_neg_eigval": True}, "published"),
}

UNIVERSAL = "ut"  # the Universal Transformer: attention shared across depth, with ACT
UT_FIXED = ("vocab_size", "n_outputs", "d_model", "kind", "mixer", "engine", "block")

ARENA_KINDS = ("tokens", "real")  # what SequenceModel reads and writes
CELL_FIXED = ("input_size", "hidden_size", "device", "dtype")  # the model sets these, not a spec
LAYER_FIXED = CELL_FIXED + ("in_proj",)  # a published layer sets in_proj too

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


def typed(what: str, spec: str, fn, options: dict, fixed: Tuple[str, ...] = ()) -> dict:
    """``options`` parsed from ``spec`` as ``fn`` takes them: a bool option is true/false/1/0
    (any case; anything else is refused naming the option); then names and types are checked
    against ``fn``'s signature (``cells.registry.check_options``)."""
    accepted = option_types(fn)
    out = {}
    for key, value in options.items():
        if key in fixed:
            raise ValueError(f"{what}: option {key} in {spec!r} is set by the model, not by "
                             f"the spec")
        kinds = accepted.get(key) or ()
        if bool in kinds and not isinstance(value, bool) and value is not None:
            if type(value) is not int or value not in (0, 1):
                raise ValueError(f"{what}: option {key} in {spec!r} must be true or false "
                                 f"(or 1/0), got {value!r}")
            value = bool(value)
        out[key] = value
    check_options(f"{what}: {spec!r}", fn, out, fixed)
    return out


def cell_options(text: str, cell: str, what: str = "--cell-options") -> dict:
    """``"allow_neg_eigval=true,heads=2"`` -> the options of ``cell``, typed and checked."""
    check_mixer(None, "--cell", cell)
    options = parse(f"x({text})", what)[1]
    if cell == ATTENTION and options:
        raise ValueError(f"{what}: attention layers take no cell options, got {text!r}")
    return typed(what, text, cells.registry.constructor(cell), options, CELL_FIXED) \
        if options else {}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    label: str  # as written; the name in tables
    mixer: str  # a registered cell name or "attention"
    options: Dict[str, object]  # cell options (or heads= for attention)
    block: str = "default"  # "default" or "published" (models.block.make_block)
    prefix: bool = False  # prefix mode: the task's context read non-causally (nn/prefix.py)
    universal: bool = False  # a UniversalTransformer (options: its own), not a SequenceModel
    lr: Optional[float] = None  # this model's AdamW learning rate (None: the arena's ``lr``)


def model(spec: str) -> ModelSpec:
    """Resolve a model spec (see module docstring); unknown names raise listing the known ones
    and the closest, options are checked against the mixer's signature (names and types)."""
    name, options = parse(spec, "--models")
    lr = options.pop("lr", None)
    check_number(f"--models: {spec!r}", "lr", lr, 0, 1, low_open=True, optional=True)
    if name == UNIVERSAL:
        return dataclasses.replace(_universal(spec, options), lr=lr)
    check_mixer(None, "--models", name, attention=False, aliases=[*ALIASES, UNIVERSAL],
                noun="model")
    mixer, preset, block = ALIASES.get(name, (name, {}, "default"))
    block = options.pop("block", block)
    check_choice(f"--models: {spec!r}", "block", block, BLOCKS)
    prefix = options.pop("prefix", False)
    prefix = bool(prefix) if type(prefix) is int and prefix in (0, 1) else prefix
    check_bool(f"--models: {spec!r}", "prefix", prefix)
    if prefix and mixer == ATTENTION:
        raise ValueError(f"--models: {spec!r}: prefix=true is the prefix mode of a recurrent "
                         f"cell; attention has none")
    if mixer != ATTENTION:
        check_block(f"--models: {spec!r}", block, mixer)
    if mixer == ATTENTION:
        options = typed("--models", spec, CausalSelfAttention, options, ("d_model",))
    else:
        fixed = LAYER_FIXED if block == "published" else CELL_FIXED
        options = typed("--models", spec, cells.registry.constructor(mixer), options, fixed)
    return ModelSpec(spec.strip(), mixer, {**preset, **options}, block, prefix, lr=lr)


def architecture(spec: ModelSpec) -> tuple:
    """What ``spec`` builds, comparable with ``==`` across labels: ``gru`` and ``gru()``,
    ``mamba[0,1]`` and ``mamba(allow_neg_eigval=false,block=published)``, or an option written
    at its default, are one model. The learning rate is not part of it (see ``identity``)."""
    fn = (UniversalTransformer if spec.universal else CausalSelfAttention
          if spec.mixer == ATTENTION else cells.registry.constructor(spec.mixer))
    defaults = {name: p.default for name, p in inspect.signature(fn).parameters.items()
                if p.default is not p.empty}
    options = sorted((k, v) for k, v in spec.options.items()
                     if k not in defaults or defaults[k] != v)
    return spec.mixer, spec.block, spec.prefix, spec.universal, options


def identity(spec: ModelSpec, default_lr: float) -> tuple:
    """What ``spec`` trains: its ``architecture`` and the learning rate the run uses."""
    return (*architecture(spec), default_lr if spec.lr is None else spec.lr)


def check_distinct(option: str, noun: str, labels: List[str], built: list) -> None:
    """Refuse two labels that build the same thing (``word_problem`` and
    ``word_problem(group='S5')``): each would only repeat the other's rows under a second
    name. ``built[i]`` is what ``labels[i]`` builds (an ``identity``, a task)."""
    for i, thing in enumerate(built):  # specs hold lists: compared with ==, not hashed
        for j in range(i):
            if built[j] == thing:
                raise ValueError(f"{option}: {labels[j]!r} and {labels[i]!r} are the same "
                                 f"{noun} (equal options once defaults are filled in); list "
                                 f"one of them")


def without_lr(label: str) -> str:
    """A model label with its ``lr=`` option left out (``"gla(heads=2,lr=3e-3)"`` ->
    ``"gla(heads=2)"``): the model a preset's expected value names."""
    match = _SPEC.match(label)
    if not match or match.group(2) is None:
        return label
    kept = [item for item in split_list(match.group(2))
            if item.partition("=")[0].strip() != "lr"]
    return match.group(1) + (f"({','.join(kept)})" if kept else "")


def _universal(spec: str, options: dict) -> ModelSpec:
    """``ut(...)``: the options are ``UniversalTransformer``'s own (its cell options are not
    offered: the arena's UT mixes by attention)."""
    known = [k for k in option_types(UniversalTransformer) if k not in UT_FIXED]
    for key in options:
        if key not in known and key not in UT_FIXED:  # the constructor takes any **cell_kwargs
            raise ValueError(f"--models: unknown option {key!r} in {spec!r}"
                             f"{did_you_mean(key, known)}; valid options: {', '.join(known)}")
    options = typed("--models", spec, UniversalTransformer, options, UT_FIXED)
    return ModelSpec(spec.strip(), ATTENTION, options, "default", False, universal=True)


def task(spec: str) -> Tuple[str, tasks.Task]:
    """Resolve a task spec to ``(label, task)``: option names and booleans are checked here,
    ranges by the task itself."""
    name, options = parse(spec, "--tasks")
    if name not in tasks.available():
        raise ValueError(f"--tasks: unknown task {name!r}{did_you_mean(name, tasks.available())};"
                         f" available: {', '.join(tasks.available())}")
    task = tasks.get(name, **typed("--tasks", spec, tasks.task_class(name), options))
    if task.kind not in ARENA_KINDS:
        raise ValueError(f"--tasks: {name!r} is a {task.kind} task; the arena trains sequence "
                         f"models on {' and '.join(ARENA_KINDS)} tasks (pointer tasks need "
                         f"rnnlab.models.PointerNet)")
    return spec.strip(), task
