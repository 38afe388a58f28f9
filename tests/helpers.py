"""Shared test helpers. The relative error and the one tolerance table per dtype (``TOL``,
``rel_err``, ``assert_close``, ``widen``, ``sq_norm``) are ``rnnlab.testing``'s, which holds the
generic cell checks; re-exported here for the tests that import them from this module."""
from __future__ import annotations

import importlib
import importlib.util
import pathlib

import pytest
import torch

import rnnlab
from rnnlab.cells import as_tuple, map_state
from rnnlab.testing.tolerance import TOL, assert_close, rel_err, sq_norm, widen  # noqa: F401


# Python code that gives a child Python the Ctrl-C handler a terminal's job has: a shell that
# starts a job in the background (`cmd &`, nohup) makes it ignore SIGINT, and Python then
# installs no KeyboardInterrupt handler. Tests that interrupt a child with SIGINT run this first.
CTRL_C = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"


def fla_naive(module: str):
    """fla's pure-torch naive module (e.g. ``"delta_rule.naive"``), the independent test oracle;
    skips when fla is not installed. ``fla.ops`` imports triton at package level, so without
    triton the naive file is loaded alone (it needs only torch and einops)."""
    pytest.importorskip("einops")
    fla = pytest.importorskip("fla")
    try:
        return importlib.import_module(f"fla.ops.{module}")
    except ImportError:
        path = pathlib.Path(fla.__file__).parent / "ops" / (module.replace(".", "/") + ".py")
        if not path.is_file():
            pytest.skip(f"fla has no ops/{module}")
        spec = importlib.util.spec_from_file_location(f"_fla_oracle_{module}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def run(cell, engine, x, h0, lengths):
    """Outputs, final state and the gradients of a random loss to x, h0 and every parameter."""
    x = x.clone().requires_grad_()
    h0 = map_state(lambda t: t.clone().requires_grad_(), h0)
    y, h = rnnlab.Recurrent(cell, engine=engine)(x, h0, lengths=lengths)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g)).sum() + sq_norm(h)
    params = list(cell.parameters())
    grads = torch.autograd.grad(loss, [x, *as_tuple(h0), *params])
    return y, h, grads


def assert_agrees(cell, engine, x, h0, lengths, what):
    """The engine's outputs, final state and every gradient equal the sequential engine's."""
    y_s, h_s, g_s = run(cell, "sequential", x, h0, lengths)
    y_n, h_n, g_n = run(cell, engine, x, h0, lengths)
    assert_close(y_n, y_s, what=f"{what} outputs")
    assert_close(h_n, h_s, what=f"{what} final state")
    for i, (a, b) in enumerate(zip(g_n, g_s)):
        assert_close(a, b, what=f"{what} gradient #{i}")


def cell_engine_pairs(input_size: int = 3, hidden_size: int = 4):
    """Every ``(cell name, engine name)`` whose structure the engine can run."""
    pairs = []
    for name in rnnlab.cells.available():
        cell = rnnlab.cells.get(name, input_size, hidden_size, device="meta")
        for engine in rnnlab.engines.available():
            try:
                rnnlab.engines.resolve(engine, cell)
            except ValueError:  # the cell's structure does not allow this engine
                continue
            pairs.append((name, engine))
    return pairs


def fill_disk(monkeypatch, where: str = "") -> None:
    """Simulate a full disk: ``os.fsync`` of a file whose path contains ``where`` raises ENOSPC
    (undo with ``monkeypatch.undo()``)."""
    import errno
    import os
    real_fsync = os.fsync

    def full(fd):
        if where in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", full)


def command_group(register):
    """A fresh typer group with one module's commands added by ``register(app)``: a group, as
    rnnlab's ``train``, so each command keeps its name (``["lrcn", "--help"]``)."""
    import typer
    app = typer.Typer()

    @app.callback()
    def main():
        pass

    register(app)
    return app
