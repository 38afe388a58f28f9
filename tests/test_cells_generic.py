"""Generic tests over the cell registry: every registered cell gets them, with no test written
for it. Each cell is built by name from (input_size, hidden_size) alone and run on the
sequential (reference) engine."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlab
from rnnlab import cells
from rnnlab.cells import Block, Dense, Diagonal, Heads, Linear, as_tuple, map_state
from rnnlab.cells.linear import apply_transition

from .helpers import TOL, assert_close, rel_err, sq_norm, widen

NAMES = cells.available()
D, H = 5, 7  # odd, not powers of two


def build(name: str, seed: int = 0, **kw) -> rnnlab.Recurrent:
    torch.manual_seed(seed)
    return rnnlab.Recurrent(cells.get(name, D, H, **kw), engine="sequential")


def random_state(layer: rnnlab.Recurrent, batch: int, seed: int = 1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    zero = layer.initial_state(batch)
    return map_state(lambda z: (0.5 * torch.randn(z.shape, generator=g, dtype=z.dtype))
                     .requires_grad_(requires_grad), zero)


def test_registry_lists_the_classic_cells():
    assert {"rnn_tanh", "rnn_relu", "gru", "lstm", "indrnn"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_reach_everything(name):
    layer = build(name)
    x = torch.randn(3, 9, D, requires_grad=True)
    h0 = random_state(layer, 3, requires_grad=True)
    y, h = layer(x, h0)
    assert y.shape == (3, 9, layer.output_size)
    assert all(torch.isfinite(t).all() for t in (y, *as_tuple(h)))
    loss = (y * torch.randn_like(y)).sum() + sq_norm(h)
    loss.backward()
    for what, t in [("x", x), *[(f"h0[{i}]", t) for i, t in enumerate(as_tuple(h0))],
                    *layer.cell.named_parameters()]:
        assert t.grad is not None, f"{name}: no gradient reached {what}"
        assert torch.isfinite(t.grad).all(), f"{name}: non-finite gradient of {what}"
        # A state leaf may be truly unused at init (sLSTM's h with its zero-initialized R);
        # the state as a whole must matter.
        assert what.startswith("h0[") or t.grad.abs().sum() > 0, f"{name}: zero gradient of {what}"
    assert sum(t.grad.abs().sum() for t in as_tuple(h0)) > 0, f"{name}: h0 has no influence"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_a_seed(name):
    a, b = build(name, seed=3), build(name, seed=3)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.randn(2, 6, D)
    assert torch.equal(a(x)[0], b(x)[0])
    assert not torch.equal(build(name, seed=4)(x)[0], a(x)[0])


@pytest.mark.parametrize("name", NAMES)
def test_step_is_pure_and_shapes_match_the_contract(name):
    cell = build(name).cell
    h = map_state(lambda z: torch.randn(z.shape, dtype=z.dtype), cell.init_state(4))
    before = [(t.clone(), t._version) for t in as_tuple(h)]
    u = cell.project(torch.randn(4, 1, D))[:, 0]  # (B, P)
    h_next = cell.step(u, h)
    for t, (value, version) in zip(as_tuple(h), before):
        assert t._version == version and torch.equal(t, value), f"{name}: step wrote into h"
    assert [tuple(t.shape) for t in as_tuple(h_next)] == [(4, *s) for s in cell.state_shapes()]
    assert isinstance(h_next, tuple) == isinstance(h, tuple)
    assert cell.readout(h_next, u).shape == (4, cell.output_size)


def _jacobian(cell, u, h):
    """Full ``dh_t/dh_{t-1}`` of one sample: (S, S) with S the flattened state size."""
    leaves = as_tuple(h)
    sizes = [t[0].numel() for t in leaves]

    def f(flat):
        parts = torch.split(flat, sizes)
        hh = tuple(p.view(1, *t.shape[1:]) for p, t in zip(parts, leaves))
        out = cell.step(u[:1], hh if isinstance(h, tuple) else hh[0])
        return torch.cat([t.reshape(-1) for t in as_tuple(out)])

    flat = torch.cat([t[0].reshape(-1) for t in leaves]).double()
    return torch.autograd.functional.jacobian(f, flat)


def _allowed(structure, sizes):
    """Boolean (S, S) pattern of the entries the declared structure allows."""
    S = sum(sizes)
    if isinstance(structure, (Dense, Linear)):
        return torch.ones(S, S, dtype=torch.bool)
    idx = torch.arange(S)
    if isinstance(structure, Diagonal):
        group = idx
    elif isinstance(structure, Block):  # channel i of each of the k tensors
        group = idx % sizes[0]
    elif isinstance(structure, Heads):
        group = (idx % (structure.n * structure.d)) // structure.d
    return group[:, None] == group[None, :]


NONLINEAR = [n for n in NAMES if not isinstance(cells.get(n, D, H, device="meta").structure,
                                                Linear)]
LINEAR = [n for n in NAMES if n not in NONLINEAR]
AFFINE = [n for n in LINEAR if cells.get(n, D, H, device="meta").structure.kind != "monoid"]


@pytest.mark.parametrize("name", NONLINEAR)
def test_declared_structure_holds(name):
    cell = build(name).cell.double()
    h = map_state(lambda z: torch.randn(z.shape, dtype=torch.float64), cell.init_state(2))
    u = cell.project(torch.randn(2, 1, D, dtype=torch.float64))[:, 0]
    J = _jacobian(cell, u, h)
    mask = _allowed(cell.structure, [t[0].numel() for t in as_tuple(h)])
    outside = J[~mask]
    assert outside.numel() == 0 or outside.abs().max() == 0, \
        f"{name}: Jacobian has entries outside its declared {cell.structure}"


@pytest.mark.parametrize("name", AFFINE)
def test_linear_cell_is_affine_with_its_declared_kind(name):
    """step(u, h) = A h + b: affine in h, and A has the pattern of its Linear(kind)."""
    cell = build(name).cell.double()
    zero = cell.init_state(1, torch.float64)
    S = zero[0].numel()
    u = cell.project(torch.randn(1, 1, D, dtype=torch.float64))[:, 0].expand(S, -1)  # (S, P)
    basis = torch.eye(S, dtype=zero.dtype).view(S, *zero.shape[1:])  # S unit states
    b = cell.step(u[:1], zero)
    M = (cell.step(u, basis) - b).reshape(S, S).T  # column i = A e_i
    h1, h2 = (torch.randn(zero.shape, dtype=zero.dtype) for _ in range(2))
    mix = cell.step(u[:1], 0.3 * h1 + 0.7 * h2)
    assert_close(mix, 0.3 * cell.step(u[:1], h1) + 0.7 * cell.step(u[:1], h2),
                 torch.float64, f"{name}: step is not affine in h")
    kind, i = cell.structure.kind, torch.arange(S)
    if kind == "matrix":  # A mixes the last dim
        idx = i // zero.shape[-1]
    elif kind == "householder":  # A (K x K) mixes the K dim of each (head, v) column
        K, V = zero.shape[-2:]
        idx = (i // (K * V)) * V + i % V
    else:
        idx = i
    off = M[idx[:, None] != idx[None, :]]
    assert off.numel() == 0 or off.abs().max() == 0, f"{name}: A is not {kind}"


@pytest.mark.parametrize("name", AFFINE)
def test_transition_agrees_with_step(name):
    cell = build(name).cell.double()
    h = map_state(lambda z: torch.randn(z.shape, dtype=z.dtype), cell.init_state(3, torch.float64))
    u = cell.project(torch.randn(3, 1, D, dtype=torch.float64))  # (B, 1, P)
    A, b = cell.transition(u)
    assert_close(apply_transition(cell.structure.kind, A[:, 0], b[:, 0], h),
                 cell.step(u[:, 0], h), torch.float64, f"{name}: transition vs step")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(1, 23), min_size=1, max_size=6, unique=True))
def test_streaming_in_chunks_equals_one_run(name, cuts):
    layer = build(name)
    T = 24
    x = torch.randn(2, T, D)
    h0 = random_state(layer, 2)
    y_full, h_full = layer(x, h0)
    ys, state = [], h0
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), T]):
        y, state = layer.step(x[:, a:b], state)
        ys.append(y)
    assert_close(torch.cat(ys, 1), y_full, what=f"{name} streamed outputs")
    assert_close(state, h_full, what=f"{name} streamed final state")


@pytest.mark.parametrize("name", NAMES)
def test_lengths_equal_each_sequence_alone(name):
    layer = build(name)
    T, lengths = 11, [11, 0, 5, 1, 8]
    x = torch.randn(len(lengths), T, D)
    h0 = random_state(layer, len(lengths))
    y, h = layer(x, h0, lengths=torch.tensor(lengths))
    for b, n in enumerate(lengths):
        h0_b = map_state(lambda t: t[b:b + 1], h0)
        h_b = map_state(lambda t: t[b:b + 1], h)
        if n == 0:
            assert_close(h_b, h0_b, what=f"{name} empty sequence keeps its state")
        else:
            y_alone, h_alone = layer(x[b:b + 1, :n], h0_b)
            assert_close(y[b:b + 1, :n], y_alone, what=f"{name} outputs of sequence {b}")
            assert_close(h_b, h_alone, what=f"{name} final state of sequence {b}")
        assert (y[b, n:] == 0).all(), f"{name}: padded outputs of sequence {b} are not zero"


@pytest.mark.parametrize("name", NAMES)
def test_padding_has_no_influence(name):
    layer = build(name)
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, D, requires_grad=True)
    y, h = layer(x, lengths=lengths)
    (y.sum() + sq_norm(h)).backward()
    pad = torch.arange(6)[None, :] >= lengths[:, None]  # (B, T)
    assert (x.grad[pad] == 0).all(), f"{name}: padded inputs receive gradient"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_input_dtypes_keep_a_wide_state(name, dtype):
    layer = build(name)
    x = torch.randn(2, 13, D)
    y_ref, h_ref = layer(x.double())  # fp64 input: parameters cast up, fp64 all the way
    y, h = layer(x.to(dtype))
    assert y.dtype == dtype
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert all((t.real if t.is_complex() else t).dtype == state_dtype for t in as_tuple(h))
    # Only the input is rounded to `dtype`; the run itself is fp32 (or fp64).
    tol = max(TOL[torch.float32], TOL.get(dtype))
    assert rel_err(y.double(), y_ref) <= tol and rel_err(h, h_ref) <= tol


@pytest.mark.parametrize("name", NAMES)
def test_fp64_cell_passes_gradcheck(name):
    layer = build(name).double()
    x = torch.randn(2, 4, D, dtype=torch.float64, requires_grad=True)
    h0 = random_state(layer, 2)
    h0 = map_state(lambda t: widen(t).requires_grad_(), h0)
    leaves = as_tuple(h0)

    def f(x, *leaves):
        y, h = layer(x, leaves if isinstance(h0, tuple) else leaves[0])
        return (y, *as_tuple(h))

    assert torch.autograd.gradcheck(f, (x, *leaves))
