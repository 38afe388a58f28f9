"""The scan engine equals the sequential (reference) engine for every linear cell: outputs, final
state and the gradients of inputs, initial state and every parameter; also with lengths."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import Linear, as_tuple, map_state

from .helpers import assert_close, sq_norm

D, H = 5, 6  # H even: S4D-style cells want an even state; heads divide it
LINEAR = [n for n in cells.available()
          if isinstance(cells.get(n, D, H, device="meta").structure, Linear)]


def run(name, engine, x, h0, lengths, seed=0):
    torch.manual_seed(seed)
    layer = rnnlab.Recurrent(cells.get(name, D, H), engine=engine)
    x = x.clone().requires_grad_()
    h0 = map_state(lambda t: t.clone().requires_grad_(), h0)
    y, h = layer(x, h0, lengths=lengths)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + sq_norm(h)
    loss.backward()
    grads = [x.grad, *[t.grad for t in as_tuple(h0)], *[p.grad for p in layer.parameters()]]
    return y, h, grads


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("varlen", [False, True])
def test_scan_equals_sequential(name, T, varlen):
    B = 3
    zero = cells.get(name, D, H).init_state(B)
    h0 = map_state(lambda z: 0.3 * torch.randn(z.shape, dtype=z.dtype), zero)
    x = torch.randn(B, T, D)
    lengths = torch.tensor([T, max(T // 2, 1), 0])[:B] if varlen else None
    y_s, h_s, g_s = run(name, "sequential", x, h0, lengths)
    y_p, h_p, g_p = run(name, "scan", x, h0, lengths)
    assert_close(y_p, y_s, what=f"{name} outputs")
    assert_close(h_p, h_s, what=f"{name} final state")
    for i, (a, b) in enumerate(zip(g_p, g_s)):
        assert_close(a, b, what=f"{name} gradient #{i}")


def test_auto_picks_scan_for_linear_and_sequential_otherwise():
    assert rnnlab.Recurrent("mamba", input_size=D, hidden_size=H).engine_name == "scan"
    assert rnnlab.Recurrent("gru", input_size=D, hidden_size=H).engine_name == "sequential"


def test_scan_refuses_nonlinear_cells():
    with pytest.raises(ValueError, match=r"engine: 'scan' cannot run GRU \(structure Dense\(\)\)"):
        rnnlab.Recurrent("gru", engine="scan", input_size=D, hidden_size=H)
