"""ParaGRU, ParaLSTM, sLSTM and M²RNN against their papers' equations, written out here again
independently of the cells (dense matrices, loops over heads), one step at a time in fp64; their
Jacobians against the analytic forms; their declared structures with non-trivial parameters."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import rnnlab
import rnnlab.cells.m2rnn  # noqa: F401  (importing registers the cells)
import rnnlab.cells.paragru  # noqa: F401
import rnnlab.cells.paralstm  # noqa: F401
import rnnlab.cells.slstm  # noqa: F401
from rnnlab import cells
from rnnlab.cells import Block, Diagonal, Heads
from rnnlab.testing.properties import _allowed, _jacobian

from .helpers import assert_close

D, H = 6, 8
NEW = ["paragru", "paralstm", "slstm", "m2rnn"]
f64 = torch.float64


def make(name, seed=0, **kw):
    """The cell in fp64 with its parameters randomized (larger than their init)."""
    torch.manual_seed(seed)
    cell = cells.get(name, D, H, **kw).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(0.7 * torch.randn_like(p))
    return cell


def rand_state(cell, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = cell.init_state(batch, f64)
    leaves = tuple(torch.randn(t.shape, generator=g, dtype=f64) for t in rnnlab.cells.as_tuple(h))
    return leaves if isinstance(h, tuple) else leaves[0]


def dense_headwise(proj, D_in, H_out):
    """The block-diagonal multi-head projection as a dense (G*H, D) matrix, built by hand."""
    n, G, hh, dh = proj.weight.shape
    W = torch.zeros(G * H_out, D_in, dtype=proj.weight.dtype)
    for g in range(G):
        for k in range(n):
            W[g * H_out + k * hh:g * H_out + (k + 1) * hh, k * dh:(k + 1) * dh] = proj.weight[k, g]
    return W


def check_steps(cell, reference, state, steps=4, batch=3):
    """``cell.step`` and ``reference(x_t, state) -> (state, y_t)`` agree for a few random steps."""
    x = torch.randn(batch, steps, D, dtype=f64)
    u = cell.project(x)
    ours, ref = state, state
    for t in range(steps):
        ours = cell.step(u[:, t], ours)
        ref, y_ref = reference(x[:, t], ref)
        assert_close(ours, ref, f64, f"{type(cell).__name__} state at step {t}")
        assert_close(cell.readout(ours, u[:, t]), y_ref, f64, f"{type(cell).__name__} output")


# ---- ParaGRU -----------------------------------------------------------------------------------

@pytest.mark.parametrize("heads, a_max", [(2, None), (1, 0.5)])
def test_paragru_step_is_the_paper_equations(heads, a_max):
    cell = make("paragru", heads=heads, a_max=a_max)
    W, b = dense_headwise(cell.proj, D, H), cell.proj.bias
    a = cell.a if a_max is None else cell.a.clamp(-a_max, a_max)

    def reference(x, h):
        pz, pr, ph = (x @ W.T + b).split(H, dim=-1)
        z = torch.sigmoid(a[0] * h + pz)
        r = torch.sigmoid(a[1] * h + pr)
        h_hat = torch.tanh(a[2] * (h * r) + ph)
        h = (1 - z) * h + z * h_hat
        return h, h

    check_steps(cell, reference, rand_state(cell))


def test_paragru_jacobian_is_the_analytic_diagonal():
    cell = make("paragru")
    h = rand_state(cell, batch=1)
    u = cell.project(torch.randn(1, 1, D, dtype=f64))[:, 0]
    J = _jacobian(cell, u, h)
    a_z, a_r, a_h = cell.a
    pz, pr, ph = u.split(H, dim=-1)
    z, r = torch.sigmoid(a_z * h + pz), torch.sigmoid(a_r * h + pr)
    h_hat = torch.tanh(a_h * (h * r) + ph)
    dz, dr, dh_hat = z * (1 - z), r * (1 - r), 1 - h_hat ** 2
    formula = (1 - z) + (h_hat - h) * dz * a_z + z * dh_hat * a_h * (r + h * dr * a_r)
    assert_close(torch.diagonal(J), formula[0], f64, "ParaGRU diagonal Jacobian")
    assert (J - torch.diag(torch.diagonal(J))).abs().max() == 0
    assert cell.structure == Diagonal()


def test_paragru_init_and_heads():
    cell = cells.get("paragru", D, H)  # D, H even: ParaRNN's default of 2 heads
    assert cell.heads == 2 and cells.get("paragru", 5, 7).heads == 1
    ramp = torch.linspace(1.0, 4.0, H // 2)
    assert torch.allclose(cell.proj.bias[:H], -torch.cat([ramp, ramp]))
    assert (cell.proj.bias[H:] == 0).all()
    bound = (6.0 / (D // 2 + H // 2)) ** 0.5
    assert cell.proj.weight.abs().max() <= bound and cell.proj.weight.shape == (2, 3, 4, 3)
    # Block-diagonal: head 1's inputs never reach head 0's channels.
    x = torch.randn(2, 3, D)
    x2 = x.clone()
    x2[..., D // 2:] += 1.0
    diff = (cell.project(x) - cell.project(x2)).unflatten(-1, (3, 2, H // 2))  # (B, T, G, n, d)
    assert (diff[..., 0, :] == 0).all() and (diff[..., 1, :] != 0).all()


# ---- ParaLSTM ----------------------------------------------------------------------------------

@pytest.mark.parametrize("heads, a_max", [(2, None), (1, 0.5)])
def test_paralstm_step_is_the_paper_equations(heads, a_max):
    cell = make("paralstm", heads=heads, a_max=a_max)
    W, b = dense_headwise(cell.proj, D, H), cell.proj.bias
    a, C = cell.a, cell.peephole
    if a_max is not None:
        a, C = a.clamp(-a_max, a_max), C.clamp(-a_max, a_max)
    (a_f, a_c, a_o), (C_f, C_o) = a, C

    def reference(x, state):
        h, c = state
        pf, pc, po = (x @ W.T + b).split(H, dim=-1)
        f = torch.sigmoid(a_f * h + C_f * c + pf)
        c = f * c + (1 - f) * torch.tanh(a_c * h + pc)
        o = torch.sigmoid(a_o * h + C_o * c + po)
        h = o * torch.tanh(c)
        return (h, c), h

    check_steps(cell, reference, rand_state(cell))


def test_paralstm_jacobian_is_the_analytic_2x2_blocks():
    cell = make("paralstm")
    h, c = rand_state(cell, batch=1)
    u = cell.project(torch.randn(1, 1, D, dtype=f64))[:, 0]
    J = _jacobian(cell, u, (h, c))  # (2H, 2H), leaves (h, c)
    (a_f, a_c, a_o), (C_f, C_o) = cell.a, cell.peephole
    pf, pc, po = u.split(H, dim=-1)
    f = torch.sigmoid(a_f * h + C_f * c + pf)
    c_t = torch.tanh(a_c * h + pc)
    c_new = f * c + (1 - f) * c_t
    o = torch.sigmoid(a_o * h + C_o * c_new + po)
    df, dc_t, do, dtanh = f * (1 - f), 1 - c_t ** 2, o * (1 - o), 1 - torch.tanh(c_new) ** 2
    dc_dh = (c - c_t) * df * a_f + (1 - f) * dc_t * a_c
    dc_dc = f + (c - c_t) * df * C_f
    dh_dh = do * (a_o + C_o * dc_dh) * torch.tanh(c_new) + o * dtanh * dc_dh
    dh_dc = do * C_o * dc_dc * torch.tanh(c_new) + o * dtanh * dc_dc
    blocks = {(0, 0): dh_dh, (0, 1): dh_dc, (1, 0): dc_dh, (1, 1): dc_dc}  # (out, in) leaves
    for (i, j), want in blocks.items():
        got = J[i * H:(i + 1) * H, j * H:(j + 1) * H]
        assert_close(torch.diagonal(got), want[0], f64, f"ParaLSTM block ({i}, {j})")
        assert (got - torch.diag(torch.diagonal(got))).abs().max() == 0
    assert cell.structure == Block(2)


def test_paralstm_init_and_readout():
    cell = cells.get("paralstm", D, H)
    ramp = torch.linspace(1.0, 4.0, H // 2)
    assert torch.allclose(cell.proj.bias[:H], torch.cat([ramp, ramp]))  # b_f: write gate 1 - f
    state = (torch.randn(2, H), torch.randn(2, H))
    assert cell.readout(state, torch.zeros(2, 3 * H)) is state[0]


# ---- sLSTM -------------------------------------------------------------------------------------

def slstm_dense_R(cell):
    """R as one dense (4H, H) matrix: per gate, the heads' (d, d) blocks on the diagonal."""
    return torch.cat([torch.block_diag(*cell.weight_hh[g]) for g in range(4)], dim=0)


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_slstm_step_is_the_stabilized_equations(heads):
    cell = make("slstm", heads=heads)
    W, b, R = cell.weight_ih, cell.bias, slstm_dense_R(cell)

    def reference(x, state):
        h, c, n, m = state
        i, f, z, o = (x @ W.T + b + h @ R.T).split(H, dim=-1)
        log_f = F.logsigmoid(f)
        m_new = torch.maximum(i, log_f + m)
        i_g, f_g = torch.exp(i - m_new), torch.exp(log_f + m - m_new)
        c, n = f_g * c + i_g * torch.tanh(z), f_g * n + i_g
        h = torch.sigmoid(o) * c / n
        return (h, c, n, m_new), h

    # A state reachable from zero (n >= 1): one step from the zero state.
    x0 = torch.randn(3, 1, D, dtype=f64)
    start = cell.step(cell.project(x0)[:, 0], cell.init_state(3, f64))
    check_steps(cell, reference, start)


