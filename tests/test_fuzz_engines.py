"""Fuzz: every registered cell on every engine that runs it, against the sequential engine, on
random sizes (B, T, D, H), random lengths (0 and T included, or none) with random, NaN, inf or
1e30 padding, and random or zero initial states: outputs, final states, and the gradients of the
inputs, the initial state and every parameter. Seeded per cell x engine pair, so every run
draws the same ``CASES`` cases.

Two precisions, so that a tolerance says something about the engine and not about rounding:

- fp64 (about two cases in three): both engines in fp64, within ``TOL64`` of each other.
- fp32: the engine's fp32 run against the sequential engine's fp64 run, allowed ``TOL32`` plus
  ``RATIO`` times the error of the sequential engine's own fp32 run. A gradient that is a small
  difference of large terms (Mamba-2's ``A_log``) is as inexact on the reference engine, so it
  is judged against that, not against an absolute tolerance it cannot meet in fp32.

Newton is iterative: it stops at a relative residual of 1e-5 (fp32) or 1e-10 (fp64), so its
tolerances are wider than the scan's, which is exact up to rounding.

Also for every engine: an fp64 initial state with fp32 inputs keeps the run in fp64.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import as_tuple, map_state

from .helpers import cell_engine_pairs, rel_err, sq_norm, widen

CASES = 40  # per cell x engine pair: ~25 s for all pairs on one core
TOL64 = {"scan": 1e-9, "newton": 1e-7, "quasi": 1e-7, "fused": 1e-12}
TOL32 = {"scan": 1e-4, "newton": 1e-4, "quasi": 1e-4, "fused": 1e-5}
RATIO = 10.0


EVERY = cell_engine_pairs(3, 4)
PAIRS = [(name, engine) for name, engine in EVERY if engine != "sequential"]


def _draw(g: torch.Generator) -> dict:
    """One random case: sizes, lengths (None, or each row 0, T or in between), whether an
    initial state is given, the precision and a seed for the cell, inputs and loss."""
    def integer(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    B = integer(1, 4)
    T = integer(1, 40) if integer(0, 3) else integer(41, 140)  # long ones cross a chunk
    lengths = None
    if integer(0, 3):
        pick = torch.randint(0, 4, (B,), generator=g)
        middle = torch.randint(0, T + 1, (B,), generator=g)
        lengths = torch.where(pick == 0, 0, torch.where(pick == 1, T, middle))
    fill = None if lengths is None else [None, float("nan"), float("inf"), 1e30][integer(0, 3)]
    return dict(B=B, T=T, D=integer(1, 8), H=integer(1, 10), lengths=lengths, fill=fill,
                h0=integer(0, 2) > 0, fp64=integer(0, 2) > 0, seed=integer(0, 2 ** 31 - 1))


def _run(cell, engine, x, h0, lengths, weights):
    """Outputs, final-state leaves and the gradients of ``sum(weights * y) + |h_T|^2`` to x,
    the initial state's leaves (when given) and every parameter, as one flat list."""
    x = x.clone().requires_grad_()
    h0 = None if h0 is None else map_state(lambda t: t.clone().requires_grad_(), h0)
    y, h = rnnlab.Recurrent(cell, engine=engine)(x, h0, lengths=lengths)
    inputs = [x, *([] if h0 is None else as_tuple(h0)), *cell.parameters()]
    loss = (y * weights.to(y.dtype)).sum() + sq_norm(h)
    grads = [None] * len(inputs)
    if loss.requires_grad:  # not when every length is 0 and no state is given
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [y, *as_tuple(h), *[torch.zeros_like(t) if d is None else d
                               for t, d in zip(inputs, grads)]]


def _names(cell, h0: bool):
    """What each entry of ``_run``'s list is, for failure messages."""
    leaves = range(len(as_tuple(cell.init_state(1))))
    return ["y", *[f"h_T[{i}]" for i in leaves], "grad x",
            *[f"grad h0[{i}]" for i in (leaves if h0 else [])],
            *[f"grad {n}" for n, _ in cell.named_parameters()]]


