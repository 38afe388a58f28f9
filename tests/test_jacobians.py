"""Closed-form step Jacobians (a cell's optional ``jacobian`` hook): equal to torch.func's at every
branch of the step, used by Newton with the same outputs, state and gradients as the sequential
engine, and a wrong hook is refused by the structure probe."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab import cells
from rnnlab.cells import map_state
from rnnlab.cells.slstm import SLSTM
from rnnlab.engines import Newton
from rnnlab.engines import linearize as L

from .helpers import assert_agrees

D, H, HEADS, B = 5, 6, 3, 9  # two channels per head: odd sizes everywhere else


def slstm(seed=0, **options) -> SLSTM:
    torch.manual_seed(seed)
    cell = cells.get("slstm", D, H, heads=HEADS, **options).double()
    with torch.no_grad():
        cell.weight_hh.normal_()  # R = 0 at init would hide the h columns
    return cell


def dense(A: torch.Tensor, lay) -> torch.Tensor:
    """Columns ``(N, M, S)`` -> the full Jacobians ``(N, S, S)`` (zero outside the groups)."""
    N, M, S = A.shape
    J = A.new_zeros(N, S, S)
    rows = torch.arange(S).expand(M, S)
    J[:, rows, lay.src()] = A
    return J


def reference(cell, u, state) -> torch.Tensor:
    """torch.func's per-sample Jacobians of the flat step: ``(N, S, S)``."""
    lay = L.layout(cell, state)

    def one(u1, v1):  # one sample: u1 (P,), v1 (S,) -> (S,)
        return L.flatten(cell.step(u1[None], L.unflatten(v1[None], lay)), lay)[0]

    return torch.func.vmap(torch.func.jacfwd(one, argnums=1))(u, L.flatten(state, lay))


def assert_closed_form_exact(cell, u, state):
    lay = L.layout(cell, state)
    h = L.flatten(state, lay)
    with torch.no_grad():
        f, A = L.linearize(cell, u, h, lay)
        f_jvp, A_jvp = L.linearize(cell, u, h, lay, jvp=True)
        J = reference(cell, u, state)
    torch.testing.assert_close(f, f_jvp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(A, A_jvp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense(A, lay), J, rtol=1e-12, atol=1e-12)


def random_state(gen, scale=2.0):
    return tuple(scale * torch.randn(B, H, generator=gen, dtype=torch.float64) for _ in range(4))


def test_slstm_closed_form_equals_torch_func_on_random_states():
    cell, gen = slstm(), torch.Generator().manual_seed(1)
    for _ in range(3):
        u = torch.randn(B, 4 * H, generator=gen, dtype=torch.float64)
        assert_closed_form_exact(cell, u, random_state(gen))


@pytest.mark.parametrize("name,options", [("paragru", {}), ("paralstm", {}),
                                          ("paragru", {"a_max": 0.5}),
                                          ("paralstm", {"a_max": 0.5})])
def test_diagonal_and_block_closed_forms_equal_torch_func(name, options):
    torch.manual_seed(7)
    cell = cells.get(name, D, H, **options).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.normal_()  # beyond a_max too: the clamp is on the parameters, not the state
    gen = torch.Generator().manual_seed(8)
    state = map_state(lambda z: 2.0 * torch.randn(z.shape, generator=gen, dtype=z.dtype),
                      cell.init_state(B, dtype=torch.float64))
    u = torch.randn(B, 3 * H, generator=gen, dtype=torch.float64)
    assert_closed_form_exact(cell, u, state)


def test_slstm_closed_form_at_every_branch():
    """Rows with n == 0 (empty memory: m_t = i~, f' capped, n_t = 1 at clamp(min=1)'s bound),
    entries where i~ > log f + m, where i~ < log f + m (f' = exp(0), at clamp(max=0)'s bound),
    and exact ties of the maximum (autograd splits the derivative evenly)."""
    cell, gen = slstm(seed=2), torch.Generator().manual_seed(3)
    with torch.no_grad():
        cell.weight_hh[0].zero_()  # i~ = u_i exactly, so a tie can be built exactly
    h, c, n, m = random_state(gen)
    n[:3] = 0.0  # empty memory
    u = torch.randn(B, 4 * H, generator=gen, dtype=torch.float64)
    f_pre = (u + cell.recur(h)).detach().chunk(4, -1)[1]
    b = F.logsigmoid(f_pre) + m  # what the step compares i~ with
    tie, above = torch.zeros(B, H, dtype=torch.bool), torch.zeros(B, H, dtype=torch.bool)
    tie[3:6, ::2], above[6:, 1::2] = True, True
    u_i = torch.where(tie, b, torch.where(above, b + 1.0, b - 1.0))
    u = torch.cat([u_i, u[:, H:]], -1)
    i_pre = (u + cell.recur(h)).detach().chunk(4, -1)[0]
    assert bool((i_pre[3:6, ::2] == b[3:6, ::2]).all())  # the ties are exact
    assert_closed_form_exact(cell, u, (h, c, n, m))


def test_slstm_closed_form_at_the_reachable_states():
    """Along a real trajectory from the zero state (n >= 1, the first step at n == 0)."""
    cell, gen = slstm(seed=4), torch.Generator().manual_seed(5)
    state = cell.init_state(B, dtype=torch.float64)
    for _ in range(4):
        u = torch.randn(B, 4 * H, generator=gen, dtype=torch.float64)
        assert_closed_form_exact(cell, u, state)
        state = cell.step(u, state)


@pytest.mark.parametrize("name", ["slstm", "paragru", "paralstm"])
@pytest.mark.parametrize("T", [1, 13, 101])
def test_newton_with_the_closed_form_equals_sequential(name, T, monkeypatch):
    torch.manual_seed(6)
    cell = cells.get(name, D, H, **({"heads": HEADS} if name == "slstm" else {}))
    if name == "slstm":
        with torch.no_grad():
            cell.weight_hh.normal_(0.0, 0.3)
    calls, real = [], type(cell).jacobian
    monkeypatch.setattr(type(cell), "jacobian",
                        lambda self, *a: calls.append(1) or real(self, *a))
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(3))
    if name == "slstm":
        h0[2].abs_().add_(1.0)  # a reachable normaliser (n >= 1)
    x = torch.randn(3, T, D)
    engine = Newton(tol=1e-6)
    assert_agrees(cell, engine, x, h0, torch.tensor([T, max(T // 2, 1), 0]), name)
    assert engine.stats["converged"] and calls  # solved through the hook


class WrongJacobian(SLSTM):
    """An sLSTM whose closed form forgets that m depends on m (its diagonal block)."""

    def jacobian(self, u_t, state):
        new, cols = super().jacobian(u_t, state)
        d = self.head_dim
        m_cols = cols[3].clone()
        m_cols[:, 3 * d:] = 0.0
        return new, cols[:3] + (m_cols,)


class WrongLayout(SLSTM):
    """An sLSTM whose closed form gives full (H, H) blocks instead of the head columns."""

    def jacobian(self, u_t, state):
        new, cols = super().jacobian(u_t, state)
        return new, tuple(torch.cat([a, a[:, :1]], 1) for a in cols)


@pytest.mark.parametrize("liar,match", [
    (WrongJacobian, r"WrongJacobian\.jacobian: its closed-form Jacobian differs from torch\.func"),
    (WrongLayout, r"WrongLayout\.jacobian: expected per state leaf columns \(B, 8, leaf size\)"),
])
def test_the_probe_refuses_a_wrong_closed_form(liar, match):
    layer = rnnlab.Recurrent(liar(D, H, heads=HEADS), engine="newton")
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(2, 4, D))