def test_slstm_stabilized_equals_plain_exponentials():
    cell = make("slstm", heads=2)
    with torch.no_grad():
        cell.weight_ih.mul_(0.5)
    W, b, R = cell.weight_ih, cell.bias, slstm_dense_R(cell)
    x = torch.randn(2, 9, D, dtype=f64)
    y, _ = rnnlab.Recurrent(cell, engine="sequential")(x)
    h = c = n = torch.zeros(2, H, dtype=f64)
    ys = []
    for t in range(9):
        i, f, z, o = (x[:, t] @ W.T + b + h @ R.T).split(H, dim=-1)
        c = torch.sigmoid(f) * c + torch.exp(i) * torch.tanh(z)
        n = torch.sigmoid(f) * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        ys.append(h)
    assert_close(y, torch.stack(ys, 1), f64, "sLSTM stabilized vs plain exp")


def test_slstm_normalizer_stays_at_least_one_and_large_gates_stay_finite():
    cell = make("slstm", heads=2)
    x = 40.0 * torch.randn(2, 30, D, dtype=f64)  # i~ in the hundreds: exp(i~) would overflow
    u, state = cell.project(x), cell.init_state(2, f64)
    for t in range(30):
        state = cell.step(u[:, t], state)
        assert (state[2] >= 1).all() and all(torch.isfinite(s).all() for s in state)


