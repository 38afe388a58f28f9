"""The Newton engine equals the sequential engine for every cell it supports (outputs, final
state, gradients of inputs, initial state and every parameter), with varlen and non-zero initial
state; a false structure declaration is caught; divergence raises or falls back, never returns
wrong numbers."""
from __future__ import annotations

import math

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import Diagonal, as_tuple, map_state
from rnnlab.cells.elman import Elman
from rnnlab.engines import Newton

from .helpers import assert_agrees, assert_close, rel_err, sq_norm

D, H = 5, 6
NEWTON = [n for n in cells.available() if Newton().supports(cells.get(n, D, H, device="meta"))]


def check_agree(name, T, varlen=True, tol=None, **options):
    torch.manual_seed(0)
    cell = cells.get(name, D, H, **options)
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(3))
    x = torch.randn(3, T, D)
    lengths = torch.tensor([T, max(T // 2, 1), 0]) if varlen else None
    engine = Newton(tol=tol)
    assert_agrees(cell, engine, x, h0, lengths, name)
    assert engine.stats["converged"]
    return engine


def test_the_classic_cells_are_supported():
    assert {"gru", "lstm", "rnn_tanh", "rnn_relu", "indrnn"} <= set(NEWTON)


@pytest.mark.parametrize("name", NEWTON)
@pytest.mark.parametrize("T", [1, 7, 300])
def test_newton_equals_sequential(name, T):
    check_agree(name, T)


@pytest.mark.parametrize("name", NEWTON)
def test_newton_equals_sequential_long(name):
    # The stopping residual bounds the solution's error; over 2048 steps fp32 rounding alone
    # reaches ~1e-5, so solve a decade tighter than the default to compare at 1e-5.
    check_agree(name, 2048, tol=1e-6)


class DiagonalLiar(Elman):
    """An Elman cell (dense recurrence) that claims to be diagonal."""
    structure = Diagonal()


def test_probe_catches_a_false_diagonal_declaration():
    layer = rnnlab.Recurrent(DiagonalLiar(D, H), engine="newton")
    with pytest.raises(ValueError, match=r"DiagonalLiar declares structure Diagonal\(\), but its "
                                         r"step mixes state entries outside it"):
        layer(torch.randn(2, 9, D))


def chaotic(T=200):
    """A tanh RNN with recurrent weights x20: bounded, chaotic, Newton needs many iterations."""
    torch.manual_seed(0)
    cell = cells.get("rnn_tanh", D, H)
    with torch.no_grad():
        cell.weight_hh.mul_(20)
    return cell, torch.randn(2, T, D)


def test_planted_divergence_raises_with_history():
    cell, x = chaotic()
    layer = rnnlab.Recurrent(cell, engine=Newton(max_iters=3))
    with pytest.raises(rnnlab.ConvergenceError, match=r"no convergence.*within 3 iterations") as e:
        layer(x)
    assert len(e.value.history) == 4 and e.value.history[-1] > 1e-5


def test_planted_divergence_falls_back_to_sequential_and_counts():
    cell, x = chaotic()
    engine = Newton(max_iters=3, on_fail="sequential")
    with pytest.warns(RuntimeWarning, match="recomputing with the sequential engine"):
        y, h = rnnlab.Recurrent(cell, engine=engine)(x)
    y_ref, h_ref = rnnlab.Recurrent(cell, engine="sequential")(x)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref)
    rnnlab.Recurrent(cell, engine=engine)(x)  # a second failure: counted, not warned again
    assert engine.fallbacks == 2


def test_nan_input_raises():
    x = torch.randn(2, 9, D)
    x[1, 4, 2] = float("nan")
    with pytest.raises(rnnlab.ConvergenceError, match="NaN or inf"):
        rnnlab.Recurrent("gru", engine="newton", input_size=D, hidden_size=H)(x)


def test_chaotic_cell_converges_given_enough_iterations():
    cell, x = chaotic(T=60)
    engine = Newton(max_iters=200)
    y, _ = rnnlab.Recurrent(cell, engine=engine)(x)
    y_ref, _ = rnnlab.Recurrent(cell, engine="sequential")(x)
    assert engine.stats["converged"] and engine.stats["iterations"] > 4
    assert torch.allclose(y, y_ref, atol=1e-3)  # chaos amplifies fp32 rounding either way


def test_drop_in_gru_on_newton_matches_torch():
    torch.manual_seed(0)
    ref = torch.nn.GRU(D, H, num_layers=2, batch_first=True)
    mine = rnnlab.nn.GRU(D, H, num_layers=2, batch_first=True, engine="newton")
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 40, D)
    assert mine.engine_name == "newton"
    assert_close(mine(x)[0], ref(x)[0], what="drop-in GRU on newton")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(tol=0), r"tol must be a finite number > 0"),
    (dict(max_iters=0), r"max_iters must be an int >= 1"),
    (dict(damping=1.5), r"damping must be in \(0, 1\]"), (dict(init="ones"), r"init must be"),
    (dict(on_fail="ignore"), r"on_fail must be one of \['raise', 'sequential'\]"),
    (dict(damping="lm"), r"damping must be in \(0, 1\], 'elk' or 'quasi-elk'"),
    (dict(elk_sigma2=0), r"elk_sigma2 must be a finite number > 0"),
    (dict(compile="yes"), r"compile must be True, False or 'auto'"),
])
def test_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Newton(**kwargs)


