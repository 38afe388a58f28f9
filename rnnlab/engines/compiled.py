"""The Newton engine's hot functions (``linearize.terms``, ``first_guess``, ``step_vjp``), run
eagerly or through ``torch.compile``, with a fall-back to eager when the compiler fails."""
from __future__ import annotations

import warnings

import torch

from .linearize import first_guess, step_vjp, terms


def inductor_options() -> dict:
    """Inductor's tanh from exp (``2 / (1 + exp(-2x)) - 1``) where it offers the switch: on
    CPU about 3x faster than its default (Sleef) tanh, which is a third of a ParaGRU
    linearization. Its error is absolute, ~2e-7 in fp32 (relative near 0, which is why torch
    turned it off by default), far below Newton's tolerance and what the solve converges to."""
    try:
        from torch._inductor import config
    except Exception:  # noqa: BLE001 - a build without Inductor: torch.compile's own error later
        return {}
    return {"cpp.use_decompose_tanh": True} if hasattr(config.cpp, "use_decompose_tanh") else {}


class HotFunctions:
    """The three hot functions, eager or compiled. A compiled call that fails (no working
    compiler, an unsupported op) warns once and the engine continues eagerly."""

    def __init__(self):
        self._compiled = None
        self.broken = False

    EAGER = (terms, first_guess, step_vjp)

    def get(self, use_compile: bool):
        if not use_compile or self.broken:
            return self.EAGER
        if self._compiled is None:
            self._compiled = tuple(torch.compile(fn, dynamic=None, options=inductor_options())
                                   for fn in self.EAGER)
        return tuple(self._guarded(c, e) for c, e in zip(self._compiled, self.EAGER))

    def _guarded(self, compiled, eager):
        def call(*args):
            if self.broken:
                return eager(*args)
            try:
                return compiled(*args)
            except Exception as err:  # noqa: BLE001 - any compiler failure: continue eagerly
                self.broken = True
                warnings.warn(f"Newton(compile=...): torch.compile failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); running eagerly",
                              RuntimeWarning, stacklevel=2)
                return eager(*args)
        return call
