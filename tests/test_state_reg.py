"""State regularisation (``rnnlab.nn.state_reg``) against hand computations, and the LSTM's
peephole option (its step by hand, its closed-form quasi-Newton columns against torch.func's)."""
from __future__ import annotations

import functools

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.nn.state_reg import SRAcceptor, StateRegularized
from rnnlab.testing import check_cell

from .test_quasi_jacobians import assert_quasi_exact, build, draws

D, H, K, B = 3, 5, 4, 6


def sr(name="rnn_tanh", mode="soft", temperature=0.7, seed=0, **options):
    torch.manual_seed(seed)
    return StateRegularized(cells.get(name, D, H, **options), K, temperature, mode, seed=seed)


def test_soft_step_is_alpha_times_centroids_by_hand():
    cell = sr()
    u, h = torch.randn(B, H), torch.randn(B, H)
    v = cell.inner.step(u, h)  # the wrapped cell's own new state
    scores = torch.stack([(v * cell.centroids[j]).sum(-1) for j in range(K)], -1) / 0.7
    alpha = scores.exp() / scores.exp().sum(-1, keepdim=True)
    want = sum(alpha[:, j:j + 1] * cell.centroids[j] for j in range(K))
    torch.testing.assert_close(cell.step(u, h), want)
    torch.testing.assert_close(cell.alpha(v), alpha)
    assert cell.centroids.shape == (K, H)
    assert cell.centroids.abs().max() <= 0.5  # U(-0.5, 0.5) at init


def test_hard_step_is_a_centroid_with_the_soft_gradient():
    soft, hard = sr(mode="soft"), sr(mode="hard")
    hard.load_state_dict(soft.state_dict())
    u, h = torch.randn(B, H), torch.randn(B, H)
    out = hard.step(u, h)
    idx = hard.alpha(hard.inner.step(u, h)).argmax(-1)
    torch.testing.assert_close(out, hard.centroids[idx].detach(), rtol=0, atol=1e-6)
    w = torch.randn(B, H)
    (g_hard,) = torch.autograd.grad((hard.step(u, h) * w).sum(), hard.centroids)
    # straight-through: the gradient is soft's through alpha, plus the one-hot's through S
    a = soft.alpha(soft.inner.step(u, h)).detach()
    (g_alpha,) = torch.autograd.grad((soft.step(u, h) * w).sum(), soft.centroids)
    extra = torch.nn.functional.one_hot(idx, K).float().T @ w - a.T @ w
    torch.testing.assert_close(g_hard, g_alpha + extra, rtol=1e-5, atol=1e-6)


def test_gumbel_is_seeded_in_training_and_hard_in_eval():
    u, h = torch.randn(B, H), torch.randn(B, H)
    one, two = sr(mode="gumbel", seed=3), sr(mode="gumbel", seed=3)
    torch.testing.assert_close(one.step(u, h), two.step(u, h))  # the same noise stream
    rows = one.step(u, h)
    assert all(any(torch.allclose(r, c, atol=1e-6) for c in one.centroids) for r in rows)
    one.eval()
    hard = sr(mode="hard", seed=3)
    torch.testing.assert_close(one.step(u, h), hard.step(u, h))


def test_low_temperature_soft_approaches_hard():
    cold, hard = sr(temperature=1e-4), sr(mode="hard", temperature=1e-4)
    u, h = torch.randn(B, H), torch.randn(B, H)
    torch.testing.assert_close(cold.step(u, h), hard.step(u, h), rtol=0, atol=1e-5)


def test_lstm_regularises_h_and_leaves_c_free():
    cell = sr("lstm")
    u = torch.randn(B, 4 * H)
    state = (torch.randn(B, H), torch.randn(B, H))
    h_in, c_in = cell.inner.step(u, state)
    h, c = cell.step(u, state)
    torch.testing.assert_close(c, c_in)
    torch.testing.assert_close(h, cell.alpha(h_in) @ cell.centroids)