def test_damping_still_converges_to_the_same_answer():
    cell = cells.get("gru", D, H)
    x = torch.randn(2, 50, D)
    engine = Newton(damping=0.7)
    y, _ = rnnlab.Recurrent(cell, engine=engine)(x)
    assert_close(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], what="damped")
    assert engine.stats["iterations"] > Newton_iterations(cell, x)


def Newton_iterations(cell, x):
    engine = Newton()
    rnnlab.Recurrent(cell, engine=engine)(x)
    return engine.stats["iterations"]


class PairCell(rnnlab.cells.Cell):
    """Test cell with state (c, h) mixing channel i of c with channel i of h: Block(2)."""
    structure = rnnlab.cells.Block(2)

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.inp = torch.nn.Linear(input_size, 2 * hidden_size)
        self.mix = torch.nn.Parameter(0.5 * torch.randn(4, hidden_size))

    def state_shapes(self):
        return ((self.hidden_size,), (self.hidden_size,))

    def project(self, x):
        return self.inp(x)

    def step(self, u, state):
        c, h = state
        u1, u2 = u.chunk(2, -1)
        c = torch.tanh(self.mix[0] * c + self.mix[1] * h + u1)
        return c, torch.sigmoid(self.mix[2] * c + self.mix[3] * h + u2)


class HeadCell(rnnlab.cells.Cell):
    """Test cell: tanh RNN whose recurrent matrix is block-diagonal over 2 heads: Heads(2, 3)."""
    structure = rnnlab.cells.Heads(2, 3)

    def __init__(self, input_size, hidden_size=6):
        super().__init__(input_size, hidden_size)
        self.inp = torch.nn.Linear(input_size, 6)
        self.rec = torch.nn.Parameter(0.5 * torch.randn(2, 3, 3))

    def project(self, x):
        return self.inp(x)

    def step(self, u, h):
        heads = torch.einsum("nij,bnj->bni", self.rec, h.unflatten(-1, (2, 3)))  # (B, 2, 3)
        return torch.tanh(heads.flatten(-2) + u)