def test_slstm_declared_heads_hold_with_a_random_R_and_are_tight():
    cell = make("slstm", heads=4)
    assert cell.structure == Heads(4, 2)
    J = _jacobian(cell, cell.project(torch.randn(1, 1, D, dtype=f64))[:, 0], rand_state(cell, 1))
    allowed = _allowed(cell.structure, [H] * 4)
    assert J[~allowed].abs().max() == 0
    # Not narrower: h mixes across the channels of a head (Block(4) would forbid it).
    assert J[~_allowed(Block(4), [H] * 4) & allowed].abs().max() > 0
    layer = rnnlab.Recurrent(cell, engine="sequential")
    x = torch.randn(2, 3, D, dtype=f64, requires_grad=True)
    h0 = tuple(t.abs().requires_grad_() for t in rand_state(cell, 2))  # n > 0
    assert torch.autograd.gradcheck(lambda x, *h0: layer(x, h0)[0], (x, *h0))


def test_slstm_init():
    cell = cells.get("slstm", D, H)
    assert cell.heads == 4 and cells.get("slstm", 5, 7).heads == 1
    assert (cell.weight_hh == 0).all()
    b_f = cell.bias[H:2 * H].view(4, 2)  # (heads, d)
    assert torch.allclose(b_f, torch.tensor([6.0, 1.0]).expand(4, 2))
    deep = cells.get("slstm", D, 16, heads=1, depth=1.0).bias[16:32]
    shallow = cells.get("slstm", D, 16, heads=1, depth=0.0).bias[16:32]
    assert (deep.diff() < 0).all() and (deep[1:-1] > shallow[1:-1]).all()
    mask = torch.ones(4 * H, dtype=torch.bool)
    mask[H:2 * H] = False
    assert (cell.bias[mask] == 0).all()


