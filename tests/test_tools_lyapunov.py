"""rnnlab.tools.lyapunov: LLE by Benettin's method against exact values and a dense-Jacobian
reference; the Newton iteration predictor's shape."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacrev

from rnnlab.cells import Cell, Dense, Diagonal, as_tuple, get
from rnnlab.tools import (LyapunovEstimate, largest_lyapunov_exponent,
                          predicted_newton_iterations)


class DiagonalLinear(Cell):
    """h -> a * h + u with a fixed vector a: LLE = log max|a|."""
    structure = Diagonal()

    def __init__(self, a: torch.Tensor):
        super().__init__(a.numel(), a.numel())
        self.register_buffer("a", a)

    def step(self, u_t, h):
        return self.a * h + u_t


class DenseLinear(Cell):
    """h -> W h + u with a fixed matrix W: LLE = log of W's spectral radius."""
    structure = Dense()

    def __init__(self, w: torch.Tensor):
        super().__init__(w.shape[0], w.shape[0])
        self.register_buffer("w", w)

    def step(self, u_t, h):
        return h @ self.w.T + u_t  # (B, H) @ (H, H)


class SplitComplex(Cell):
    """Complex state, non-holomorphic step h -> 0.6 Re h + 0.3 i Im h + u: as a map of R^2 it is
    diag(0.6, 0.3), so LLE = log 0.6 (its holomorphic part alone would give log 0.45)."""
    structure = Diagonal()

    def step(self, u_t, h):
        return torch.complex(0.6 * h.real, 0.3 * h.imag) + u_t

    def init_state(self, batch, dtype=torch.float32, device=None):
        return torch.zeros(batch, self.hidden_size, dtype=torch.complex64, device=device)


def scaled_orthogonal(H: int, rho: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(H, H, generator=g, dtype=dtype))
    return rho * q  # (H, H), every singular value and |eigenvalue| equal to rho


def dense_reference(cell: Cell, x: torch.Tensor, burn_in: int, v0: torch.Tensor) -> float:
    """Benettin with full Jacobians of the flattened state (jacrev), one sequence ``x: (1, T, D)``,
    fp64, from the flat tangent ``v0``: an independent oracle for the JVP/leaf bookkeeping."""
    u = cell.project(x).detach()  # (1, T, P)
    leaves = as_tuple(cell.init_state(1, x.dtype))
    shapes, sizes = [h.shape for h in leaves], [h.numel() for h in leaves]
    is_tuple = len(leaves) > 1

    def flat_step(u_t, flat):
        parts = tuple(p.view(s) for p, s in zip(flat.split(sizes), shapes))
        return torch.cat([h.reshape(-1) for h in as_tuple(
            cell.step(u_t, parts if is_tuple else parts[0]))])

    flat = torch.cat([h.reshape(-1) for h in leaves])
    v, total = v0 / v0.norm(), 0.0
    for t in range(x.shape[1]):
        jac = jacrev(flat_step, argnums=1)(u[:, t], flat).detach()  # (N, N)
        flat, v = flat_step(u[:, t], flat).detach(), jac @ v
        n = v.norm()
        total += math.log(n) if t >= burn_in else 0.0
        v = v / n
    return total / (x.shape[1] - burn_in)


def same_draw(cell: Cell, batch: int, seed: int) -> list:
    """The flat initial tangent of each sequence as largest_lyapunov_exponent draws it from
    ``Generator().manual_seed(seed)``: one randn per state leaf ``(B, ...)``, in order."""
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(h.shape, dtype=h.dtype, generator=g)
          for h in as_tuple(cell.init_state(batch, torch.float64))]
    return [torch.cat([v[b].reshape(-1) for v in vs]) for b in range(batch)]


# ---- exact values on linear cells ----------------------------------------------------------

@pytest.mark.parametrize("renorm_every", [1, 7])
def test_diagonal_contraction_is_log_max_abs_a(renorm_every):
    cell = DiagonalLinear(torch.tensor([0.5, -0.45, 0.3, -0.1, 0.0]))
    x = torch.randn(3, 300, 5, generator=torch.Generator().manual_seed(0))
    est = largest_lyapunov_exponent(cell, x, burn_in=100, renorm_every=renorm_every)
    assert isinstance(est, LyapunovEstimate)
    assert est.steps == 200 and est.per_sequence.shape == (3,)
    assert abs(est.exponent - math.log(0.5)) < 1e-3
    assert torch.allclose(est.per_sequence, torch.full((3,), math.log(0.5), dtype=torch.float64),
                          atol=1e-3)


