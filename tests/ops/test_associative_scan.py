"""associative_scan == associative_scan_reference == each monoid's recurrence written out step
by step, for every monoid in rnnlab.ops.monoids.MONOIDS: outputs, scanned elements, gradients
(fp64), reverse scans, other time dims, monoid laws, extreme values, and named errors."""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.ops import monoids as mo
from rnnlab.ops.associative import associative_scan, associative_scan_reference

from ..helpers import TOL, assert_close, rel_err

B, D, H, K, V, N = 2, 5, 3, 5, 7, 3  # odd sizes, none a power of two
STEPS = [1, 7, 63, 300]
DTYPES = [torch.float64, torch.float32]


class Family(NamedTuple):
    inputs: Callable  # (T, dtype, gen, scale) -> dict of raw inputs, each (B, T, ...) or (B, ...)
    leaves: Callable  # raw -> scan elements
    output: Callable  # (scanned, raw) -> (B, T, ...)
    direct: Callable  # raw -> (B, T, ...), the recurrence step by step


def _randn(gen, dtype, *shape):
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _loop(step, h, T):
    """Run ``h = step(t, h)`` for t < T and stack the states along dim 1."""
    outs = []
    for t in range(T):
        h = step(t, h)
        outs.append(h)
    return torch.stack(outs, 1)


def _aaren_direct(raw):
    """o_k = softmax(s_1..s_k) · v_1..v_k, one masked softmax over all (k, i) pairs."""
    s, v = raw["s"], raw["v"]  # (B, T, H), (B, T, H, V)
    T = s.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (k, i): i <= k
    logits = s.transpose(1, 2).unsqueeze(2).expand(-1, -1, T, -1)  # (B, H, k, i)
    weights = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    return torch.einsum("bhki,bihv->bkhv", weights, v)  # (B, T, H, V)


def _mlstm_direct(raw):
    """The stabilized recurrent step of linear_models.md §3, from m_0 = 0, C_0 = 0, n_0 = 0."""
    log_f, i_t, k, v, q = (raw[x] for x in ("log_f", "i", "k", "v", "q"))
    C = torch.zeros(*k.shape[:1], *k.shape[2:], v.shape[-1], dtype=k.dtype)  # (B, H, K, V)
    n, m, outs = torch.zeros_like(k[:, 0]), torch.zeros_like(log_f[:, 0]), []
    for t in range(k.shape[1]):
        m_new = torch.maximum(log_f[:, t] + m, i_t[:, t])
        i_p, f_p = torch.exp(i_t[:, t] - m_new), torch.exp(log_f[:, t] + m - m_new)  # (B, H)
        C = f_p[..., None, None] * C + i_p[..., None, None] * k[:, t, :, :, None] * v[:, t, :, None]
        n = f_p[..., None] * n + i_p[..., None] * k[:, t]
        den = torch.maximum((n * q[:, t]).sum(-1).abs(), torch.exp(-m_new))  # (B, H)
        outs.append((C * q[:, t, ..., None]).sum(-2) / den[..., None])  # (B, H, V)
        m = m_new
    return torch.stack(outs, 1)  # (B, T, H, V)


