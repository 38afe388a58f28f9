"""Stuffed Mamba's training-free mitigations as cell options (``cells/mamba2.py``'s ``Mitigated``):
hand-checkable cases for each (decay_scale scales the log-decay, state_norm bounds each head's
norm, window equals the recurrence restarted W steps back), the engines that run or refuse them,
and the argument checks."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells

CELLS = {"mamba2": dict(head_dim=4, state_size=3), "gla": dict(heads=2),
         "mamba": dict(state_size=3)}


def _pair(name, dtype=torch.float64, **options):
    """A plain cell and the same weights with ``options``."""
    torch.manual_seed(0)
    plain = cells.get(name, 5, 8, **CELLS[name]).to(dtype)
    other = cells.get(name, 5, 8, **CELLS[name], **options).to(dtype)
    other.load_state_dict(plain.state_dict())
    return plain, other


@pytest.mark.parametrize("name", list(CELLS))
def test_defaults_leave_the_cell_linear_and_unchanged(name):
    plain, same = _pair(name, decay_scale=1.0, window=0, state_norm=None)
    assert plain.structure == type(plain).structure and not plain.mitigated
    assert plain.state_shapes() == same.state_shapes()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    assert torch.equal(rnnlab.Recurrent(plain, engine="scan")(x)[0],
                       rnnlab.Recurrent(same, engine="scan")(x)[0])


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("W", [1, 3])
def test_window_equals_the_recurrence_restarted_w_steps_back(name, W):
    plain, windowed = _pair(name, window=W)
    x = torch.randn(2, 11, 5, dtype=torch.float64)
    y, h = rnnlab.Recurrent(windowed, engine="sequential")(x)
    for t in range(x.shape[1]):
        restarted, h_t = rnnlab.Recurrent(plain, engine="sequential")(x[:, max(0, t - W + 1):t + 1])
        assert torch.allclose(y[:, t], restarted[:, -1], atol=1e-12, rtol=0), t
    assert torch.allclose(h[0], h_t, atol=1e-12, rtol=0)  # the final state: last W inputs only
    assert len(h) == 1 + len(windowed.window_shapes())  # (state, ring...)


def test_window_of_a_scalar_decay_by_hand():
    """Mamba-2, one head, P = N = 1, no projection: h_t = a_t h + dt_t x_t B_t; with W = 2,
    h^W_3 = a_3 b_2 + b_3 where b_t = dt_t x_t B_t."""
    cell = cells.get("mamba2", 4, 1, head_dim=1, state_size=1, in_proj=False, window=2)
    cell = cell.double()
    u = torch.tensor([[[1.0, 0.3, 2.0, 0.0], [2.0, -0.1, 1.0, 0.0], [-1.0, 0.5, 0.5, 0.0]]],
                     dtype=torch.float64)  # [x, dt~, B, C] per step
    h = cell.init_state(1, torch.float64)
    dts, bs = [], []
    for t in range(3):
        h = cell.step(u[:, t], h)
        dt = torch.nn.functional.softplus(u[0, t, 1] + cell.dt_bias[0])
        dts.append(dt)
        bs.append(dt * u[0, t, 0] * u[0, t, 2])
    a3 = torch.exp(-torch.exp(cell.A_log[0]) * dts[2])
    assert torch.allclose(h[0].flatten(), (a3 * bs[1] + bs[2]).reshape(1), atol=1e-14)


@pytest.mark.parametrize("name", list(CELLS))
def test_state_norm_bounds_every_head_and_keeps_smaller_states(name):
    plain, normed = _pair(name, state_norm=0.05)
    x = 3 * torch.randn(2, 12, 5, dtype=torch.float64)
    _, h = rnnlab.Recurrent(normed, engine="sequential")(x)
    norms = h.flatten(2).norm(dim=-1)  # (B, heads)
    assert norms.max() <= 0.05 + 1e-12
    # a big state comes out at exactly the bound, in the same direction
    u = plain.project(x)[:, 0]
    h0 = 10 * torch.randn_like(h)
    big, capped = plain.step(u, h0), normed.step(u, h0)
    unit = big / big.flatten(2).norm(dim=-1).view(*big.shape[:2], *[1] * (big.dim() - 2))
    assert torch.allclose(capped, 0.05 * unit, atol=1e-12)
    # a state inside the bound is the plain step's
    loose = _pair(name, state_norm=1e6)[1]
    assert torch.equal(loose.step(u, h0), big)


@pytest.mark.parametrize("name", list(CELLS))
def test_decay_scale_raises_each_decay_to_the_power_s(name):
    plain, scaled = _pair(name, decay_scale=2.5)
    u = plain.project(torch.randn(2, 4, 5, dtype=torch.float64))
    A, b = plain.transition(u)
    A_s, b_s = scaled.transition(u)
    assert torch.allclose(A_s, A ** 2.5, atol=1e-14) and torch.equal(b, b_s)
    assert (A_s <= A).all()  # forgets more


@pytest.mark.parametrize("name", list(CELLS))
def test_engines_run_or_refuse_each_option(name):
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    _, scaled = _pair(name, decay_scale=3.0)
    assert torch.allclose(rnnlab.Recurrent(scaled, engine="scan")(x)[0],
                          rnnlab.Recurrent(scaled, engine="sequential")(x)[0], atol=1e-10)
    for options in (dict(window=2), dict(state_norm=0.1)):
        _, cell = _pair(name, **options)
        with pytest.raises(ValueError, match="'scan' cannot run"):
            rnnlab.Recurrent(cell, engine="scan")
        assert rnnlab.Recurrent(cell, engine="auto").engine_name == "sequential"
    _, normed = _pair(name, state_norm=0.1)  # per-head blocks: Newton solves it too
    y_seq = rnnlab.Recurrent(normed, engine="sequential")(x)[0]
    assert torch.allclose(rnnlab.Recurrent(normed, engine="newton")(x)[0], y_seq, atol=1e-8)


@pytest.mark.parametrize("options, match", [
    (dict(decay_scale=0.0), r"decay_scale must be in \(0, inf\).*got 0"),
    (dict(state_norm=-1.0), r"state_norm must be.*got -1"),
    (dict(window=-2), r"window must be an int >= 0, got -2"),
    (dict(window=2, state_norm=1.0), "window and state_norm are exclusive"),
])
def test_bad_options_name_the_argument_range_and_value(options, match):
    with pytest.raises(ValueError, match=match):
        cells.get("mamba2", 4, 8, **options)
