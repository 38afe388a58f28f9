"""PD-SSM: the permutation-diagonal scan (``ops/pd_scan.py``) against its loop reference
(outputs, final state, every gradient), a hand-checked group product, varlen, bad input; the
``pd_ssm`` cell's scan engine against its sequential engine, with gradients."""
from __future__ import annotations

import itertools

import pytest
import torch

import rnnlab
from rnnlab.ops.pd_scan import pd_scan, pd_scan_reference
from rnnlab.testing.tolerance import assert_close

from .helpers import sq_norm

N = 5  # odd, and S5 acts on it


def _inputs(T, dtype=torch.float64, B=3, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, N, (B, T, heads, N), generator=g)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    value = 0.99 * torch.rand(B, T, heads, N, generator=g, dtype=real)
    b = torch.randn(B, T, heads, N, generator=g, dtype=real)
    h0 = torch.randn(B, heads, N, generator=g, dtype=real)
    if dtype.is_complex:
        phase = torch.randn(B, T, heads, N, generator=g, dtype=real)
        value = torch.polar(value, phase)
        b = torch.complex(b, torch.randn(B, T, heads, N, generator=g, dtype=real))
        h0 = torch.complex(h0, torch.randn(B, heads, N, generator=g, dtype=real))
    return index, value, b, h0


def _run(op, index, value, b, h0, **kw):
    leaves = [t.clone().requires_grad_() for t in (value, b, h0)]
    h, final = op(index, *leaves[:2], initial_state=leaves[2], output_final_state=True, **kw)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(h.shape, generator=g, dtype=h.real.dtype)
    ((h * w).real.sum() + sq_norm(final)).backward()
    return h, final, [t.grad for t in leaves]


