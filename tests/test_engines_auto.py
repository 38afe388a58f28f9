"""``engine="auto"``: per call, Newton where the cell's ``newton_wins`` says it measured faster,
else the sequential engine; a Newton failure falls back to sequential and sticks; the results
are the sequential engine's either way."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells, engines
from rnnlab.cells import NewtonWins
from rnnlab.engines import Auto, Newton, Scan, Sequential
from rnnlab.engines.auto import prefers_newton

from .helpers import assert_agrees

D, H = 4, 8
CPU = torch.device("cpu")


@pytest.mark.parametrize("name,kind", [("paragru", Auto), ("paralstm", Auto), ("gru", Auto),
                                       ("lstm", Auto), ("slstm", Sequential),
                                       ("indrnn", Sequential), ("rnn_tanh", Sequential),
                                       ("mamba", Scan)])
def test_auto_resolves_by_what_the_cell_declares(name, kind):
    layer = rnnlab.Recurrent(name, input_size=D, hidden_size=H)
    assert type(layer.engine) is kind
    assert layer.engine_name == kind.name


def test_the_rule():
    wins = NewtonWins(min_steps=100, train=64, infer=16)
    assert prefers_newton(wins, 8, 100, 8, CPU, training=True)
    assert not prefers_newton(wins, 8, 99, 8, CPU, training=True)  # too short
    assert not prefers_newton(wins, 9, 100, 8, CPU, training=True)  # too wide
    assert not prefers_newton(wins, 8, 100, 8, CPU, training=False)  # inference: 16
    assert prefers_newton(wins, 2, 100, 8, CPU, training=False)
    assert not prefers_newton(wins, 1, 100, 8, torch.device("meta"), training=True)  # not CPU
    assert not prefers_newton(None, 1, 10 ** 6, 1, CPU, training=True)
    assert not prefers_newton(NewtonWins(1, 64, infer=0), 1, 10, 1, CPU, training=False)


@pytest.mark.parametrize("name", ["paragru", "paralstm", "gru"])
def test_each_call_picks_by_its_sizes_and_agrees_with_sequential(name):
    torch.manual_seed(0)
    cell = cells.get(name, D, H)
    steps = cell.newton_wins.min_steps
    layer = rnnlab.Recurrent(cell)
    x = torch.randn(1, steps, D, requires_grad=True)
    layer(x)
    assert layer.engine.last == layer.engine.newton.name and layer.engine.stats["converged"]
    layer(x[:, :steps - 1])
    assert layer.engine.last == "sequential" and layer.engine.stats == {"engine": "sequential"}
    assert layer.stats is layer.engine.stats
    with torch.no_grad():
        layer(x.expand(cell.newton_wins.infer // H + 1, -1, -1))  # inference, too wide
    assert layer.engine.last == "sequential"
    T = steps + 3
    assert_agrees(cell, "auto", torch.randn(2, T, D), cell.init_state(2), torch.tensor([T, 7]),
                  name)


def test_a_failed_solve_falls_back_and_the_cell_stays_sequential(monkeypatch):
    torch.manual_seed(0)
    cell = cells.get("paragru", D, H)
    layer = rnnlab.Recurrent(cell)
    layer.engine.newton.max_iters = 1  # cannot converge from the first guess
    x = torch.randn(1, cell.newton_wins.min_steps, D)
    with pytest.warns(RuntimeWarning, match="recomputing with the sequential engine"):
        y, h = layer(x)
    ref, h_ref = rnnlab.Recurrent(cell, engine="sequential")(x)
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(h, h_ref)
    assert layer.engine.newton.fallbacks == 1
    calls = []
    monkeypatch.setattr(layer.engine.newton, "run_call", lambda *a: calls.append(1))
    layer(x)
    assert layer.engine.last == "sequential" and not calls


def test_a_declared_rule_on_an_out_of_tree_cell():
    """A cell outside the package opts in by declaring ``newton_wins``."""
    class Leaky(cells.get("paragru", 1, 1).__class__):
        newton_wins = NewtonWins(min_steps=5, train=10 ** 6)

    torch.manual_seed(0)
    cell = Leaky(D, H)
    layer = rnnlab.Recurrent(cell)
    assert isinstance(layer.engine, Auto)
    assert_agrees(cell, layer.engine, torch.randn(3, 9, D), cell.init_state(3), None, "Leaky")
    assert layer.engine.last == "newton"


def test_a_cell_newton_cannot_run_never_gets_auto_newton():
    cell = cells.get("mamba", D, H)
    assert not isinstance(engines.auto(cell), Auto)
    assert isinstance(Auto(cells.get("paragru", D, H)).newton, Newton)