FAMILIES: Dict[str, Family] = {
    "affine": Family(
        lambda T, dt, g, sc: dict(a=torch.rand(B, T, D, generator=g, dtype=dt),
                                  b=_randn(g, dt, B, T, D), h0=_randn(g, dt, B, D)),
        lambda r: (r["a"], r["b"]),
        lambda e, r: mo.affine_apply(*e, r["h0"]),
        lambda r: _loop(lambda t, h: r["a"][:, t] * h + r["b"][:, t], r["h0"], r["a"].shape[1])),
    "matrix_affine": Family(
        lambda T, dt, g, sc: dict(A=_randn(g, dt, B, T, H, N, N) * 0.5,
                                  b=_randn(g, dt, B, T, H, N), h0=_randn(g, dt, B, H, N)),
        lambda r: (r["A"], r["b"]),
        lambda e, r: mo.matrix_affine_apply(*e, r["h0"]),
        lambda r: _loop(lambda t, h: (r["A"][:, t] @ h[..., None])[..., 0] + r["b"][:, t],
                        r["h0"], r["A"].shape[1])),
    "aaren": Family(
        lambda T, dt, g, sc: dict(s=_randn(g, dt, B, T, H) * sc, v=_randn(g, dt, B, T, H, V)),
        lambda r: mo.aaren_leaf(r["s"], r["v"]),
        lambda e, r: mo.aaren_output(*e),
        _aaren_direct),
    "minmax": Family(
        lambda T, dt, g, sc: dict(r=_randn(g, dt, B, T, D), s=_randn(g, dt, B, T, D),
                                  x0=_randn(g, dt, B, D)),
        lambda r: mo.minmax_leaf(r["r"], r["s"]),
        lambda e, r: mo.minmax_apply(*e, r["x0"]),
        lambda r: _loop(lambda t, x: torch.maximum(torch.minimum(r["r"][:, t], x), r["s"][:, t]),
                        r["x0"], r["r"].shape[1])),
    "mlstm": Family(
        lambda T, dt, g, sc: dict(log_f=F.logsigmoid(_randn(g, dt, B, T, H) + 2),
                                  i=_randn(g, dt, B, T, H) * sc,
                                  k=_randn(g, dt, B, T, H, K) / K ** .5,
                                  v=_randn(g, dt, B, T, H, V), q=_randn(g, dt, B, T, H, K)),
        lambda r: mo.mlstm_leaf(r["log_f"], r["i"], r["k"], r["v"]),
        lambda e, r: mo.mlstm_output(e[1], e[2], e[3], r["q"]),
        _mlstm_direct),
}
NAMES = sorted(FAMILIES)


def make(name, T, dtype=torch.float64, seed=0, scale=1.0, grad=False):
    raw = FAMILIES[name].inputs(T, dtype, torch.Generator().manual_seed(seed), scale)
    return {k: x.requires_grad_(grad) for k, x in raw.items()}


def test_every_monoid_is_tested():
    assert set(mo.MONOIDS) == set(FAMILIES)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", STEPS)
@pytest.mark.parametrize("name", NAMES)
def test_scan_matches_reference_and_direct(name, T, dtype):
    fam, combine = FAMILIES[name], mo.MONOIDS[name].combine
    raw = make(name, T, dtype)
    fast = associative_scan(combine, fam.leaves(raw))
    ref = associative_scan_reference(combine, fam.leaves(raw))
    assert_close(fast, ref, dtype, f"{name}: scanned elements")
    out = fam.output(fast, raw)
    assert_close(out, fam.output(ref, raw), dtype, f"{name}: outputs vs reference")
    assert_close(out, fam.direct(raw), dtype, f"{name}: outputs vs the direct recurrence")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("T", STEPS)
@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_reference_and_direct(name, T):
    fam, combine = FAMILIES[name], mo.MONOIDS[name].combine
    raw = make(name, T, grad=True)
    upstream = None
    grads = []
    for run in ("fast", "reference", "direct"):
        if run == "direct":
            out = fam.direct(raw)
        else:
            scan = associative_scan if run == "fast" else associative_scan_reference
            out = fam.output(scan(combine, fam.leaves(raw)), raw)
        if upstream is None:
            upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9),
                                   dtype=out.dtype)
        # allow_unused: with T = 1 Aaren's output is v alone (the score cancels)
        grads.append(torch.autograd.grad((out * upstream).sum(), tuple(raw.values()),
                                         allow_unused=True, materialize_grads=True))
    assert_close(grads[0], grads[1], torch.float64, f"{name}: gradients vs reference")
    assert_close(grads[0], grads[2], torch.float64, f"{name}: gradients vs direct")


