"""Engines keep nothing of a call: a call's statistics belong to that call (the ``stats`` dict
it is given, ``Recurrent.stats`` per layer), the warm start is an argument, and the iteration
method is an object (``NewtonSteps``, ``ELK``) with ``damping=`` as its shorthand."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.engines import Newton, Scan, Sequential
from rnnlab.engines.compiled import HotFunctions
from rnnlab.engines.elk import ELK
from rnnlab.engines.iterate import NewtonSteps
from rnnlab.models import SequenceModel

D, H = 4, 6


def test_one_engine_shared_by_every_layer_reports_each_layers_own_solve():
    torch.manual_seed(0)
    engine = Newton(quasi=True)
    model = SequenceModel(5, 3, d_model=8, n_layers=3, mixer="gru", engine=engine)
    x = torch.randint(0, 5, (2, 30))
    model(x).sum().backward()
    layers = [block.mixer.rnn for block in model.blocks]
    assert all(layer.engine is engine for layer in layers)
    histories = [layer.stats["history"] for layer in layers]
    assert all(layer.stats["engine"] == "quasi" and layer.stats["converged"] for layer in layers)
    assert len({tuple(h) for h in histories}) == 3  # three different solves, each kept
    assert engine.stats is layers[-1].stats  # the engine's own view: the last call only
    # the backward of each layer wrote its adjoint's iterations into that layer's stats
    assert all(layer.stats["adjoint_iterations"] >= 1 for layer in layers)


def test_a_calls_stats_dict_is_filled_and_only_by_that_call():
    torch.manual_seed(0)
    cell = cells.get("paragru", D, H)
    x = torch.randn(2, 20, D)
    first, second = {"stale": 1}, {}
    Newton()(cell, x, stats=first)
    with pytest.warns(RuntimeWarning, match="recomputing with the sequential engine"):
        Newton(max_iters=1, on_fail="sequential")(cell, x[:, :3], stats=second)
    assert "stale" not in first and first["engine"] == "newton" and first["converged"]
    assert "fallback" not in first and second["fallback"] is True
    for engine, name in ((Sequential(), "sequential"), (Scan(), "scan")):
        stats = {}
        engine(cells.get("mamba", D, H), x, stats=stats)
        assert stats == {"engine": name}


def test_the_warm_start_is_an_argument_of_the_call():
    torch.manual_seed(0)
    cell = cells.get("paragru", D, H)
    x = torch.randn(2, 25, D)
    engine = Newton()
    y, _ = engine(cell, x)
    states = Sequential()(cell, x)[0]  # ParaGRU's output is its state: every step's
    stats = {}
    y_warm, _ = engine(cell, x, guess=states, stats=stats)
    torch.testing.assert_close(y_warm, y, atol=1e-5, rtol=1e-5)
    assert stats["iterations"] == 0  # started at the solution
    engine(cell, x, stats=stats)
    assert stats["iterations"] > 0  # the guess was that call's only
    with pytest.raises(TypeError, match=r"engine 'sequential' takes no per-call options"):
        Sequential()(cell, x, guess=states)


@pytest.mark.parametrize("method, shorthand", [
    (NewtonSteps(), {}), (NewtonSteps(0.7), dict(damping=0.7)),
    (ELK(), dict(damping="elk")), (ELK(sigma2=10.0, quasi=True),
                                   dict(damping="quasi-elk", elk_sigma2=10.0))])
def test_a_method_object_and_its_shorthand_are_one_engine(method, shorthand):
    torch.manual_seed(0)
    cell = cells.get("paragru", D, H)
    x = torch.randn(2, 30, D)
    a, b = Newton(method=method), Newton(**shorthand)
    assert a.method == b.method and a.damping == b.damping and a.elk_sigma2 == b.elk_sigma2
    sa, sb = {}, {}
    torch.testing.assert_close(a(cell, x, stats=sa)[0], b(cell, x, stats=sb)[0])
    assert sa["history"] == sb["history"]
    assert repr(method) in repr(a)


def test_bad_methods_are_refused():
    with pytest.raises(ValueError, match=r"give method= or its shorthand damping="):
        Newton(method=ELK(), damping=0.5)
    with pytest.raises(ValueError, match=r"Newton: method must be NewtonSteps\(...\), ELK"):
        Newton(method="elk")
    with pytest.raises(ValueError, match=r"NewtonSteps: damping must be in \(0, 1\]"):
        NewtonSteps(0)
    with pytest.raises(ValueError, match=r"ELK: sigma2 must be in \(0, inf\)"):
        ELK(sigma2=float("inf"))
    with pytest.raises(ValueError, match=r"ELK: quasi must be a bool"):
        ELK(quasi=1)


def test_the_hot_functions_have_names():
    hot = HotFunctions().get(False, None)
    assert [f.__name__ for f in hot] == list(hot._fields)
    assert hot.terms.__name__ == "terms" and hot.state_vjp.__name__ == "state_vjp"


def test_a_layers_stats_after_streaming_steps():
    torch.manual_seed(0)
    layer = rnnlab.Recurrent("paragru", engine="newton", input_size=D, hidden_size=H)
    state = layer.initial_state(2)
    _, state = layer.step(torch.randn(2, 7, D), state)
    assert layer.stats["engine"] == "newton" and layer.stats["converged"]
