"""Quasi-Newton (``Newton(quasi=True)``, engine name ``"quasi"``): iterations with only the
same-channel part of each Jacobian reach the sequential engine's outputs, final state and
gradients (the residual and the adjoint's residual are exact); the kept columns come from a
cell's ``quasi_jacobian`` or out of the exact ones; a wrong hook is refused."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import map_state
from rnnlab.cells.base import Cell, Dense
from rnnlab.cells.gru import GRU
from rnnlab.engines import Newton, adjoint
from rnnlab.engines import linearize as L

from .helpers import assert_agrees

D, H, B, T = 5, 6, 3, 37
CASES = [("gru", {}), ("gru", {"reset_after": False}), ("lstm", {}), ("lstm", {"proj_size": 4}),
         ("rnn_tanh", {}), ("rnn_relu", {}), ("slstm", {"heads": 3}), ("m2rnn", {}),
         ("paragru", {}), ("paralstm", {})]


def build(name, options, seed=0):
    torch.manual_seed(seed)
    cell = cells.get(name, D, H, **options)
    if name == "slstm":
        with torch.no_grad():
            cell.weight_hh.normal_(0.0, 0.3)  # R = 0 at init: quasi would be exact
    return cell


def start(cell):
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(B))
    if isinstance(cell, cells.get("slstm", 1, 1).__class__):
        h0[2].abs_().add_(1.0)  # a reachable normaliser (n >= 1)
    return h0


@pytest.mark.parametrize("name,options", CASES)
def test_quasi_equals_sequential(name, options):
    cell = build(name, options)
    x = torch.randn(B, T, D)
    engine = Newton(quasi=True, max_iters=200, tol=1e-6)
    assert_agrees(cell, engine, x, start(cell), torch.tensor([T, T // 2, 0]), name)
    assert engine.stats["converged"]


@pytest.mark.parametrize("name,options", CASES)
def test_quasi_in_float64_is_as_tight(name, options):
    cell = build(name, options).double()
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    ref = rnnlab.Recurrent(cell, engine="sequential")(x)[0]
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    y = rnnlab.Recurrent(cell, engine=Newton(quasi=True, max_iters=200))(x)[0]
    (g,) = torch.autograd.grad(y.square().sum(), x)
    torch.testing.assert_close(y, ref, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name,options,width", [
    ("gru", {}, 1), ("rnn_tanh", {}, 1), ("lstm", {}, 2), ("lstm", {"proj_size": 4}, 1),
    ("slstm", {"heads": 3}, 4), ("m2rnn", {}, 1)])
def test_the_quasi_layout_keeps_the_same_channel_entries(name, options, width):
    cell = build(name, options)
    exact = L.layout(cell, cell.init_state(1))
    lay = L.quasi_layout(exact)
    assert lay.width == width and lay.exact == exact and lay.size == exact.size


@pytest.mark.parametrize("name", ["paragru", "paralstm", "indrnn"])
def test_quasi_is_newton_where_the_structure_is_already_per_channel(name):
    cell = build(name, {})
    exact = L.layout(cell, cell.init_state(1))
    assert L.quasi_layout(exact) is exact
    x = torch.randn(B, T, D)
    runs = [Newton(quasi=q) for q in (False, True)]
    for engine in runs:
        rnnlab.Recurrent(cell, engine=engine)(x)
    assert runs[0].stats["iterations"] == runs[1].stats["iterations"]


@pytest.mark.parametrize("name,options", [c for c in CASES if c[0] not in ("paragru",
                                                                          "paralstm")])
def test_the_hook_equals_the_columns_kept_from_the_exact_jacobian(name, options):
    cell = build(name, options).double()
    state = map_state(lambda z: torch.randn(z.shape, dtype=torch.float64), cell.init_state(4))
    exact = L.layout(cell, state)
    lay = L.quasi_layout(exact)
    u = cell.project(torch.randn(4, 1, D, dtype=torch.float64))[:, 0]  # (4, P)
    h = L.flatten(state, exact)
    with torch.no_grad():
        f, A = L.linearize(cell, u, h, lay)  # through quasi_jacobian
        f_e, A_e = L.linearize(cell, u, h, exact, jvp=True)
    kept = torch.cat(L.kept_columns(A_e.split(L.sizes(exact), -1), lay), -1)
    torch.testing.assert_close(f, f_e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A, kept, rtol=1e-12, atol=1e-12)


class PlainDense(Cell):
    """A dense cell without any Jacobian hook: quasi picks the kept columns out of JVPs."""

    structure = Dense()

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.lin = torch.nn.Linear(input_size, hidden_size)
        self.rec = torch.nn.Linear(hidden_size, hidden_size, bias=False)

    def project(self, x):
        return self.lin(x)

    def step(self, u_t, h):
        return torch.tanh(u_t + self.rec(h)) * 0.5 + 0.5 * torch.sigmoid(h)


def test_quasi_without_a_hook():
    torch.manual_seed(1)
    cell = PlainDense(D, H)
    x = torch.randn(B, T, D)
    assert_agrees(cell, Newton(quasi=True, max_iters=200, tol=1e-6), x, torch.randn(B, H),
                  torch.tensor([T, 3, 1]), "PlainDense")


class WrongQuasi(GRU):
    """A GRU whose quasi hook forgets the update gate's ``z`` term."""

    def quasi_jacobian(self, u_t, h):
        new, cols = super().quasi_jacobian(u_t, h)
        return new, (cols[0] * 0.5,)