def test_initial_state_and_generator():
    cell = DiagonalLinear(torch.tensor([0.5, 0.2, 0.9]))
    x = torch.randn(2, 40, 3)
    h0 = torch.randn(2, 3)
    a = largest_lyapunov_exponent(cell, x, h0, generator=torch.Generator().manual_seed(3))
    b = largest_lyapunov_exponent(cell, x, h0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.per_sequence, b.per_sequence)
    assert not a.per_sequence.requires_grad


def test_zero_jacobian_gives_minus_inf():
    est = largest_lyapunov_exponent(DiagonalLinear(torch.zeros(4)), torch.randn(2, 5, 4))
    assert est.exponent == -math.inf
    assert torch.isneginf(est.per_sequence).all()


@pytest.mark.parametrize("rho", [0.8, 1.1])
def test_dense_scaled_orthogonal_is_log_rho(rho):
    cell = DenseLinear(scaled_orthogonal(9, rho, seed=1))
    x = torch.randn(2, 50, 9, dtype=torch.float64)
    est = largest_lyapunov_exponent(cell, x)
    assert abs(est.exponent - math.log(rho)) < 1e-9  # ||rho Q v|| = rho ||v|| at every step


@pytest.mark.parametrize("rho", [0.8, 1.05])
def test_dense_non_normal_converges_to_log_rho(rho):
    """W = P (rho Q) P^-1: all |eigenvalues| = rho but ||W v|| != rho ||v||; the estimate must
    converge over a long T (bias ~ log cond(P) / T)."""
    g = torch.Generator().manual_seed(2)
    p = torch.eye(9, dtype=torch.float64) + 0.3 * torch.randn(9, 9, generator=g,
                                                              dtype=torch.float64) / 3
    w = p @ scaled_orthogonal(9, rho, seed=4) @ torch.linalg.inv(p)
    x = torch.randn(2, 800, 9, dtype=torch.float64, generator=g)
    est = largest_lyapunov_exponent(DenseLinear(w), x, burn_in=50, renorm_every=5)
    assert abs(est.exponent - math.log(rho)) < 0.02


def test_complex_state_counts_real_and_imaginary_parts():
    x = torch.randn(2, 120, 4)
    est = largest_lyapunov_exponent(SplitComplex(4, 4), x, burn_in=40)
    assert abs(est.exponent - math.log(0.6)) < 1e-4


def test_lru_complex_diagonal_is_log_max_abs_lambda():
    cell = get("lru", 5, 6, state_size=4)
    with torch.no_grad():
        cell.nu_log.copy_(torch.log(-torch.log(torch.tensor([0.5, 0.3, 0.2, 0.1]))))
    est = largest_lyapunov_exponent(cell, torch.randn(2, 150, 5), burn_in=50)
    assert abs(est.exponent - math.log(0.5)) < 1e-4


# ---- nonlinear cells -------------------------------------------------------------------------

def test_gru_at_init_is_predictable():
    torch.manual_seed(0)
    est = largest_lyapunov_exponent(get("gru", 8, 32), torch.randn(4, 200, 8), burn_in=50)
    assert est.exponent < 0 and (est.per_sequence < 0).all()


def test_rnn_tanh_scaled_up_is_chaotic():
    torch.manual_seed(0)
    cell = get("rnn_tanh", 8, 48)
    x = torch.randn(4, 200, 8)
    assert largest_lyapunov_exponent(cell, x, burn_in=50).exponent < 0
    with torch.no_grad():
        cell.weight_hh.mul_(20)
    est = largest_lyapunov_exponent(cell, x, burn_in=50)
    assert est.exponent > 0 and (est.per_sequence > 0).all()


@pytest.mark.parametrize("name,kwargs", [("lstm", {}), ("lstm", {"proj_size": 3}), ("gru", {})])
def test_matches_dense_jacobian_reference(name, kwargs):
    """Tuple states (LSTM's (h, c), of different widths with proj_size) are one flat vector."""
    torch.manual_seed(5)
    cell = get(name, 4, 6, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        cell.weight_hh.mul_(3)
    x = torch.randn(2, 80, 4, dtype=torch.float64)
    est = largest_lyapunov_exponent(cell, x, burn_in=30, renorm_every=4,
                                    generator=torch.Generator().manual_seed(9))
    for b, v0 in enumerate(same_draw(cell, 2, seed=9)):
        ref = dense_reference(cell, x[b:b + 1], 30, v0)
        assert abs(float(est.per_sequence[b]) - ref) < 1e-10, (b, float(est.per_sequence[b]), ref)


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,word", [
    ({"x": torch.randn(20, 5)}, ValueError, "x"),
    ({"x": torch.randn(2, 20, 4)}, ValueError, "x"),
    ({"x": torch.randn(2, 0, 5)}, ValueError, "x"),
    ({"x": torch.ones(2, 20, 5, dtype=torch.long)}, TypeError, "x"),
    ({"x": [[0.0]]}, TypeError, "x"),
    ({"burn_in": 20}, ValueError, "burn_in"),
    ({"burn_in": -1}, ValueError, "burn_in"),
    ({"renorm_every": 0}, ValueError, "renorm_every"),
    ({"initial_state": torch.zeros(3, 5)}, ValueError, "initial_state"),
    ({"initial_state": torch.zeros(2, 5, dtype=torch.long)}, TypeError, "initial_state"),
    ({"cell": torch.nn.Linear(5, 5)}, TypeError, "cell"),
])
def test_errors_name_the_argument(kwargs, exc, word):
    args = {"cell": DiagonalLinear(torch.full((5,), 0.5)), "x": torch.randn(2, 20, 5)}
    args.update(kwargs)
    with pytest.raises(exc, match=rf"\b{word}\b"):
        largest_lyapunov_exponent(**args)