@pytest.mark.parametrize("T", [1, 7, 63, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
def test_scan_equals_reference_with_every_gradient(T, dtype):
    index, value, b, h0 = _inputs(T, dtype)
    h_s, f_s, g_s = _run(pd_scan, index, value, b, h0)
    h_r, f_r, g_r = _run(pd_scan_reference, index, value, b, h0)
    tol = torch.float32 if dtype == torch.float32 else torch.float64
    assert_close(h_s, h_r, tol, "states")
    assert_close(f_s, f_r, tol, "final state")
    assert_close(f_s, h_r[:, -1], tol, "final state is the last state")
    for name, a, r in zip(("value", "b", "initial_state"), g_s, g_r):
        assert a is not None and a.abs().sum() > 0, name
        assert_close(a, r, tol, f"gradient of {name}")


def test_no_initial_state_is_zeros_and_no_final_state_is_none():
    index, value, b, h0 = _inputs(9)
    h, final = pd_scan(index, value, b)
    assert final is None
    assert_close(h, pd_scan_reference(index, value, b, torch.zeros_like(h0))[0], torch.float64)


def _perm_matrix(perm):
    """Row-one-hot: (P h)[i] = h[perm[i]]."""
    return torch.eye(len(perm), dtype=torch.float64)[list(perm)]


def test_s5_permutations_compose_to_the_group_product_exactly():
    g = torch.Generator().manual_seed(3)
    perms = list(itertools.permutations(range(N)))  # all of S5
    T = 40
    chosen = [perms[i] for i in torch.randint(0, len(perms), (T,), generator=g).tolist()]
    index = torch.tensor(chosen).view(1, T, N)  # (B, T, N)
    ones, zeros = torch.ones(1, T, N, dtype=torch.float64), torch.zeros(1, T, N,
                                                                          dtype=torch.float64)
    h0 = torch.arange(1.0, N + 1, dtype=torch.float64).view(1, N)  # distinct entries
    h, final = pd_scan(index, ones, zeros, h0, output_final_state=True)
    product = torch.eye(N, dtype=torch.float64)
    for t, perm in enumerate(chosen):
        product = _perm_matrix(perm) @ product  # P_t ... P_1
        assert torch.equal(h[0, t], product @ h0[0]), t
    assert torch.equal(final[0], product @ h0[0])
    # the state is a permutation of h0: the group element is read off exactly
    assert torch.equal(final[0].sort().values, h0[0])


def test_packed_sequences_equal_each_sequence_alone():
    index, value, b, _ = _inputs(20, B=1)
    cu = torch.tensor([0, 6, 6, 13, 20])  # an empty sequence in the middle
    h0 = torch.randn(4, 2, N, dtype=torch.float64)
    h, final = pd_scan(index, value, b, h0, True, cu_seqlens=cu)
    h_r, f_r = pd_scan_reference(index, value, b, h0, True, cu_seqlens=cu)
    assert_close(h, h_r, torch.float64, "packed states")
    assert_close(final, f_r, torch.float64, "packed final states")
    assert torch.equal(final[1], h0[1])  # the empty sequence keeps its start state
    alone, last = pd_scan_reference(index[:, 6:13], value[:, 6:13], b[:, 6:13], h0[2:3], True)
    assert_close(h[:, 6:13], alone, torch.float64, "sequence 2 alone")
    assert_close(final[2:3], last, torch.float64, "sequence 2's final state")


def test_no_step_returns_the_start_states():
    """T = 0: empty states and, as the final state, the start state (zeros without one),
    plain and packed, as the reference."""
    index, value, b, h0 = (t[:, :0] if t.dim() == 4 else t for t in _inputs(3))
    for start in (h0, None):
        for op in (pd_scan, pd_scan_reference):
            h, final = op(index, value, b, start, True)
            assert h.shape == (3, 0, 2, N)
            assert torch.equal(final, torch.zeros_like(h0) if start is None else h0)
    for op in (pd_scan, pd_scan_reference):
        h, final = op(index[:1], value[:1], b[:1], h0[:2], True, cu_seqlens=torch.tensor([0, 0,
                                                                                           0]))
        assert h.shape == (1, 0, 2, N) and torch.equal(final, h0[:2])


@pytest.mark.parametrize("start, state", [(torch.complex64, torch.complex64),
                                          (torch.float64, torch.float64),
                                          (torch.bfloat16, torch.float32)])
def test_the_initial_state_dtype_is_promoted_not_cut(start, state):
    """A complex or fp64 start with fp32 elements keeps its dtype (as linear_scan): the states
    are in the promoted dtype, equal to the reference's."""
    index, value, b, _ = _inputs(6, torch.float32)
    h0 = torch.randn(3, 2, N, dtype=torch.float32).to(start)
    if start.is_complex:
        h0 = h0 + 1j * torch.randn(3, 2, N)
    h, final = pd_scan(index, value, b, h0, True)
    h_r, f_r = pd_scan_reference(index, value, b, h0, True)
    assert h.dtype == final.dtype == h_r.dtype == state
    assert_close(h, h_r, torch.float32, "states")
    assert_close(final, f_r, torch.float32, "final state")
    assert_close(h[:, 0], value[:, 0] * h0.to(state).gather(-1, index[:, 0]) + b[:, 0],
                 torch.float32, "first state")


@pytest.mark.parametrize("change, match", [
    (dict(h0=lambda h: h.long()), "initial_state: expected a floating or complex dtype"),
    (dict(index=lambda i: i.double()), "index: expected dtype torch.int64"),
    (dict(index=lambda i: i + N), r"index: expected entries in \[0, N-1\]"),
    (dict(value=lambda v: v[..., :-1]), "value: expected the shape of index"),
    (dict(b=lambda b: b.float()), "value, b: expected one dtype"),
    (dict(h0=lambda h: h[:, :1]), r"initial_state: expected shape \(B, ..., N\)"),
    (dict(index=lambda i: i[0, 0]), r"index: expected shape \(B, T, ..., N\)"),
])
def test_bad_input_is_refused_naming_the_argument(change, match):
    args = dict(zip(("index", "value", "b", "h0"), _inputs(4)))
    for key, fn in change.items():
        args[key] = fn(args[key])
    for op in (pd_scan, pd_scan_reference):
        with pytest.raises((ValueError, TypeError), match=match):
            op(args["index"], args["value"], args["b"], initial_state=args["h0"])


def test_bad_cu_seqlens_is_refused():
    index, value, b, _ = _inputs(6, B=1)
    for cu in (torch.tensor([0, 4]), torch.tensor([0, 5, 3, 6]), [0, 6]):
        with pytest.raises((ValueError, TypeError), match="cu_seqlens"):
            pd_scan(index, value, b, cu_seqlens=cu)


# ---- the cell ----------------------------------------------------------------------------------

def _layer_run(engine, x, h0, lengths, **options):
    """Outputs, final state and every gradient (x, h0, parameters) of one engine's run."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent(rnnlab.cells.get("pd_ssm", 5, 9, **options), engine=engine)
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    y, h = layer(x, h0, lengths=lengths)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    ((y * w).sum() + sq_norm(h)).backward()
    return y, h, [x.grad, h0.grad, *[p.grad for p in layer.parameters()]]


@pytest.mark.parametrize("options", [dict(state_size=5, heads=3),
                                     dict(state_size=7, complex=True, dictionary_size=3)])
@pytest.mark.parametrize("T, varlen", [(7, False), (63, True)])
def test_cell_scan_equals_sequential_with_gradients(options, T, varlen):
    torch.manual_seed(1)
    zero = rnnlab.cells.get("pd_ssm", 5, 9, **options).init_state(3)
    h0 = (0.3 * torch.randn(zero.shape, dtype=zero.dtype))
    x = torch.randn(3, T, 5)
    lengths = torch.tensor([T, T // 2, 0]) if varlen else None
    y_s, h_s, g_s = _layer_run("sequential", x, h0, lengths, **options)
    y_p, h_p, g_p = _layer_run("scan", x, h0, lengths, **options)
    assert_close(y_p, y_s, what="outputs")
    assert_close(h_p, h_s, what="final state")
    for i, (a, b) in enumerate(zip(g_p, g_s)):
        assert a.abs().sum() > 0, f"gradient #{i} is zero"
        assert_close(a, b, what=f"gradient #{i}")


def test_straight_through_runs_step_by_step_and_on_newton():
    """Its O(N^2)-per-combine scan lost to the loop, so the mode declares Dense: auto runs it
    sequentially, the scan engine refuses it, and Newton agrees with the loop."""
    options = dict(state_size=6, estimator="straight_through")
    cell = rnnlab.cells.get("pd_ssm", 5, 9, **options)
    assert rnnlab.Recurrent(cell, engine="auto").engine_name == "sequential"
    with pytest.raises(ValueError):
        rnnlab.Recurrent(cell, engine="scan")
    torch.manual_seed(1)
    x, h0 = torch.randn(3, 7, 5), 0.3 * torch.randn(3, 4, 6)
    y_s, h_s, g_s = _layer_run("sequential", x, h0, None, **options)
    y_n, h_n, g_n = _layer_run("newton", x, h0, None, **options)
    assert_close(y_n, y_s, what="outputs")
    assert_close(h_n, h_s, what="final state")
    for i, (a, b) in enumerate(zip(g_n, g_s)):
        assert_close(a, b, what=f"gradient #{i}")


@pytest.mark.parametrize("complex_", [False, True])
def test_cell_transition_is_permutation_diagonal(complex_):
    """dh_t/dh_{t-1} has one nonzero per row, of magnitude < 1, in each head's own block."""
    cell = rnnlab.cells.get("pd_ssm", 4, 6, state_size=7, heads=2, complex=complex_).double()
    u = cell.project(torch.randn(1, 1, 4, dtype=torch.float64))[:, 0]  # (1, P)
    zero = cell.init_state(1, torch.float64)
    basis = torch.eye(14, dtype=zero.dtype).view(14, 2, 7)  # unit states
    A = (cell.step(u.expand(14, -1), basis) - cell.step(u, zero)).reshape(14, 14).T
    nonzero = A.abs() > 0
    assert (nonzero.sum(1) == 1).all()
    assert (A.abs().amax(1) < 1).all()
    assert not nonzero[:7, 7:].any() and not nonzero[7:, :7].any()  # heads do not mix


@pytest.mark.parametrize("complex_", [False, True])
def test_one_hot_start_is_e0_in_every_head_on_every_engine(complex_):
    """start="one_hot" (the paper's automaton start state): init_state is e_0 per head, and a run
    without an initial state equals a zero-start cell's run given e_0 explicitly, on both
    engines."""
    options = dict(state_size=6, heads=2, complex=complex_)
    torch.manual_seed(0)
    cell = rnnlab.cells.get("pd_ssm", 5, 9, start="one_hot", **options)
    h = cell.init_state(3)
    assert h.shape == (3, 2, 6) and h.is_complex() == complex_
    assert (h[..., 0] == 1).all() and (h[..., 1:] == 0).all()
    plain = rnnlab.cells.get("pd_ssm", 5, 9, **options)
    plain.load_state_dict(cell.state_dict())
    x = torch.randn(3, 11, 5)
    want, _ = rnnlab.Recurrent(plain, engine="sequential")(x, h)
    for engine in ("sequential", "scan"):
        got, _ = rnnlab.Recurrent(cell, engine=engine)(x)
        assert_close(got, want, what=f"{engine} from the one-hot start")
    assert "start=one_hot" in repr(cell)


@pytest.mark.parametrize("option, value", [("state_size", 0), ("heads", 0),
                                           ("dictionary_size", -1), ("confidence", 1.5),
                                           ("start", "ones")])
def test_cell_refuses_bad_options_naming_them(option, value):
    with pytest.raises(ValueError, match=rf"{option}.*{value!r}"):
        rnnlab.cells.get("pd_ssm", 4, 8, **{option: value})


def test_confidence_belongs_to_the_exact_estimator():
    """The straight-through estimator has no confidence power: setting one is refused, not
    ignored; the exact one shows it in its repr."""
    with pytest.raises(ValueError, match="confidence applies to estimator='exact' only, got "
                                         "confidence=0.5"):
        rnnlab.cells.get("pd_ssm", 4, 8, estimator="straight_through", confidence=0.5)
    assert "confidence" not in repr(rnnlab.cells.get("pd_ssm", 4, 8,
                                                     estimator="straight_through"))
    assert "confidence=0.25" in repr(rnnlab.cells.get("pd_ssm", 4, 8))
    assert "confidence=0.5" in repr(rnnlab.cells.get("pd_ssm", 4, 8, confidence=0.5))


def _dense_straight_through(cell, x, h0):
    """PD-SSM's straight-through step written densely, the reference for the estimator:
    ``h_t = diag(d_t) (P_t + S_t - sg(S_t)) h_{t-1} + b_t`` with S the row softmax of the
    scores; returns the states ``(B, T, heads, N)``."""
    u = cell.project(x)
    hh, N, K = cell.heads, cell.N, cell.K
    sel, rest = u.split([hh * K, u.shape[-1] - hh * K], dim=-1)
    rest = rest.unflatten(-1, (-1, hh, N))  # (B, T, parts, heads, N)
    s = torch.softmax(sel.unflatten(-1, (hh, K)), dim=-1)
    soft = torch.softmax(torch.einsum("bthk,hkij->bthij", s, cell.dictionary), dim=-1)
    hard = torch.nn.functional.one_hot(soft.argmax(-1), N).to(soft.dtype)
    d, b = torch.sigmoid(rest[:, :, 0]), rest[:, :, 1]
    if cell.complex:  # |d| e^{i theta}, b = b_re + i b_im
        d, b = torch.polar(d, rest[:, :, 1]), torch.complex(rest[:, :, 2], rest[:, :, 3])
    A = d.unsqueeze(-1) * (hard + soft - soft.detach())
    h, states = h0, []
    for t in range(x.shape[1]):
        h = (A[:, t] @ h.unsqueeze(-1)).squeeze(-1) + b[:, t]  # (B, heads, N)
        states.append(h)
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("engine", ["sequential", "scan"])
def test_straight_through_gradient_is_the_dense_estimator(engine, complex_):
    torch.manual_seed(0)
    cell = rnnlab.cells.get("pd_ssm", 4, 6, state_size=5, heads=2, dictionary_size=3,
                            estimator="straight_through", complex=complex_).double()
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    h0 = cell.init_state(2, torch.float64) + torch.randn(2, 2, 5, dtype=torch.float64)
    h0.requires_grad_()
    w = torch.randn(2, 11, 2, 5, 2, dtype=torch.float64)  # weights of (real, imaginary)

    def grads(states):
        cell.zero_grad()
        h0.grad = None
        parts = torch.view_as_real(states) if complex_ else states.unsqueeze(-1)
        (parts * w[..., :parts.shape[-1]]).sum().backward()
        return [t.grad.clone() for t in (cell.proj.weight, cell.proj.bias, cell.dictionary, h0)]

    ref_states = _dense_straight_through(cell, x, h0)
    ref = grads(ref_states)
    u = cell.project(x)
    layer_states = []
    h = h0
    if engine == "sequential":
        for t in range(x.shape[1]):
            h = cell.step(u[:, t], h)
            layer_states.append(h)
        states = torch.stack(layer_states, dim=1)
    else:
        from rnnlab.engines.scan import _monoid
        states = _monoid(cell, u, h0, None)[0]
    assert_close(states, ref_states, torch.float64, "straight-through states")
    got = grads(states)
    assert ref[2].abs().sum() > 0  # the dictionary gets a gradient
    for name, a, r in zip(("projection", "projection bias", "dictionary", "initial state"),
                          got, ref):
        assert_close(a, r, torch.float64, f"straight-through gradient of the {name}")


def test_the_straight_through_spread_is_its_plain_product_under_every_transform():
    """``_Spread`` (the step's zero-valued ``(S - sg(S)) h`` without its two zero products)
    equals the plain product in value, in backward, and under jacfwd, jacrev and vmap (Newton
    differentiates the step with torch.func)."""
    from torch.func import jacfwd, jacrev, vmap

    from rnnlab.cells.pd_ssm import _Spread

    def plain(S, h):
        return (S - S.detach()) @ h

    torch.manual_seed(0)
    S, h = torch.randn(2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 3, 5, 2,
                                                                      dtype=torch.float64)
    assert torch.equal(_Spread.apply(S, h), plain(S, h))
    assert torch.equal(vmap(_Spread.apply)(S, h), plain(S, h))
    for transform in (jacfwd, jacrev):
        for arg in (0, 1):
            got, want = (transform(f, argnums=arg)(S, h) for f in (_Spread.apply, plain))
            assert_close(got, want, torch.float64, f"{transform.__name__} in argument {arg}")
    g = torch.randn_like(h)
    grads = [torch.autograd.grad((f(S.requires_grad_(), h.requires_grad_()) * g).sum(), (S, h),
                                 allow_unused=True, materialize_grads=True)
             for f in (_Spread.apply, plain)]
    for got, want in zip(*grads):
        assert_close(got, want, torch.float64, "backward")