@pytest.mark.parametrize("T", [1, 8, 63])
@pytest.mark.parametrize("name", NAMES)
def test_reverse(name, T):
    fam, combine = FAMILIES[name], mo.MONOIDS[name].combine
    elems = fam.leaves(make(name, T))
    fast = associative_scan(combine, elems, reverse=True)
    assert_close(fast, associative_scan_reference(combine, elems, reverse=True), torch.float64,
                 f"{name}: reverse vs reference")
    flipped = associative_scan_reference(combine, tuple(x.flip(1) for x in elems))
    assert_close(fast, tuple(x.flip(1) for x in flipped), torch.float64, f"{name}: flip-scan-flip")


def test_reverse_affine_is_the_backward_recurrence():
    raw = make("affine", 63)
    a, b = associative_scan(mo.affine_combine, (raw["a"], raw["b"]), reverse=True)
    h, outs = raw["h0"], []
    for t in range(62, -1, -1):  # h_t = a_t h_{t+1} + b_t from the end
        h = raw["a"][:, t] * h + raw["b"][:, t]
        outs.append(h)
    assert_close(mo.affine_apply(a, b, raw["h0"]), torch.stack(outs[::-1], 1), torch.float64)


def test_time_first_layout():
    """Time at dim 0 of tensors with different ranks: (T, B, H), (T, B, H, K, V), (T, B, H, K)."""
    raw = make("mlstm", 63)
    elems = mo.mlstm_leaf(raw["log_f"], raw["i"], raw["k"], raw["v"])
    time_first = tuple(x.transpose(0, 1) for x in elems)  # (B, T, ...) -> (T, B, ...)
    out = associative_scan(mo.mlstm_combine, time_first, dim=0)
    assert_close(tuple(x.transpose(0, 1) for x in out),
                 associative_scan_reference(mo.mlstm_combine, elems), torch.float64)


