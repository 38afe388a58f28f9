"""Checks per engine: every engine that runs a cell agrees with the sequential one (outputs,
final state, every gradient), and padding past ``lengths`` has no influence on any of them."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import engines as _engines
from ..cells.base import Cell, as_tuple, map_state
from .harness import NotApplicable, Setup, check_property
from .tolerance import rel_err, sq_norm

# fp64 agreement with the sequential engine: the scan is exact up to rounding; Newton stops at
# a relative residual of 1e-10 in fp64.
AGREE_TOL = {"scan": 1e-9, "newton": 1e-7, "quasi": 1e-7}
PAD_FILLS = (float("nan"), float("inf"), -float("inf"), 1e30)


def runnable(cell: Cell, engines: Optional[Sequence[str]] = None
             ) -> Tuple[List[str], Dict[str, str]]:
    """``(engines that run the cell, {engine: why not} for those that refuse it)``, from
    ``engines`` (default: every engine in ``rnnlab.engines.available()``)."""
    ran, refused = [], {}
    for engine in _engines.available() if engines is None else engines:
        try:
            _engines.resolve(engine, cell)
        except ValueError as err:  # the cell's structure does not allow this engine
            refused[engine] = str(err)
            continue
        ran.append(engine)
    return ran, refused


def _engine(s: Setup, engine: str) -> None:
    """``engine`` must run the check's cell: else NotApplicable (the harness checked the name)."""
    ran, refused = runnable(s.cell(dtype=torch.float64), [engine])
    if not ran:
        raise NotApplicable(refused[engine])


def _run(layer, x, h0, lengths, weights) -> Dict[str, torch.Tensor]:
    """Outputs, final state and the gradients of ``sum(weights * y) + |h_T|^2`` to x, h0 (when
    given) and every parameter, by name."""
    x = x.clone().requires_grad_()
    h0 = None if h0 is None else map_state(lambda t: t.detach().clone().requires_grad_(), h0)
    y, h = layer(x, h0, lengths=lengths)
    inputs = {"grad x": x}
    inputs.update({f"grad h0[{i}]": t for i, t in enumerate(() if h0 is None else as_tuple(h0))})
    inputs.update({f"grad {n}": p for n, p in layer.cell.named_parameters()})
    loss = (y * weights.to(y.dtype)).sum() + sq_norm(h)
    grads = torch.autograd.grad(loss, list(inputs.values()), allow_unused=True)
    out = {"y": y, "h_T": h}
    out.update({k: torch.zeros_like(t) if g is None else g
                for (k, t), g in zip(inputs.items(), grads)})
    return out


# (B, T, lengths, initial state given): odd sizes, an empty and a full sequence, and a run
# long enough to cross the scan's and Newton's chunks.
AGREE_CASES = ((3, 7, (7, 0, 4), True), (2, 70, None, False))


@check_property("engines_agree")
def check_engines_agree(s: Setup, engine: str = "scan") -> None:
    """On ``engine``, in fp64: the outputs, the final state and the gradients (to the input, the
    initial state and every parameter) equal the sequential engine's."""
    _engine(s, engine)
    tol = AGREE_TOL.get(engine, 1e-7)
    for i, (B, T, lengths, given) in enumerate(AGREE_CASES):
        ref = s.layer("sequential", dtype=torch.float64)
        got = s.layer(engine, dtype=torch.float64)
        x = s.input(B, T, s.input_size, dtype=torch.float64, seed=10 + i)
        h0 = s.state(ref.cell, B, seed=20 + i, dtype=torch.float64) if given else None
        w = s.input(B, T, ref.output_size, dtype=torch.float64, seed=30 + i)
        lengths = None if lengths is None else torch.tensor(lengths)
        want, have = _run(ref, x, h0, lengths, w), _run(got, x, h0, lengths, w)
        for what in want:
            err = rel_err(have[what], want[what])
            if err > tol:
                raise AssertionError(f"on {engine!r}, {what} differs from the sequential engine's "
                                     f"by {err:.2e} > {tol:.0e} (fp64, B={B}, T={T}, "
                                     f"lengths={lengths})")


@check_property("padding")
def check_padding(s: Setup, engine: str = "sequential") -> None:
    """On ``engine``: whatever the steps past each sequence's length hold (NaN, inf, 1e30), the
    outputs, the final state and every gradient equal those of zero padding exactly, and the
    padded inputs get a gradient of exactly 0; padded outputs are 0, an empty sequence's
    final state is its initial state."""
    _engine(s, engine)
    layer = s.layer(engine)
    lengths = torch.tensor([6, 3, 0])
    clean = s.input(3, 6, s.input_size)
    clean[1, 3:], clean[2] = 0.0, 0.0
    h0 = s.state(layer.cell, 3)
    w = torch.ones(3, 6, layer.output_size)  # the loss y.sum() + h.sum() (+ |h|^2)
    ref = _run(layer, clean, h0, lengths, w)
    y0 = ref["y"]
    if not ((y0[1, 3:] == 0).all() and (y0[2] == 0).all()):
        raise AssertionError(f"on {engine!r}: padded outputs")
    if not all(torch.equal(a[2], b[2]) for a, b in zip(as_tuple(ref["h_T"]), as_tuple(h0))):
        raise AssertionError(f"on {engine!r}: an empty sequence's final state is not its "
                             f"initial state")
    for fill in PAD_FILLS:
        x = clean.clone()
        x[1, 3:], x[2] = fill, fill
        got = _run(layer, x, h0, lengths, w)
        gx = got["grad x"]
        if not ((gx[1, 3:] == 0).all() and (gx[2] == 0).all()):
            raise AssertionError(f"on {engine!r} with {fill} padding: the padded inputs get a "
                                 f"gradient")
        for what, want in ref.items():
            if not all(torch.isfinite(t).all() for t in as_tuple(got[what])):
                raise AssertionError(f"on {engine!r} with {fill} padding: {what} is not finite")
            same = all(torch.equal(a, b) for a, b in zip(as_tuple(got[what]), as_tuple(want)))
            if not same:
                raise AssertionError(f"on {engine!r} with {fill} padding: {what} changed")