# ---- M²RNN -------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads, key_dim, shared_qk", [(1, None, False), (2, 3, False),
                                                        (4, 5, True)])
def test_m2rnn_step_is_the_paper_equations(heads, key_dim, shared_qk):
    cell = make("m2rnn", heads=heads, key_dim=key_dim, shared_qk=shared_qk)
    V, K = H // heads, key_dim or H // heads
    nq = K if shared_qk else heads * K

    def reference(x, S):
        q, k, v, x_f = (x @ cell.in_proj.weight.T).split([nq, nq, H, heads], dim=-1)
        S_new, ys = [], []
        for g in range(heads):
            qk = 0 if shared_qk else g
            q_g, k_g = q[:, qk * K:(qk + 1) * K], k[:, qk * K:(qk + 1) * K]
            v_g = v[:, g * V:(g + 1) * V]
            A, dt = torch.exp(cell.A_log[g]), F.softplus(x_f[:, g] + cell.dt_bias[g])
            f = torch.exp(-A * dt)[:, None, None]
            Z = torch.tanh(S[:, g] @ cell.W[g] + torch.einsum("bk,bv->bkv", k_g, v_g))
            S_new.append(f * S[:, g] + (1 - f) * Z)
            y = torch.einsum("bkv,bk->bv", S_new[-1], q_g) + cell.D[g * V:(g + 1) * V] * v_g
            ys.append(y)
        return torch.stack(S_new, 1), torch.cat(ys, -1)

    check_steps(cell, reference, rand_state(cell))


def test_m2rnn_declared_heads_hold_with_a_random_W_and_are_tight():
    cell = make("m2rnn", heads=2, key_dim=3)
    K, V = 3, H // 2
    assert cell.structure == Heads(2 * K, V)
    J = _jacobian(cell, cell.project(torch.randn(1, 1, D, dtype=f64))[:, 0], rand_state(cell, 1))
    allowed = _allowed(cell.structure, [2 * K * V])
    assert J[~allowed].abs().max() == 0
    assert J[allowed & ~torch.eye(2 * K * V, dtype=torch.bool)].abs().max() > 0  # W mixes a row


def test_m2rnn_init():
    cell = cells.get("m2rnn", D, H, heads=2)
    assert torch.equal(cell.W, torch.eye(4).expand(2, 4, 4)) and (cell.D == 1).all()
    A = torch.exp(cell.A_log)
    dt = F.softplus(cell.dt_bias)
    assert ((A > 0) & (A <= 16)).all() and ((dt >= 1e-3 - 1e-9) & (dt <= 0.1 + 1e-9)).all()
    u = cell.project(torch.randn(5, 1, D))[:, 0]
    f = cell.split(u)[3]
    assert ((f > 0) & (f < 1)).all()


# ---- all four: options, meta device ------------------------------------------------------------

@pytest.mark.parametrize("name, kw, word", [
    ("paragru", {"heads": 4}, "heads"), ("paragru", {"heads": 0}, "heads"),
    ("paragru", {"a_max": -1.0}, "a_max"), ("paralstm", {"heads": 5}, "heads"),
    ("paralstm", {"a_max": 0}, "a_max"), ("slstm", {"heads": 3}, "heads"),
    ("slstm", {"depth": 2.0}, "depth"), ("m2rnn", {"heads": 3}, "heads"),
    ("m2rnn", {"key_dim": 0}, "key_dim"), ("m2rnn", {"heads": True}, "heads"),
])
def test_bad_options_name_the_argument(name, kw, word):
    with pytest.raises(ValueError, match=word):
        cells.get(name, D, H, **kw)


@pytest.mark.parametrize("name", NEW)
def test_builds_on_meta_and_in_a_dtype(name):
    cell = cells.get(name, D, H, device="meta")
    assert all(p.device.type == "meta" for p in cell.parameters())
    assert all(p.dtype == f64 for p in cells.get(name, D, H, dtype=f64).parameters())
    assert name in cells.available()
