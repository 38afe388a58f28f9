"""Bad input gets a ValueError/TypeError naming the argument, the expected shape or range, and
what was given."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells


@pytest.fixture
def gru():
    return rnnlab.Recurrent("gru", input_size=5, hidden_size=7)


@pytest.fixture
def lstm():
    return rnnlab.Recurrent("lstm", input_size=5, hidden_size=7, proj_size=3)


@pytest.mark.parametrize("x, err, pattern", [
    (torch.randn(9, 5), ValueError, r"x: expected shape \(B, T, D=5\).*got \(9, 5\)"),
    (torch.randn(2, 9, 4), ValueError, r"x: expected feature size D=5.*got shape \(2, 9, 4\)"),
    (torch.randn(2, 0, 5), ValueError, r"x: expected at least one time step.*\(2, 0, 5\)"),
    (torch.randn(0, 3, 5), ValueError, r"x: expected a batch of at least one"),
    (torch.ones(2, 9, 5, dtype=torch.long), TypeError, r"x: expected a floating dtype.*int64"),
    ([[1.0] * 5], TypeError, r"x: expected a torch.Tensor.*got list"),
])
def test_bad_input(gru, x, err, pattern):
    with pytest.raises(err, match=pattern):
        gru(x)


def test_bad_initial_state(gru, lstm):
    x = torch.randn(2, 4, 5)
    with pytest.raises(ValueError, match=r"initial_state: expected shape \(2, 7\).*got \(3, 7\)"):
        gru(x, torch.zeros(3, 7))
    with pytest.raises(ValueError, match=r"initial_state: expected a tensor.*got a tuple of 2"):
        gru(x, (torch.zeros(2, 7), torch.zeros(2, 7)))
    with pytest.raises(ValueError, match=r"initial_state: expected a tuple of 2 tensors shaped "
                                         r"\(\(2, 3\), \(2, 7\)\).*got Tensor"):
        lstm(x, torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"initial_state\[1\]: expected shape \(2, 7\).*\(2, 3\)"):
        lstm(x, (torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(TypeError, match=r"initial_state: expected a floating dtype"):
        gru(x, torch.zeros(2, 7, dtype=torch.long))


@pytest.mark.parametrize("lengths, err, pattern", [
    (torch.tensor([4, 5]), ValueError, r"lengths: expected values in \[0, T=4\], got min 4, max 5"),
    (torch.tensor([-1, 2]), ValueError, r"lengths: expected values in \[0, T=4\], got min -1"),
    (torch.tensor([4, 2, 1]), ValueError, r"lengths: expected shape \(B,\) = \(2,\), got \(3,\)"),
    (torch.tensor([[4, 2]]), ValueError, r"lengths: expected shape \(B,\) = \(2,\), got \(1, 2\)"),
    (torch.tensor([4.0, 2.0]), TypeError, r"lengths: expected an integer dtype, got torch.float32"),
    ("44", TypeError, r"lengths: expected a 1-D integer tensor or list of B=2 lengths, got str"),
    ([4, None], TypeError, r"lengths: expected a 1-D integer tensor or list of B=2"),
    (4, TypeError, r"lengths: expected a 1-D integer tensor or list of B=2"),
])
def test_bad_lengths(gru, lengths, err, pattern):
    with pytest.raises(err, match=pattern):
        gru(torch.randn(2, 4, 5), lengths=lengths)


def test_lengths_as_a_list_are_accepted(gru):
    x = torch.randn(2, 4, 5)
    y1, _ = gru(x, lengths=[4, 2])
    y2, _ = gru(x, lengths=torch.tensor([4, 2]))
    assert torch.equal(y1, y2)


def test_bad_construction():
    with pytest.raises(ValueError, match=r"cell: unknown name 'nope'; available: .*gru"):
        cells.get("nope", 3, 4)
    with pytest.raises(ValueError, match=r"hidden_size must be an int >= 1, got 0"):
        cells.get("gru", 3, 0)
    with pytest.raises(ValueError, match=r"input_size must be an int >= 1, got 2.5"):
        cells.get("lstm", 2.5, 4)
    with pytest.raises(ValueError, match=r"nonlinearity must be one of \['relu', 'tanh'\]"):
        cells.get("rnn_tanh", 3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"proj_size must be smaller than hidden_size=4, got 4"):
        cells.get("lstm", 3, 4, proj_size=4)
    with pytest.raises(ValueError,
                       match=r"expected 'auto', one of \['fused', 'newton', 'quasi', 'scan', 'sequential'\]"):
        rnnlab.Recurrent("gru", engine="warp", input_size=3, hidden_size=4)
    with pytest.raises(ValueError, match=r"needs input_size and hidden_size"):
        rnnlab.Recurrent("gru")
    with pytest.raises(TypeError, match=r"cell must be a rnnlab Cell or a registered name"):
        rnnlab.Recurrent(torch.nn.GRUCell(3, 4))


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match=r"cell name 'gru' is already registered"):
        cells.register("gru")(cells.GRU)


def test_a_failed_call_changes_nothing(gru):
    before = {k: v.clone() for k, v in gru.state_dict().items()}
    with pytest.raises(ValueError):
        gru(torch.randn(2, 4, 5), lengths=torch.tensor([9, 9]))
    assert all(torch.equal(before[k], v) for k, v in gru.state_dict().items())
