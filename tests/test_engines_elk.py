"""ELK damping of the Newton engine: each step is the exact Levenberg-Marquardt step (against a
brute-force dense solve), the solution and every gradient equal the sequential engine's, and it
converges where plain Newton overflows."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab import cells
from rnnlab.cells import Diagonal, map_state
from rnnlab.engines import Newton

from .helpers import assert_agrees, assert_close
from .test_engines_newton import D, H, HeadCell


def dense_lm_step(A, r, src, sigma2):
    """The Levenberg-Marquardt step by brute force: argmin ||D delta - r||^2 + ||delta||^2 /
    sigma2 with D the unit lower block-bidiagonal operator of the linearization."""
    T, B, M, S = A.shape
    out = torch.empty_like(r)
    for b in range(B):
        D = torch.eye(T * S, dtype=A.dtype)
        for t in range(1, T):
            J = torch.zeros(S, S, dtype=A.dtype)
            for m in range(M):
                J[torch.arange(S), src[m]] += A[t, b, m]
            D[t * S:(t + 1) * S, (t - 1) * S:t * S] = -J
        lhs = D.T @ D + torch.eye(T * S, dtype=A.dtype) / sigma2
        out[:, b] = torch.linalg.solve(lhs, D.T @ r[:, b].reshape(-1)).view(T, S)
    return out


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("make", [Diagonal, rnnlab.cells.Dense, lambda: rnnlab.cells.Block(2),
                                  lambda: rnnlab.cells.Heads(2, 3)],
                         ids=["diagonal", "dense", "block2", "heads"])
def test_elk_step_is_the_exact_levenberg_marquardt_step(monkeypatch, use_numba, make):
    from rnnlab.engines import elk, linearize
    if use_numba and elk._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(elk, "USE_NUMBA", use_numba)

    class Probe(rnnlab.cells.Cell):
        structure = make()

        def state_shapes(self):
            return ((6,), (6,)) if isinstance(self.structure, (rnnlab.cells.Block,
                                                               rnnlab.cells.Heads)) else ((6,),)

    torch.manual_seed(0)
    cell = Probe(2, 6)
    lay = linearize.layout(cell, cell.init_state(2))
    A = 0.8 * torch.randn(9, 2, lay.width, lay.size, dtype=torch.float64)
    r = torch.randn(9, 2, lay.size, dtype=torch.float64)
    for sigma2 in (0.1, 3.0, 1e4):
        step = elk.elk_step(A, r, lay.members(), lay.within(), sigma2)
        assert_close(step, dense_lm_step(A, r, lay.src(), sigma2), torch.float64, "ELK step")


@pytest.mark.parametrize("damping", ["elk", "quasi-elk"])
@pytest.mark.parametrize("make", [lambda: cells.get("paragru", D, H),
                                  lambda: cells.get("paralstm", D, H),
                                  lambda: cells.get("gru", D, H), lambda: HeadCell(D)],
                         ids=["paragru", "paralstm", "gru", "heads"])
def test_elk_equals_sequential(make, damping):
    torch.manual_seed(0)
    cell = make()
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(3))
    x = torch.randn(3, 63, D)
    lengths = torch.tensor([63, 31, 0])
    engine = Newton(damping=damping, max_iters=200)
    assert_agrees(cell, engine, x, h0, lengths, damping)
    assert engine.stats["converged"]


def test_elk_converges_where_newton_blows_up():
    """A tanh RNN with recurrent weights x3 from a zero guess: the linearization at 0 is
    unstable along time, so Newton's first linear solve overflows; ELK's bounded steps reach
    the sequential solution (outputs and gradients)."""
    torch.manual_seed(0)
    cell = cells.get("rnn_tanh", D, H)
    with torch.no_grad():
        cell.weight_hh.mul_(3)
    x = torch.randn(2, 300, D)
    with pytest.raises(rnnlab.ConvergenceError, match="NaN or inf"):
        rnnlab.Recurrent(cell, engine=Newton(init="zeros"))(x)
    engine = Newton(init="zeros", damping="elk", max_iters=100)
    h0 = cell.init_state(2)
    assert_agrees(cell, engine, x, h0, None, "ELK")
    assert engine.stats["converged"] and engine.stats["iterations"] > 4
