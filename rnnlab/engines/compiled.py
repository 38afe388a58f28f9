"""The Newton engine's hot functions (``linearize.terms``, ``first_guess``, ``step_vjp``,
``state_vjp``), run eagerly or through ``torch.compile``, with a fall-back to eager when the
compiler fails.

A failed compile is rnnlab's to report: torch would log dozens of lines (fake tensors, dynamo,
a C++ stack trace) before raising, so every call that may compile (one with arguments not yet
seen) runs with torch's loggers and warnings silenced, and the failure becomes one warning that
names the cell. Shapes: ``dynamic=None`` compiles the first shapes statically and, at the first
call whose shapes differ, once more with those sizes symbolic, so lengths and batch sizes that
vary from call to call cost one more compile, not one each. (Under forward AD torch pins the
rows' count, so a cell linearized by JVPs compiles once per chunk length; Newton's chunks are
powers of two, ``newton._power_chunks``, which bounds those to a handful.)"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Callable, NamedTuple

import torch

from .linearize import first_guess, state_vjp, step_vjp, terms

QUIET = logging.CRITICAL + 1  # above every level torch logs at


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


@contextlib.contextmanager
def quiet_torch():
    """Silence torch's logging and warnings for the duration. Only the loggers whose level
    decides what torch prints are raised (``torch`` and each ``torch.*`` logger with a level of
    its own; the others inherit), and every level is put back after, so the user's settings
    (``TORCH_LOGS``, ``torch._logging.set_logs``, their own handlers) hold outside the call."""
    loggers = [logging.getLogger("torch")] + [
        lg for name, lg in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("torch.") and isinstance(lg, logging.Logger)
        and lg.level != logging.NOTSET]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(QUIET)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torch(\.|$)")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def signature(args) -> tuple:
    """What decides whether a compiled call may compile again: the tensors' shapes, dtypes,
    devices and grad flags (a view's base's shape too, and whether it starts at the base's
    start: dynamo guards on both), the modules' types (not the instances: the backward's
    ``Step`` is new at every call), the other arguments (their types where unhashable), and the
    grad mode."""
    def key(a):
        if isinstance(a, torch.Tensor):
            base = None if a._base is None else (tuple(a._base.shape), a.storage_offset() == 0)
            return tuple(a.shape), a.dtype, a.device, a.requires_grad, base
        if isinstance(a, (tuple, list)):
            return tuple(key(b) for b in a)
        if isinstance(a, torch.nn.Module):
            return type(a)
        try:
            hash(a)
        except TypeError:
            return type(a)
        return a
    return torch.is_grad_enabled(), tuple(key(a) for a in args)


def root_cause(err: BaseException) -> str:
    """The first line of the innermost cause (dynamo wraps the error that stopped it)."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class Hot(NamedTuple):
    """The four hot functions, by name (each eager or compiled)."""
    terms: Callable  # one chunk's f, Jacobian columns and residual norms (every pass)
    first_guess: Callable  # the initial guess f(0, u_t)
    step_vjp: Callable  # the backward's pull-back of lambda to u and the parameters
    state_vjp: Callable  # the quasi adjoint's J^T lambda


class HotFunctions:
    """The hot functions, eager or compiled. A compiled call that fails (no working
    compiler, an unsupported op) warns once, naming the cell, and the engine continues
    eagerly."""

    def __init__(self):
        self._compiled = None
        self._seen: set = set()  # signatures already run compiled: no compile left to hide
        self.broken = False

    EAGER = Hot(terms, first_guess, step_vjp, state_vjp)

    def get(self, use_compile: bool, cell) -> Hot:
        if not use_compile or self.broken:
            return self.EAGER
        if self._compiled is None:
            self._compiled = Hot(*(torch.compile(fn, dynamic=None, options=inductor_options())
                                   for fn in self.EAGER))
        return Hot(*(self._guarded(c, e, cell) for c, e in zip(self._compiled, self.EAGER)))

    def _guarded(self, compiled, eager, cell):
        def call(*args):
            if self.broken:
                return eager(*args)
            key = (eager.__name__, id(cell), signature(args))
            try:
                if key in self._seen:
                    return compiled(*args)
                with quiet_torch():
                    out = compiled(*args)
                self._seen.add(key)
                return out
            except Exception as err:  # noqa: BLE001 - any compiler failure: continue eagerly
                self.broken = True
                warnings.warn(f"Newton on {type(cell).__name__}: torch.compile failed "
                              f"({root_cause(err)}); running eagerly", RuntimeWarning,
                              stacklevel=2)
                return eager(*args)
        return call