def test_negative_time_dim():
    raw = make("affine", 63)  # (B, T, D): time is dim -2
    elems = (raw["a"], raw["b"])
    assert_close(associative_scan(mo.affine_combine, elems, dim=-2),
                 associative_scan_reference(mo.affine_combine, elems), torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_monoid_laws(name):
    fam, (combine, identity) = FAMILIES[name], mo.MONOIDS[name]
    x, y, z = (fam.leaves(make(name, 4, seed=s)) for s in (1, 2, 3))
    e = identity(x)
    assert_close(combine(e, x), x, torch.float64, f"{name}: identity ∘ x")
    assert_close(combine(x, e), x, torch.float64, f"{name}: x ∘ identity")
    ee = combine(e, e)  # -inf - (-inf) must not leak as nan
    assert all(torch.equal(p, q) for p, q in zip(ee, e)), f"{name}: identity ∘ identity"
    assert_close(combine(combine(x, y), z), combine(x, combine(y, z)), torch.float64,
                 f"{name}: associativity")


def test_minmax_is_not_commutative_but_aaren_is():
    a, b = (FAMILIES["minmax"].leaves(make("minmax", 50, seed=s)) for s in (1, 2))
    ab, ba = mo.minmax_combine(a, b), mo.minmax_combine(b, a)
    assert not all(torch.equal(p, q) for p, q in zip(ab, ba))
    x, y = (FAMILIES["aaren"].leaves(make("aaren", 50, seed=s)) for s in (1, 2))
    assert_close(mo.aaren_combine(x, y), mo.aaren_combine(y, x), torch.float64)


def test_minmax_scan_order_matters():
    """A reset (r = s = 0) then a set (s = 1) is not a set then a reset."""
    r = torch.tensor([[[0.0], [5.0]]])  # (B=1, T=2, D=1)
    s = torch.tensor([[[0.0], [1.0]]])
    R, S = associative_scan(mo.minmax_combine, (r, s))
    assert mo.minmax_apply(R, S, torch.tensor([[3.0]]))[0, :, 0].tolist() == [0.0, 1.0]
    R, S = associative_scan(mo.minmax_combine, (r.flip(1), s.flip(1)))
    assert mo.minmax_apply(R, S, torch.tensor([[3.0]]))[0, :, 0].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("name, scale", [("aaren", 50.0), ("mlstm", 50.0)])
def test_extreme_values_stay_finite(name, scale):
    fam, combine = FAMILIES[name], mo.MONOIDS[name].combine
    raw = make(name, 300, torch.float32, scale=scale, grad=True)
    if name == "aaren":  # scores at ±50 exactly, as well as spread out
        raw["s"].data[:, ::3] = 50.0 * torch.sign(raw["s"].data[:, ::3])
    out = fam.output(associative_scan(combine, fam.leaves(raw)), raw)
    assert torch.isfinite(out).all()
    exact = fam.direct({k: x.detach().double() for k, x in raw.items()})
    # Exponents of size ~50 carry float32 rounding of ~50·eps each, so the bar is the float32
    # step-by-step recurrence's own error (mLSTM: ~1e-3 here), not the usual tolerance.
    bar = max(TOL[torch.float32], 4 * rel_err(fam.direct(raw), exact))
    assert rel_err(out, exact) <= bar, f"{name}: float32 at scale {scale} vs float64 direct"
    grads = torch.autograd.grad(out.sum(), tuple(raw.values()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_single_tensor_elems():
    x = torch.randn(3, 63, 5, dtype=torch.float64)
    assert_close(associative_scan(torch.add, x), x.cumsum(1), torch.float64)
    assert torch.equal(associative_scan(torch.maximum, x, reverse=True),
                       x.flip(1).cummax(1).values.flip(1))
    assert torch.equal(associative_scan_reference(torch.maximum, x), x.cummax(1).values)


def test_zero_steps():
    x = torch.randn(2, 0, 3)
    assert associative_scan(torch.add, x).shape == (2, 0, 3)
    assert associative_scan_reference(torch.add, (x,))[0].shape == (2, 0, 3)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 70), D_=st.integers(1, 4), dim=st.sampled_from([0, 1, 2]),
       reverse=st.booleans())
def test_matrix_affine_any_shape(T, D_, dim, reverse):
    g = torch.Generator().manual_seed(T)
    shape = [2, 3]
    shape.insert(dim, T)  # time at `dim`
    A = torch.randn(*shape, D_, D_, generator=g, dtype=torch.float64) * 0.6
    b = torch.randn(*shape, D_, generator=g, dtype=torch.float64)
    kw = dict(dim=dim, reverse=reverse)
    assert_close(associative_scan(mo.matrix_affine_combine, (A, b), **kw),
                 associative_scan_reference(mo.matrix_affine_combine, (A, b), **kw), torch.float64)


def _bad_combine(a, b):
    return a[0]


@pytest.mark.parametrize("args, err, pattern", [
    (("add", (torch.ones(2, 3),)), TypeError, r"combine: expected a callable.*got str"),
    ((torch.add, [[1.0]]), TypeError, r"elems: expected a tensor or a non-empty tuple.*list"),
    ((torch.add, ()), TypeError, r"elems: expected a tensor or a non-empty tuple.*got tuple"),
    ((mo.affine_combine, (torch.ones(2, 3), torch.ones(2, 4))), ValueError,
     r"elems: expected the same length along dim=1, got lengths \[3, 4\]"),
    ((torch.add, torch.ones(2, 3), 2), ValueError,
     r"dim: expected a dim in \[-2, 1\] for elems\[0\] of shape \(2, 3\), got 2"),
    ((torch.add, torch.ones(2, 3), 1.0), TypeError, r"dim: expected an integer, got 1.0"),
    ((_bad_combine, (torch.ones(2, 3), torch.ones(2, 3))), TypeError,
     r"combine: expected it to return 2 tensor\(s\) like elems, got Tensor"),
])
@pytest.mark.parametrize("scan", [associative_scan, associative_scan_reference])
def test_errors(scan, args, err, pattern):
    with pytest.raises(err, match=pattern):
        scan(*args)


def test_apply_errors():
    with pytest.raises(ValueError, match=r"x0: expected shape \(2, 5\).*got \(2, 4\)"):
        mo.minmax_apply(torch.ones(2, 7, 5), torch.ones(2, 7, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 3\).*got \(3,\)"):
        mo.affine_apply(torch.ones(2, 7, 3), torch.ones(2, 7, 3), torch.ones(3))
