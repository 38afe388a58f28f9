"""Check a cell: the generic tests that rnnlab runs on every registered cell, as plain functions
for a cell defined anywhere (your own package, a notebook, a test file).

    from rnnlab.testing import check_cell
    report = check_cell(MinGRU)     # a Cell subclass, a factory (D, H) -> Cell, or a name
    print(report)                   # checks passed and skipped, engines that ran

``check_cell`` runs every property below on the cell and returns a ``CellReport``; the first
property that does not hold raises an ``AssertionError`` ``"<cell>: <property>: <what>"``. Each
property is also a function of its own, ``check_<property>(factory, *, input_size=3,
hidden_size=4, seed=0, dtype=torch.float32, ...)``, for a test runner to parametrize over:

- ``step_contract``: ``step`` is pure and keeps the state's layout, shapes and dtype;
  ``readout`` is ``(B, output_size)``.
- ``structure``: the declared structure is true (the Jacobian's pattern; for linear cells,
  affine with A of the declared kind).
- ``transition``: an affine linear cell's ``transition`` agrees with its ``step``.
- ``determinism``: one seed, one cell and one output; another seed, other outputs.
- ``gradients``: finite outputs; gradients reach the input, the initial state and every
  parameter.
- ``streaming``: chunks through ``Recurrent.step`` equal one run.
- ``lengths``: ``lengths`` equal each sequence alone; padded outputs are 0.
- ``dtypes``: fp32/bf16/fp16/fp64 inputs keep an fp32 (fp64) state, close to the fp64 run.
- ``gradcheck``: fp64 gradients equal finite differences.
- ``padding`` (per engine): NaN/inf/1e30 past ``lengths`` change nothing, gradients included.
- ``engines_agree`` (per engine but the sequential): outputs, final state and every gradient
  equal the sequential engine's, in fp64.

The sequential engine is the reference; the structure-dependent checks run on every engine
that accepts the cell (``rnnlab.engines.resolve``). Nothing here imports pytest: failures are
plain AssertionErrors, which every test runner reports.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from ..checks import check_choice, check_int
from ..engines import available as available_engines
from .engines import check_engines_agree, check_padding, runnable
from .harness import Factory, NotApplicable, cast, check_dtype, resolve
from .properties import (
    check_determinism,
    check_dtypes,
    check_gradcheck,
    check_gradients,
    check_lengths,
    check_step_contract,
    check_streaming,
    check_structure,
    check_transition,
)
from .tolerance import TOL, assert_close, rel_err, sq_norm, widen

__all__ = ["CHECKS", "CellReport", "NotApplicable", "TOL", "assert_close", "check_cell",
           "check_determinism", "check_dtypes", "check_engines_agree", "check_gradcheck",
           "check_gradients", "check_lengths", "check_padding", "check_step_contract",
           "check_streaming", "check_structure", "check_transition", "rel_err", "sq_norm",
           "widen"]

# Cheap contract checks first, so a broken cell fails on the property it breaks rather than
# on a symptom further down.
_FUNCTIONS = (check_step_contract, check_structure, check_transition, check_determinism,
              check_gradients, check_streaming, check_lengths, check_dtypes, check_gradcheck,
              check_padding, check_engines_agree)
CHECKS = tuple(f.property for f in _FUNCTIONS)
_ORDER = ("scan", "newton", "quasi")  # how the report lists engines: reference, scan, Newton


@dataclass
class CellReport:
    """What ``check_cell`` did: every check it ran passed (a failure raises instead)."""
    cell: str
    engines: List[str]  # the engines the per-engine checks ran on, the sequential one first
    passed: List[str] = field(default_factory=list)  # "streaming", "padding[scan]", ...
    skipped: Dict[str, str] = field(default_factory=dict)  # check -> why it does not apply
    refused: Dict[str, str] = field(default_factory=dict)  # engine -> why it cannot run the cell

    def __str__(self) -> str:
        lines = [f"{self.cell}: {len(self.passed)} checks passed on {', '.join(self.engines)}",
                 textwrap.fill(", ".join(self.passed), 96, initial_indent="  passed: ",
                               subsequent_indent="    ")]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  engine {name} refused: {why}" for name, why in self.refused.items()]
        return "\n".join(lines)


def check_cell(factory: Factory, *, engines: Optional[Sequence[str]] = None,
               checks: Optional[Sequence[str]] = None, input_size: int = 3,
               hidden_size: int = 4, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> CellReport:
    """Run the generic cell checks on the cells ``factory(input_size, hidden_size)`` builds.

    Args:
        factory: a registered cell's name, or a callable ``(input_size, hidden_size) -> Cell``
            (a Cell subclass; ``functools.partial(MyCell, heads=2)`` for options).
        engines: engine names for the per-engine checks (default: every engine of
            ``rnnlab.engines.available()``); the sequential engine always runs, as the
            reference; an engine that refuses the cell's structure is skipped (``refused``).
        checks: names from ``CHECKS`` to run (default: all).
        input_size, hidden_size: D and H of the cells built (small: the checks are exact).
        seed: seeds the cells' parameters and every input.
        dtype: ``torch.float32`` or ``torch.float64``, what the runs compared at a tolerance
            (streaming, lengths, gradients) compute in; the structure, gradcheck and engine
            agreement checks always run in fp64.

    Returns a ``CellReport``; raises AssertionError ``"<cell>: <property>: <what>"`` at the first
    property that does not hold.
    """
    label, make = resolve(factory)
    names = list(CHECKS if checks is None else checks)
    _check_arguments(names, engines, input_size, hidden_size, seed, dtype)
    others, refused = _engines(label, make, engines, input_size, hidden_size, seed)
    report = CellReport(label, ["sequential", *others], refused=refused)
    sizes = dict(input_size=input_size, hidden_size=hidden_size, seed=seed, dtype=dtype)
    for fn in _FUNCTIONS:
        if fn.property not in names:
            continue
        runs = [{}]
        if fn.property == "padding":
            runs = [{"engine": e} for e in report.engines]
        elif fn.property == "engines_agree":
            runs = [{"engine": e} for e in others]
        for options in runs:
            name = fn.property + (f"[{options['engine']}]" if options else "")
            try:
                fn(factory, **sizes, **options)
            except NotApplicable as why:
                report.skipped[name] = str(why).removeprefix(f"{label}: {fn.property}: ")
                continue
            report.passed.append(name)
    return report


def _check_arguments(names, engines, input_size, hidden_size, seed, dtype) -> None:
    for name in names:
        check_choice("check_cell", "checks", name, CHECKS)
    if engines is not None and (isinstance(engines, str)
                                or not all(isinstance(e, str) for e in engines)):
        raise TypeError(f"check_cell: engines must be a list of engine names, got {engines!r}")
    for engine in engines or ():
        check_choice("check_cell", "engines", engine, available_engines())
    check_int("check_cell", "input_size", input_size, 1)
    check_int("check_cell", "hidden_size", hidden_size, 1)
    check_int("check_cell", "seed", seed, 0)
    check_dtype("check_cell", dtype)


def _engines(label, make, engines, input_size, hidden_size, seed):
    """``(engines but the sequential one that run the cell, {engine: why not} for the others
    asked for)``, in the order scan, Newton, quasi-Newton, then by name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            cell = cast(make(input_size, hidden_size), torch.float64)
        except Exception as err:  # as the checks do: a cell that fails is an AssertionError
            raise AssertionError(f"{label}: build: raised {type(err).__name__}: {err}") from err
    asked = runnable(cell)[0] if engines is None else engines
    others, refused = runnable(cell, [e for e in asked if e != "sequential"])
    others.sort(key=lambda e: (_ORDER.index(e) if e in _ORDER else len(_ORDER), e))
    return others, refused