def test_recurrent_runs_it_on_the_sequential_engine_as_a_loop_of_steps():
    cell = sr("gru")
    layer = rnnlab.Recurrent(cell, engine="sequential")
    x = torch.randn(2, 7, D)
    y, h_n = layer(x)
    h, u = cell.init_state(2), cell.project(x)
    for t in range(7):
        h = cell.step(u[:, t], h)
        torch.testing.assert_close(y[:, t], h)
    torch.testing.assert_close(h_n, h)


def test_acceptor_shapes_and_states():
    model = SRAcceptor(2, 2, hidden_size=8, centroids=5)
    tokens = torch.randint(0, 2, (3, 9))
    assert model(tokens).shape == (3, 10, 2)  # the empty prefix first
    states = model.states(tokens)
    assert states.shape == (3, 10) and states.min() >= 0 and states.max() < 5
    assert (states[:, 0] == states[0, 0]).all()  # the start symbol leads everyone alike


@pytest.mark.parametrize("kwargs,match", [
    (dict(centroids=0), "centroids must be an int >= 1, got 0"),
    (dict(temperature=0.0), "temperature must be in"),
    (dict(mode="sharp"), "mode must be one of"),
])
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StateRegularized(cells.get("gru", D, H), **kwargs)


def test_inner_must_be_a_cell_with_a_vector_state():
    with pytest.raises(TypeError, match="inner must be a rnnlab Cell"):
        StateRegularized(torch.nn.GRUCell(D, H))
    with pytest.raises(ValueError, match="first state leaf must be a vector"):
        StateRegularized(cells.get("gla", D, 8))


# --- the LSTM's peephole option ---------------------------------------------------------------
def test_peephole_off_holds_no_parameter():
    plain = cells.get("lstm", D, H)
    assert plain.weight_peep is None
    assert "weight_peep" not in plain.state_dict()
    assert cells.get("lstm", D, H, peephole=True).weight_peep.shape == (3, H)
    with pytest.raises(TypeError, match="peephole"):
        cells.get("lstm", D, H, peephole=1)


def test_peephole_step_by_hand():
    torch.manual_seed(0)
    cell = cells.get("lstm", D, H, peephole=True)
    u, h, c = torch.randn(B, 4 * H), torch.randn(B, H), torch.randn(B, H)
    i, f, g, o = (u + h @ cell.weight_hh.T + cell.bias_hh).chunk(4, -1)
    p_i, p_f, p_o = cell.weight_peep
    i, f = torch.sigmoid(i + p_i * c), torch.sigmoid(f + p_f * c)
    c_new = f * c + i * torch.tanh(g)
    h_new = torch.sigmoid(o + p_o * c_new) * torch.tanh(c_new)
    got = cell.step(u, (h, c))
    torch.testing.assert_close(got[0], h_new)
    torch.testing.assert_close(got[1], c_new)


@pytest.mark.parametrize("options", [{"peephole": True}, {"peephole": True, "proj_size": 4},
                                     {"peephole": True, "bias": False}])
def test_peephole_quasi_columns_equal_torch_func(options):
    cell, gen = build("lstm", options), torch.Generator().manual_seed(1)
    for _ in range(2):
        assert_quasi_exact(cell, *draws(cell, gen))


@pytest.mark.parametrize("inner,options", [("gru", {}), ("lstm", {"peephole": True})])
def test_soft_wrapper_passes_the_generic_cell_checks_on_every_engine(inner, options):
    """Soft mode is a pure, smooth step: the sequential, Newton and quasi-Newton engines agree
    (the checks every registered cell gets)."""
    report = check_cell(lambda d, h: StateRegularized(cells.get(inner, d, h, **options), 5))
    assert {"sequential", "newton", "quasi"} <= set(report.engines)


def test_peephole_lstm_passes_the_generic_cell_checks():
    """The quasi engine's probe checks the peephole quasi_jacobian against torch.func's."""
    report = check_cell(functools.partial(cells.LSTM, peephole=True), engines=["quasi"])
    assert "quasi" in report.engines