def test_the_probe_refuses_a_wrong_quasi_hook():
    torch.manual_seed(0)
    cell = WrongQuasi(D, H)
    with pytest.raises(ValueError, match=r"WrongQuasi\.quasi_jacobian: its closed-form "
                                         r"Jacobian differs from torch\.func"):
        rnnlab.Recurrent(cell, engine="quasi")(torch.randn(2, 4, D))


def test_an_adjoint_that_does_not_converge_finishes_sequentially(monkeypatch):
    """Forward converged, the adjoint iteration given one pass: the backward warns and ends
    with the exact sequential sweep, gradients unchanged."""
    cell = build("gru", {})
    real = adjoint.Solved.__init__
    monkeypatch.setattr(adjoint.Solved, "__init__",
                        lambda self, **kw: real(self, **{**kw, "max_iters": 1}))
    with pytest.warns(RuntimeWarning, match=r"adjoint did not reach tol"):
        assert_agrees(cell, Newton(quasi=True, max_iters=200, tol=1e-6), torch.randn(B, T, D),
                      torch.randn(B, H), torch.tensor([T, 5, 0]), "gru")


def test_stats_report_both_iterations():
    cell = build("gru", {})
    engine = Newton(quasi=True, max_iters=200)
    y, _ = rnnlab.Recurrent(cell, engine=engine)(torch.randn(B, T, D, requires_grad=True))
    y.sum().backward()
    assert engine.stats["converged"] and engine.stats["iterations"] >= 1
    assert engine.stats["adjoint_iterations"] >= 1


def test_the_engine_name_and_options():
    layer = rnnlab.Recurrent("gru", engine="quasi", input_size=D, hidden_size=H)
    assert layer.engine_name == "quasi" and layer.engine.quasi
    assert "quasi=True" in repr(layer.engine)
    with pytest.raises(ValueError,
                       match=r"Newton: quasi must be a bool \(True or False\), got 'yes'"):
        Newton(quasi="yes")


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "RNN"])
def test_the_drop_in_modules_on_quasi_equal_torch(kind):
    """The drop-ins run their cells with ``params=`` (the module's own tensors swapped in), so
    the adjoint's VJPs must use the forward's tensors, not the cells' placeholders."""
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(D, H, num_layers=2, batch_first=True)
    mod = getattr(rnnlab.nn, kind)(D, H, num_layers=2, batch_first=True,
                                   engine=Newton(quasi=True, tol=1e-7, max_iters=200))
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(3, 40, D, requires_grad=True)
    grads = []
    for m in (ref, mod):
        x.grad = None
        y, _ = m(x)
        y.square().sum().backward()
        grads.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in m.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-5)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
