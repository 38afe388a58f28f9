"""Newton(compile=True): a failed compile is one rnnlab warning naming the cell, with nothing
from torch on stderr and the eager numbers; lengths that vary from call to call compile a
bounded number of times. Real compiles here use the ``aot_eager`` backend (dynamo's tracing and
shape guards, where both failures and recompiles arise, without Inductor's C++ build) at small
sizes; tests/test_engines_newton.py runs Inductor itself."""
from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import rnnlab
from rnnlab import cells
from rnnlab.engines import Newton, newton
from rnnlab.engines.compiled import quiet_torch
from rnnlab.engines.linearize import layout

from .helpers import assert_close


def failing_compiler(calls):
    """A stand-in for torch.compile whose functions log what a failed dynamo trace logs
    (an error from fake tensors with a C++ frame, a dynamo warning) and then raise."""
    def compile_(fn, **kwargs):
        def call(*args):
            calls.append(fn.__name__)
            logging.getLogger("torch._subclasses.fake_tensor").error(
                "failed while attempting to run meta\nframe #0: c10::Error::Error")
            logging.getLogger("torch._dynamo").warning("dynamo gave up")
            logging.getLogger("userlib").warning("the user's own logger still speaks")
            raise RuntimeError("Cannot call storage_offset() on tensor with symbolic sizes")
        return call
    return compile_


def test_a_failed_compile_is_one_warning_naming_the_cell_and_torch_stays_quiet(
        monkeypatch, capfd):
    calls = []
    monkeypatch.setattr(torch, "compile", failing_compiler(calls))
    torch_logger, user_logger = logging.getLogger("torch._dynamo"), logging.getLogger("userlib")
    before = torch_logger.level
    torch_logger.setLevel(logging.INFO)  # the user's settings
    user_logger.addHandler(handler := logging.StreamHandler())
    torch.manual_seed(0)
    cell = cells.get("slstm", 3, 8)
    engine = Newton(compile=True)
    x = [torch.randn(2, T, 3) for T in (6, 11)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ys = [rnnlab.Recurrent(cell, engine=engine)(xi)[0] for xi in x]
        assert torch_logger.level == logging.INFO  # put back after the calls
    finally:
        user_logger.removeHandler(handler)
        torch_logger.setLevel(before)
    mine = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(mine) == 1, [str(w.message) for w in mine]
    assert "Newton on SLSTM: torch.compile failed (RuntimeError: Cannot call storage_offset()" \
        in str(mine[0].message)
    assert calls == ["first_guess"]  # detected once; never tried again
    err = capfd.readouterr().err
    assert "c10::Error" not in err and "dynamo gave up" not in err, err
    assert "the user's own logger still speaks" in err  # silenced: torch's loggers only
    assert not engine.stats["compiled"]
    eager = Newton(compile=False)
    for xi, y in zip(x, ys):
        assert_close(y, rnnlab.Recurrent(cell, engine=eager)(xi)[0], what="eager fallback")


def test_quiet_torch_restores_levels_after_an_error():
    log = logging.getLogger("torch._inductor")
    before = log.level
    with pytest.raises(KeyError), quiet_torch():
        assert not log.isEnabledFor(logging.CRITICAL)
        raise KeyError("x")
    assert log.level == before and logging.getLogger("torch").isEnabledFor(logging.CRITICAL)


def test_varying_lengths_compile_a_bounded_number_of_times(monkeypatch, recwarn):
    """A Dense cell (its Jacobian by one vmapped JVP) through dynamo: the second length used
    to fail (symbolic sizes met forward AD's tangent copy), and every length was a new chunk
    shape. Now chunks are powers of two, so once the lengths 1..16 have all been met, new
    sequence lengths compile nothing."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kw: real(fn, dynamic=kw["dynamic"], backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()  # graphs compiled by earlier tests in this process do not count
    torch.manual_seed(0)
    cell = cells.get("gru", 3, 4)
    lay = layout(cell, cell.init_state(2))
    monkeypatch.setattr(newton, "CHUNK_BYTES", 16 * 2 * lay.width * lay.size * 4)  # 16 steps
    engine, eager = Newton(compile=True), Newton(compile=False)

    def graphs_after(lengths):
        for T in lengths:
            x = torch.randn(2, T, 3, requires_grad=True)
            y, _ = engine(cell, x)
            assert engine.stats["compiled"], T
            (g,) = torch.autograd.grad(y.square().sum(), x)
            y_ref, _ = eager(cell, x)
            (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
            assert_close(y, y_ref, what=f"outputs, T={T}")
            assert_close(g, g_ref, what=f"input gradients, T={T}")
        return counters["stats"]["unique_graphs"]

    warm = graphs_after([3, 5, 8, 31, 16])  # chunks of 16, 8, 4, 2 and 1 steps
    assert warm <= 3 * 5  # each hot function at most once per chunk length
    assert graphs_after([21, 45, 13, 62]) == warm
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