def _case_inputs(name: str, case: dict, dtype: torch.dtype):
    """The case's cell, inputs, initial state and loss weights, in ``dtype``."""
    torch.manual_seed(case["seed"])
    cell = cells.get(name, case["D"], case["H"])
    x = torch.randn(case["B"], case["T"], case["D"])
    if case["fill"] is not None:  # padding must have no influence, whatever it holds
        padded = torch.arange(case["T"]) >= case["lengths"][:, None]  # (B, T)
        x[padded] = case["fill"]
    h0 = None
    if case["h0"]:
        h0 = map_state(lambda z: 0.5 * torch.randn(z.shape, dtype=z.dtype),
                       cell.init_state(case["B"]))
    weights = torch.randn(case["B"], case["T"], cell.output_size)
    if dtype == torch.float64:
        cell, x = cell.double(), x.double()
        h0 = None if h0 is None else map_state(widen, h0)
    return cell, x, h0, weights


def _check_fp64(name: str, engine: str, case: dict, where: str) -> None:
    cell, x, h0, w = _case_inputs(name, case, torch.float64)
    ref = _run(cell, "sequential", x, h0, case["lengths"], w)
    got = _run(cell, engine, x, h0, case["lengths"], w)
    for what, a, b in zip(_names(cell, h0 is not None), got, ref):
        err = rel_err(a, b)
        assert err <= TOL64[engine], \
            f"{where}: {what} relative error {err:.2e} > {TOL64[engine]:.0e} (fp64)"


def _check_fp32(name: str, engine: str, case: dict, where: str) -> None:
    cell, x, h0, w = _case_inputs(name, case, torch.float32)
    ref_cell, ref_x, ref_h0, _ = _case_inputs(name, case, torch.float64)
    ref = _run(ref_cell, "sequential", ref_x, ref_h0, case["lengths"], w)
    seq = _run(cell, "sequential", x, h0, case["lengths"], w)
    got = _run(cell, engine, x, h0, case["lengths"], w)
    for what, a, s, b in zip(_names(cell, h0 is not None), got, seq, ref):
        err, rounding = rel_err(a, b), rel_err(s, b)
        allowed = TOL32[engine] + RATIO * rounding
        assert err <= allowed, (f"{where}: {what} relative error {err:.2e} against fp64 > "
                                f"{allowed:.1e} (the sequential engine's fp32 error is "
                                f"{rounding:.1e})")


@pytest.mark.parametrize("name,engine", PAIRS, ids=[f"{n}-{e}" for n, e in PAIRS])
def test_engine_equals_sequential_on_random_cases(name, engine):
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{engine}".encode()))
    for i in range(CASES):
        case = _draw(g)
        check = _check_fp64 if case["fp64"] else _check_fp32
        check(name, engine, case, f"{name} on {engine}, case {i}: {case}")


@pytest.mark.parametrize("name,engine", EVERY, ids=[f"{n}-{e}" for n, e in EVERY])
def test_fp64_initial_state_keeps_the_run_in_fp64(name, engine):
    """Issue 12: an fp64 initial state with fp32 inputs was rounded to fp32. The state's
    precision now counts in the compute dtype, as the parameters' does: the state comes back
    in fp64, equal to the run on fp64 inputs; the outputs stay in the inputs' dtype."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(cells.get(name, 3, 4), engine=engine)
    h0 = map_state(lambda z: widen(torch.randn(z.shape, dtype=z.dtype)) / 3,
                   layer.initial_state(2))
    x, lengths = torch.randn(2, 6, 3), torch.tensor([6, 4])
    y, h = layer(x, h0, lengths=lengths)
    y64, h64 = layer(x.double(), h0, lengths=lengths)
    assert y.dtype == torch.float32
    assert all(torch.equal(a, b) and a.dtype == b.dtype
               for a, b in zip(as_tuple(h), as_tuple(h64))), f"{name} on {engine}"
    assert torch.equal(y, y64.float())