@pytest.mark.parametrize("make", [PairCell, HeadCell], ids=["block2", "heads"])
@pytest.mark.parametrize("T", [1, 7, 300])
def test_block_and_heads_structures(make, T):
    torch.manual_seed(0)
    cell = make(D, H)
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(3))
    x = torch.randn(3, T, D)
    lengths = torch.tensor([T, max(T // 2, 1), 0])
    assert_agrees(cell, Newton(), x, h0, lengths, "heads")


def test_probe_catches_a_too_narrow_heads_declaration():
    class Liar(HeadCell):
        structure = rnnlab.cells.Heads(3, 2)  # the true heads are 2 x 3
    with pytest.raises(ValueError, match=r"declares structure Heads\(n=3, d=2\)"):
        rnnlab.Recurrent(Liar(D), engine="newton")(torch.randn(2, 5, D))


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
@pytest.mark.parametrize("T", [300, 2048])
def test_paracells_at_init_converge_within_4_iterations(name, T):
    torch.manual_seed(0)
    engine = Newton(tol=1e-5)
    rnnlab.Recurrent(cells.get(name, 16, 32), engine=engine)(torch.randn(4, T, 16))
    assert engine.stats["converged"] and engine.stats["iterations"] <= 4, engine.stats


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_compiled_engine_matches_sequential(monkeypatch, name):
    """compile=True: the fused linearization (with inductor's exp-based tanh), the sweeps over
    chunks of 8 steps (the last one short) and the compiled VJP give the sequential engine's
    outputs and gradients (varlen, non-zero h0)."""
    torch.manual_seed(0)
    cell = cells.get(name, D, H)
    S = sum(t.shape[1] for t in as_tuple(cell.init_state(1)))
    width = 1 if name == "paragru" else 2
    monkeypatch.setattr(rnnlab.engines.newton, "CHUNK_BYTES", 8 * 3 * width * S * 4)
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(3))
    x = torch.randn(3, 33, D)
    lay = rnnlab.engines.linearize.layout(cell, h0)
    assert [b - a for a, b in Newton._bounds(3, 33, lay, x, True)] == [8, 8, 8, 8, 1]
    lengths = torch.tensor([33, 16, 0])
    engine = Newton(compile=True)
    assert_agrees(cell, engine, x, h0, lengths, "compiled")
    assert engine.stats["compiled"] and engine.stats["converged"]


def test_warm_start_from_the_solution_needs_no_iteration():
    torch.manual_seed(0)
    cell = cells.get("paralstm", D, H)
    x = torch.randn(2, 40, D)
    seq = rnnlab.engines.Sequential()
    states = []  # every step's state, from the sequential engine
    h = cell.init_state(2)
    for t in range(40):
        _, h = seq(cell, x[:, t:t + 1], h)
        states.append(h)
    guess = tuple(torch.stack(leaf, dim=1) for leaf in zip(*states))  # each (B, T, H)
    engine = Newton()
    y, _ = engine.solve(cell, x, guess=guess)
    assert engine.stats["iterations"] == 0
    assert_close(y, seq(cell, x)[0], what="warm-started outputs")
    with pytest.raises(ValueError, match=r"guess: expected every step's state"):
        engine.solve(cell, x, guess=guess[0])
    engine(cell, x)  # the guess is used once only
    assert engine.stats["iterations"] > 0


@pytest.mark.parametrize("name", ["paralstm", "gru"])
def test_chunked_linearization_matches(monkeypatch, name):
    monkeypatch.setattr(rnnlab.engines.newton, "EAGER_CHUNK_ELEMS", 150)  # 4-8 steps, one short
    check_agree(name, 37)


# ---- compile, sweeps, buffers --------------------------------------------------------------

def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    cell = cells.get("paralstm", D, H)
    x = torch.randn(2, 20, D)
    engine = Newton(compile=True)
    with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: no compiler"):
        y, _ = rnnlab.Recurrent(cell, engine=engine)(x)
    assert not engine.stats["compiled"]
    assert_close(y, rnnlab.Recurrent(cell, engine="sequential")(x)[0], what="eager fallback")


@pytest.mark.parametrize("name", ["paragru", "paralstm", "slstm"])
def test_torch_sweeps_without_numba(monkeypatch, name):
    """The sweeps' torch path (GPUs, or no numba): linear_scan / matrix_scan on gathered
    blocks, and the flipped adjoint."""
    from rnnlab.ops import block
    monkeypatch.setattr(block, "USE_NUMBA", False)
    check_agree(name, 37)


def test_retain_graph_backward_twice_and_reused_buffers():
    """A second backward through a retained graph gives the same gradients, also after the
    engine ran (and reused its buffers for) another batch in between."""
    torch.manual_seed(0)
    cell = cells.get("paralstm", D, H)
    engine = Newton()
    x = torch.randn(2, 30, D, requires_grad=True)
    y, _ = rnnlab.Recurrent(cell, engine=engine)(x)
    (g1,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    y2, _ = rnnlab.Recurrent(cell, engine=engine)(torch.randn(2, 30, D))
    y2.sum().backward()
    (g2,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g1, g2)


def test_headwise_projection_gradcheck():
    """ParaGRU/ParaLSTM's input projection (a custom autograd function) against finite
    differences, and equal to its einsum definition."""
    from rnnlab.cells.paragru import HeadwiseLinear, _HeadwiseProjection
    torch.manual_seed(0)
    proj = HeadwiseLinear(4, 6, 3, 2, dtype=torch.float64)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = proj.weight.detach().requires_grad_()
    b = torch.randn_like(proj.bias).requires_grad_()
    assert torch.autograd.gradcheck(_HeadwiseProjection.apply, (x, w, b))
    ref = torch.einsum("...nd,ngkd->...gnk", x.unflatten(-1, (2, 2)), w).flatten(-3) + b
    assert torch.allclose(_HeadwiseProjection.apply(x, w, b), ref)


@pytest.mark.parametrize("name", ["slstm", "m2rnn", "gru"])
def test_padded_final_state_is_as_accurate_as_the_unpadded_one(name):
    """Issue 12: past a sequence's end the solve carries its iterate h_{n-1} forward unchanged,
    one Newton correction behind the z_{n-1} = f(h_{n-2}) an unpadded run returns; the final
    state of a padded sequence is that z, the same as for the sequence cut to its length, up
    to rounding (it was off by up to the stopping residual: sLSTM, T=44, lengths=[27])."""
    for seed in range(10):
        torch.manual_seed(seed)
        cell = cells.get(name, D, 7)
        x = torch.randn(1, 44, D)
        h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(1))
        n = int(torch.randint(1, 44, (1,)))
        _, h_padded = Newton()(cell, x, h0, lengths=torch.tensor([n]))
        _, h_cut = Newton()(cell, x[:, :n], h0)
        assert rel_err(h_padded, h_cut) <= 1e-6, f"{name}, seed {seed}, length {n}"


def test_every_state_leaf_meets_the_tolerance():
    """The stopping residual is relative per state leaf: sLSTM's h (~0.1) sits beside c and n
    (~10), so a residual relative to the whole state left h, and the gradient of weight_hh
    (which reads it), 1e-4 off at the default tol while the stats said converged."""
    torch.manual_seed(1481223554)
    cell = cells.get("slstm", 6, 3)
    x = torch.randn(1, 14, 6)
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(1))
    grads = []
    for engine in ("sequential", Newton()):
        y, h = rnnlab.Recurrent(cell, engine=engine)(x, h0)
        grads.append(torch.autograd.grad(y.sum() + sq_norm(h), cell.weight_hh)[0])
    assert_close(grads[1], grads[0], what="weight_hh gradient")


def test_the_structure_probe_leaves_the_global_rng_alone():
    """The first call per cell probes its declared structure at a random state: from a private
    generator, so a seeded run draws the same numbers after it (dropout, sampling) as on any
    other engine, or in torch.nn."""
    cell = cells.get("gru", D, H)
    x = torch.randn(2, 5, D)
    torch.manual_seed(0)
    Newton()(cell, x)
    after_newton = torch.rand(4)
    torch.manual_seed(0)
    rnnlab.engines.Sequential()(cell, x)
    assert torch.equal(after_newton, torch.rand(4))


@pytest.mark.parametrize("option", [dict(tol=math.inf), dict(tol=float("nan")), dict(tol=True),
                                    dict(elk_sigma2=math.inf), dict(dense_budget_bytes=-1),
                                    dict(dense_budget_bytes=1.5), dict(max_iters=True)])
def test_newton_refuses_meaningless_options(option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"Newton: {name} must be"):
        Newton(**option)


def test_newton_refuses_a_sequential_only_cell():
    """A cell whose step is defined only on the states its recurrence reaches (the quantum
    RNN renormalises amplitudes) declares ``sequential_only``; Newton, which iterates on
    guessed trajectories, refuses it with the engines' usual error."""
    cell = cells.get("quantum_rnn", 3, 2)
    assert cell.sequential_only and not Newton().supports(cell)
    with pytest.raises(ValueError, match="'newton' cannot run QuantumRNN"):
        rnnlab.Recurrent(cell, engine="newton")(torch.randn(1, 4, 3))