def test_tangent_overflow_names_renorm_every():
    cell = DenseLinear(scaled_orthogonal(4, 10.0, seed=0, dtype=torch.float32))
    x = torch.zeros(1, 60, 4)  # the state stays 0; only the tangent grows (10^60 > fp32 max)
    with pytest.raises(FloatingPointError, match="renorm_every"):
        largest_lyapunov_exponent(cell, x, renorm_every=60)
    assert largest_lyapunov_exponent(cell, x).exponent == pytest.approx(math.log(10.0), abs=1e-5)


@pytest.mark.parametrize("kwargs,word", [
    ({"exponent": float("nan")}, "exponent"), ({"exponent": math.inf}, "exponent"),
    ({"steps": 0}, "steps"), ({"steps": 2.0}, "steps"),
    ({"tol": 0.0}, "tol"), ({"tol": 1.0}, "tol"),
])
def test_predictor_errors_name_the_argument(kwargs, word):
    args = {"exponent": 0.1, "steps": 100, "tol": 1e-5}
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        predicted_newton_iterations(**args)


# ---- the Newton iteration predictor ------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.floats(1e-6, 5.0), st.integers(1, 100_000), st.integers(1, 100_000),
       st.sampled_from([1e-3, 1e-5, 1e-8]))
def test_predictor_monotone_in_T_for_positive_lle(lle, t1, t2, tol):
    lo, hi = sorted((t1, t2))
    assert predicted_newton_iterations(lle, lo, tol) <= predicted_newton_iterations(lle, hi, tol)
    assert 1 <= predicted_newton_iterations(lle, hi, tol) <= hi


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.floats(-50.0, 0.0), st.just(-math.inf)), st.integers(1, 10 ** 9))
def test_predictor_bounded_for_negative_lle(lle, T):
    assert 1 <= predicted_newton_iterations(lle, T) <= 4  # k0 = ceil(log2(log(1e5))) = 4


def test_predictor_grows_with_T_when_chaotic():
    assert [predicted_newton_iterations(0.01, T) for T in (10, 100, 1000)] == [5, 11, 1000]
    assert predicted_newton_iterations(0.5, 3) == 3  # never more than T
    assert predicted_newton_iterations(50.0, 10 ** 9) == 10 ** 9  # no overflow
    est = LyapunovEstimate(exponent=-0.4, per_sequence=torch.tensor([-0.4]), steps=10)
    assert predicted_newton_iterations(est, 4096) == predicted_newton_iterations(-0.4, 4096) == 4


def test_predictor_against_the_newton_engine():
    """rnnlab's Newton engine: a predictable GRU needs no more than predicted at T = 64; a chaotic
    rnn_tanh (weight_hh x5) needs more as T grows, at most the prediction and not 3x below it."""
    from rnnlab.engines.newton import Newton
    torch.manual_seed(0)
    x = torch.randn(2, 200, 8)
    gru, tanh = get("gru", 8, 32), get("rnn_tanh", 8, 32)
    with torch.no_grad():
        tanh.weight_hh.mul_(5)
    measured = {}
    for name, cell, T in (("gru", gru, 64), ("tanh", tanh, 16), ("tanh", tanh, 32)):
        engine = Newton()
        with torch.no_grad():
            engine(cell, x[:, :T])
        measured[name, T] = engine.stats["iterations"]
    assert measured["gru", 64] <= predicted_newton_iterations(
        largest_lyapunov_exponent(gru, x, burn_in=50), 64)
    lle = largest_lyapunov_exponent(tanh, x, burn_in=50).exponent
    assert lle > 0
    assert measured["tanh", 16] < measured["tanh", 32]
    for T in (16, 32):
        assert measured["tanh", T] <= predicted_newton_iterations(lle, T) <= 3 * measured["tanh", T]
