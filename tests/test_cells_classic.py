"""The classic cells against torch's own cells and the papers' formulas, one step at a time."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells

from .helpers import assert_close

D, H = 5, 7


def run_cell(cell, x, h):
    """Our cell over ``x: (B, T, D)`` step by step, with no engine in between."""
    u = cell.project(x)
    for t in range(x.shape[1]):
        h = cell.step(u[:, t], h)
    return h


@pytest.mark.parametrize("name, torch_cls, kw", [
    ("rnn_tanh", torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    ("rnn_relu", torch.nn.RNNCell, {"nonlinearity": "relu"}),
    ("gru", torch.nn.GRUCell, {}),
    ("lstm", torch.nn.LSTMCell, {}),
])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_cell(name, torch_cls, kw, bias):
    theirs = torch_cls(D, H, bias=bias, **kw)
    ours = cells.get(name, D, H, bias=bias)
    ours.load_state_dict(theirs.state_dict())  # same parameter names as torch's cells
    x = torch.randn(3, 6, D)
    h = ours.init_state(3)
    h = tuple(torch.randn_like(t) for t in h) if isinstance(h, tuple) else torch.randn_like(h)
    ref = h
    for t in range(6):
        ref = theirs(x[:, t], ref)
    assert_close(run_cell(ours, x, h), ref, what=name)


def test_gru_reset_before_is_chos_formula():
    cell = cells.get("gru", D, H, reset_after=False)
    x, h = torch.randn(4, D), torch.randn(4, H)
    W_ir, W_iz, W_in = cell.weight_ih.chunk(3)
    W_hr, W_hz, W_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    r = torch.sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = torch.sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    n = torch.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    ref = (1 - z) * n + z * h
    assert_close(cell.step(cell.project(x[:, None])[:, 0], h), ref, what="gru reset_after=False")


def test_lstm_projection_and_forget_bias():
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(D, H, proj_size=3, batch_first=True)
    ours = cells.get("lstm", D, H, proj_size=3)
    ours.load_state_dict({k[:-3]: v for k, v in theirs.state_dict().items()})  # drop "_l0"
    x = torch.randn(2, 5, D)
    _, (h_ref, c_ref) = theirs(x)
    h, c = run_cell(ours, x, ours.init_state(2))
    assert_close((h, c), (h_ref[0], c_ref[0]), what="lstm proj_size=3")
    torch.manual_seed(1)
    plain = cells.get("lstm", D, H)
    torch.manual_seed(1)
    shifted = cells.get("lstm", D, H, forget_bias=1.0)
    delta = shifted.bias_ih - plain.bias_ih
    assert torch.allclose(delta[H:2 * H], torch.ones(H)) and (delta[:H] == 0).all()
    assert (delta[2 * H:] == 0).all()


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_indrnn_formula_and_clip(nonlinearity):
    phi = torch.relu if nonlinearity == "relu" else torch.tanh
    cell = cells.get("indrnn", D, H, nonlinearity=nonlinearity, recurrent_max=0.5)
    with torch.no_grad():
        cell.weight_hh.uniform_(-2, 2)
    x, h = torch.randn(3, D), torch.randn(3, H)
    u = cell.weight_hh.clamp(-0.5, 0.5)
    ref = phi(x @ cell.weight_ih.T + cell.bias + u * h)
    assert_close(cell.step(cell.project(x[:, None])[:, 0], h), ref, what="indrnn")
    assert (cells.get("indrnn", D, H).weight_hh >= 0).all()  # u ~ U(0, 1) at init


def test_init_follows_torch():
    """All classic parameters start in U(-1/sqrt(H), 1/sqrt(H)), as torch's."""
    bound = 1 / H ** 0.5
    for name in ("rnn_tanh", "gru", "lstm"):
        for p in cells.get(name, D, H).parameters():
            assert p.abs().max() <= bound and p.std() > bound / 3


def test_recurrent_by_name_equals_recurrent_of_cell():
    torch.manual_seed(0)
    a = rnnlab.Recurrent("lstm", input_size=D, hidden_size=H)
    torch.manual_seed(0)
    b = rnnlab.Recurrent(cells.get("lstm", D, H))
    x = torch.randn(2, 4, D)
    assert torch.equal(a(x)[0], b(x)[0])
    assert a.engine_name == "auto" and a.engine.last == "sequential"  # short: sequential
