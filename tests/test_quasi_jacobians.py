"""Closed-form quasi-Newton Jacobians (a cell's ``quasi_jacobian`` hook): the same-channel
entries of the step Jacobian, ``d new_l[c] / d state_k[c]`` over every pair of equally wide
leaves (else each leaf's diagonal), equal to torch.func's, with the step itself unchanged."""
from __future__ import annotations

import pytest
import torch

from rnnlab import cells
from rnnlab.cells import as_tuple, map_state
from rnnlab.engines import linearize as L

D, H, B = 5, 6, 7

CASES = [
    ("gru", {"reset_after": True}), ("gru", {"reset_after": False}),
    ("gru", {"reset_after": True, "bias": False}), ("gru", {"reset_after": False, "bias": False}),
    ("lstm", {}), ("lstm", {"bias": False}), ("lstm", {"proj_size": 4}),
    ("lstm", {"proj_size": 4, "bias": False}),
    ("rnn_tanh", {}), ("rnn_relu", {}), ("rnn_tanh", {"bias": False}),
    ("slstm", {"heads": 3}), ("slstm", {"heads": 1}),
    ("m2rnn", {"heads": 2, "key_dim": 4}), ("m2rnn", {"heads": 2, "key_dim": 4, "shared_qk": True}),
]


def build(name, options, seed=0):
    """The cell in float64 with every parameter random (W = I in M²RNN, R = 0 in sLSTM and
    equal gates would hide terms)."""
    torch.manual_seed(seed)
    cell = cells.get(name, D, H, **options).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_(0.0, 0.7)
    return cell


def draws(cell, gen):
    """A projected input ``(B, P)`` and a random state shaped like the cell's."""
    P = cell.project(torch.zeros(1, 1, D, dtype=torch.float64)).shape[-1]
    u = torch.randn(B, P, generator=gen, dtype=torch.float64)
    state = map_state(lambda z: 1.5 * torch.randn(z.shape, generator=gen, dtype=z.dtype),
                      cell.init_state(B, dtype=torch.float64))
    return u, state


def full_jacobian(cell, u, state) -> torch.Tensor:
    """torch.func's per-sample Jacobians of the step over the flat state: ``(B, S, S)``."""
    leaves = as_tuple(state)
    shapes = [t.shape[1:] for t in leaves]
    split = [t[0].numel() for t in leaves]

    def one(u1, v1):  # one sample: u1 (P,), v1 (S,) -> (S,)
        parts = tuple(p.reshape(1, *s) for p, s in zip(v1.split(split), shapes))
        new = cell.step(u1[None], parts if isinstance(state, tuple) else parts[0])
        return torch.cat([t.reshape(-1) for t in as_tuple(new)])

    flat = torch.cat([t.reshape(B, -1) for t in leaves], -1)  # (B, S)
    return torch.func.vmap(torch.func.jacrev(one, argnums=1))(u, flat)


def expected_columns(J: torch.Tensor, split):
    """The contract's entries of the full Jacobians J ``(B, S, S)``: channel blocks
    ``(B, L, C)`` per leaf when all L leaves hold C numbers, else diagonals ``(B, 1, S_l)``."""
    offsets = [sum(split[:l]) for l in range(len(split))]
    if all(n == split[0] for n in split):
        c = torch.arange(split[0])
        return tuple(torch.stack([J[:, o_l + c, o_k + c] for o_k in offsets], 1)
                     for o_l in offsets)
    return tuple(J[:, o + torch.arange(n), o + torch.arange(n)].unsqueeze(1)
                 for o, n in zip(offsets, split))


def assert_quasi_exact(cell, u, state):
    with torch.no_grad():
        new, cols = cell.quasi_jacobian(u, state)
        ref = cell.step(u, state)
    assert isinstance(cols, tuple) and type(new) is type(ref)
    assert all(torch.equal(got, want) for got, want in zip(as_tuple(new), as_tuple(ref)))
    split = [t[0].numel() for t in as_tuple(state)]
    want = expected_columns(full_jacobian(cell, u, state), split)
    assert len(cols) == len(want)
    for got, ref_cols in zip(cols, want):
        assert got.shape == ref_cols.shape, f"{tuple(got.shape)} vs {tuple(ref_cols.shape)}"
        torch.testing.assert_close(got, ref_cols, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,options", CASES)
def test_quasi_columns_equal_torch_func(name, options):
    cell, gen = build(name, options), torch.Generator().manual_seed(1)
    for trial in range(3):
        u, state = draws(cell, gen)
        if name == "slstm" and trial:
            state[2][: 2 * trial] = 0.0  # empty memory in some rows
            state[2][-1, ::2] = 0.0  # and in some entries of a row
        assert_quasi_exact(cell, u, state)


@pytest.mark.parametrize("name,options", [("gru", {}), ("lstm", {"proj_size": 4}),
                                          ("slstm", {"heads": 3})])
def test_quasi_columns_follow_parameter_updates(name, options):
    """Nothing is cached from the parameters: an in-place update shows in the next call."""
    cell, gen = build(name, options), torch.Generator().manual_seed(2)
    u, state = draws(cell, gen)
    assert_quasi_exact(cell, u, state)
    with torch.no_grad():
        cell.weight_hh.mul_(-2.0).add_(0.1)
    assert_quasi_exact(cell, u, state)


def test_slstm_without_recurrence_quasi_is_the_exact_jacobian():
    """With R = 0 sLSTM's Jacobian is already per channel: the quasi columns are all of it
    (every off-channel entry of the exact Jacobian, closed-form and torch.func's, is zero)."""
    cell, gen = build("slstm", {"heads": 3}), torch.Generator().manual_seed(3)
    with torch.no_grad():
        cell.weight_hh.zero_()
    u, state = draws(cell, gen)
    state[2][:2] = 0.0
    with torch.no_grad():
        _, cols = cell.quasi_jacobian(u, state)
        lay = L.layout(cell, state)
        _, exact = L.linearize(cell, u, L.flatten(state, lay), lay)  # the closed-form hook
    J = full_jacobian(cell, u, state)
    quasi = J.new_zeros(B, 4 * H, 4 * H)
    c = torch.arange(H)
    for l, a in enumerate(cols):
        for k in range(4):
            quasi[:, l * H + c, k * H + c] = a[:, k]
    rows = torch.arange(4 * H).expand(lay.width, -1)
    closed = J.new_zeros(B, 4 * H, 4 * H)
    closed[:, rows, lay.src()] = exact  # columns (B, M, S) -> (B, S, S)
    torch.testing.assert_close(quasi, J, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(closed, J, rtol=1e-12, atol=1e-12)
