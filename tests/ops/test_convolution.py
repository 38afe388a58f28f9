"""FFT convolution of time-invariant SSMs vs the fp64 loop reference: outputs, final states and
every gradient (u, initial_state, and the real parameters that build the complex A, B, C) for the
diagonal (complex) and dense (HiPPO-LegS, bilinear) forms; lengths and cu_seqlens vs each
sequence run alone; the impulse response; dtypes, empty inputs and named errors."""
from __future__ import annotations

import math

import pytest
import torch

from rnnlab.cells.ssm_init import hippo_legs
from rnnlab.ops.convolution import ssm_convolution, ssm_convolution_reference

from ..helpers import assert_close

CPLX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def make(form: str, B=2, T=7, H=5, N=3, rows=None, seed=0):
    """Real fp64 leaves: u ``(B, T, H)``, x0 parts ``(B or rows, H, N)`` and the parameters.
    Diagonal: log|A| = -exp(a_re) with |A| in (0.5, 1), one mode per channel at 1 - 1e-4, any
    phase. Dense: HiPPO-LegS per channel, step dt = exp(log_dt) in [1e-2, 1e-1]."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)
    rows = B if rows is None else rows
    leaves = {"u": rand(B, T, H), "x0_re": rand(rows, H, N), "c_re": rand(H, N)}
    if form == "diag":
        mag = 0.5 + 0.5 * torch.rand(H, N, generator=gen, dtype=torch.float64)
        mag[:, 0] = 1 - 1e-4
        leaves.update(a_re=torch.log(-torch.log(mag)),
                      a_im=math.pi * (2 * torch.rand(H, N, generator=gen, dtype=torch.float64) - 1),
                      b_re=rand(H, N), b_im=rand(H, N), c_im=rand(H, N), x0_im=rand(rows, H, N))
    else:
        A, b = hippo_legs(N, dtype=torch.float64)
        log_dt = math.log(1e-2) + math.log(10) * torch.rand(H, generator=gen, dtype=torch.float64)
        leaves.update(A=A.repeat(H, 1, 1), b=b.repeat(H, 1) + 0.1 * rand(H, N), log_dt=log_dt)
    return leaves


def build(form: str, p: dict):
    """``(u, A, B, C, x0)`` from the leaves (differentiable); the dense form discretizes
    bilinearly as LSSL does (spectral radius < 1, non-normal)."""
    if form == "diag":
        A = torch.exp(torch.complex(-torch.exp(p["a_re"]), p["a_im"]))  # (H, N)
        B, C = torch.complex(p["b_re"], p["b_im"]), torch.complex(p["c_re"], p["c_im"])
        x0 = torch.complex(p["x0_re"], p["x0_im"])  # (B, H, N)
        return p["u"], A, B, C, x0
    dt = torch.exp(p["log_dt"])[:, None, None]  # (H, 1, 1)
    eye = torch.eye(p["A"].shape[-1], dtype=p["A"].dtype)
    left = eye - dt * p["A"] / 2  # (H, N, N)
    A = torch.linalg.solve(left, eye + dt * p["A"] / 2)
    B = torch.linalg.solve(left, (dt[..., 0] * p["b"]).unsqueeze(-1)).squeeze(-1)  # (H, N)
    return p["u"], A, B, p["c_re"], p["x0_re"]


def upstream(B, T, H, N, form, seed=1):
    """Random upstream weights ``(wy (B, T, H), wx (B, H, N) or (B, H, N, 2) for complex)``."""
    gen = torch.Generator().manual_seed(seed)
    wy = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    return wy, torch.randn(B, H, N, *([2] if form == "diag" else []), generator=gen,
                           dtype=torch.float64)


def run(fn, form, leaves, dtype, init=True, weights=None, **kw):
    """``fn`` on the built inputs rounded to ``dtype`` (the reference gets the same values,
    widened to fp64); returns ``(y, x_L, {leaf: grad})`` for the real loss
    ``sum(wy * y) + sum(wx * x_L)`` (x_L as real pairs; ``wy`` zero past a row's length)."""
    p = {k: v.clone().requires_grad_() for k, v in leaves.items()}
    low = {torch.float64: dtype, torch.complex128: CPLX[dtype]}
    inputs = [t.to(low[t.dtype]) for t in build(form, p)]
    if fn is ssm_convolution_reference:
        inputs = [t.to(torch.complex128 if t.is_complex() else torch.float64) for t in inputs]
    u, A, B, C, x0 = inputs
    y, x = fn(u, A, B, C, initial_state=x0 if init else None, output_final_state=True, **kw)
    wy, wx = weights or upstream(*u.shape, A.shape[1], form)
    xr = torch.view_as_real(x) if x.is_complex() else x
    loss = (y.double() * wy).sum() + (xr.double() * wx).sum()
    names = [k for k in p if init or not k.startswith("x0")]
    grads = torch.autograd.grad(loss, [p[k] for k in names], allow_unused=True)
    return y, x, {k: torch.zeros_like(p[k]) if g is None else g  # unused (an empty u): zero
                  for k, g in zip(names, grads)}


def assert_parity(form, leaves, dtype, init=True, **kw):
    """Fast path == fp64 reference on y, x_L and the gradient of every leaf."""
    y, x, grads = run(ssm_convolution, form, leaves, dtype, init, **kw)
    y_ref, x_ref, grads_ref = run(ssm_convolution_reference, form, leaves, dtype, init, **kw)
    assert y.dtype == dtype and x.dtype == (dtype if form == "dense" else CPLX[dtype])
    assert_close(y, y_ref, dtype, "y")
    assert_close(x, x_ref, dtype, "final state")
    assert grads.keys() == grads_ref.keys()
    for name in grads_ref:
        assert torch.isfinite(grads[name]).all(), f"d{name} not finite"
        assert_close(grads[name], grads_ref[name], dtype, f"d{name}")


FORMS = ["diag", "dense"]
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("T", [1, 7, 63, 300])
def test_matches_reference(T, form, dtype):
    assert_parity(form, make(form, T=T, seed=T), dtype)


@pytest.mark.parametrize("form", FORMS)
def test_without_initial_state(form):
    assert_parity(form, make(form, B=3, T=50, H=7, N=5, seed=3), torch.float32, init=False)


@pytest.mark.parametrize("form", FORMS)
def test_long_fp32(form):
    """T = 2048 in fp32 (|A| = 1 - 1e-4 barely decays) still meets the fp32 tolerance."""
    assert_parity(form, make(form, B=1, T=2048, H=3, N=4, seed=5), torch.float32)


def alone(form, leaves, pieces, dtype, weights):
    """The reference on each piece ``(row, start, end)`` of u alone, from that row's x0 (piece
    i uses x0 row i): y pieces, x_L rows and the gradients summed over the pieces (for u and
    x0, placed where each piece came from)."""
    ys, xs, total = [], [], {k: torch.zeros_like(v) for k, v in leaves.items()}
    for i, (b, s, e) in enumerate(pieces):
        one = dict(leaves, u=leaves["u"][b:b + 1, s:e],
                   **{k: v[i:i + 1] for k, v in leaves.items() if k.startswith("x0")})
        w = (weights[0][b:b + 1, s:e], weights[1][i:i + 1])
        y, x, g = run(ssm_convolution_reference, form, one, dtype, weights=w)
        ys.append(y)
        xs.append(x)
        for k, v in g.items():
            if k == "u":
                total[k][b:b + 1, s:e] += v
            elif k.startswith("x0"):
                total[k][i:i + 1] += v
            else:
                total[k] += v
    return ys, torch.cat(xs), total


def assert_same(got, want, dtype):
    """(y pieces, x_L, grads) agree."""
    for i, (a, b) in enumerate(zip(got[0], want[0])):
        assert_close(a, b, dtype, f"y of sequence {i}")
    assert_close(got[1], want[1], dtype, "final state")
    for k in want[2]:
        assert_close(got[2][k], want[2][k], dtype, f"d{k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_lengths_equal_rows_alone(form, dtype):
    """Row b cut to lengths[b] (0 and T included) and run alone: same y up to the length, same
    final state, same gradients (u past the length gets none)."""
    B, T, H, N = 5, 40, 3, 4
    leaves = make(form, B=B, T=T, H=H, N=N, seed=11)
    lengths = torch.tensor([0, T, 17, 1, T - 1])
    keep = (torch.arange(T)[None] < lengths[:, None])[..., None]  # (B, T, 1)
    wy, wx = upstream(B, T, H, N, form)
    y, x, g = run(ssm_convolution, form, leaves, dtype, weights=(wy * keep, wx), lengths=lengths)
    pieces = [(b, 0, n) for b, n in enumerate(lengths.tolist())]
    want = alone(form, leaves, pieces, dtype, (wy, wx))
    assert_same(([y[b:b + 1, :n] for b, _, n in pieces], x, g), want, dtype)
    y, x, g = run(ssm_convolution_reference, form, leaves, dtype, weights=(wy * keep, wx),
                  lengths=lengths)  # the reference takes lengths too
    assert_same(([y[b:b + 1, :n] for b, _, n in pieces], x, g), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORMS)
def test_cu_seqlens_equal_sequences_alone(form, dtype):
    bounds = [0, 5, 5, 17, 80, 81]  # an empty sequence and a single step included
    cu = torch.tensor(bounds)
    leaves = make(form, B=1, T=bounds[-1], H=3, N=4, rows=len(bounds) - 1, seed=13)
    weights = upstream(1, bounds[-1], 3, 4, form)
    weights = (weights[0], upstream(len(bounds) - 1, 1, 3, 4, form, seed=2)[1])
    y, x, g = run(ssm_convolution, form, leaves, dtype, weights=weights, cu_seqlens=cu)
    pieces = [(0, s, e) for s, e in zip(bounds[:-1], bounds[1:])]
    want = alone(form, leaves, pieces, dtype, weights)
    assert_same(([y[:, s:e] for _, s, e in pieces], x, g), want, dtype)
    y_ref, x_ref, _ = run(ssm_convolution_reference, form, leaves, dtype, weights=weights,
                          cu_seqlens=cu)
    assert_close(y, y_ref, dtype, "y")
    assert_close(x, x_ref, dtype, "final state")


@pytest.mark.parametrize("form", FORMS)
def test_impulse_response_is_the_kernel(form):
    """u = a unit impulse at t = 0 (every channel), x0 = 0: y_t = Re(C A^t B), with A^t from
    torch.linalg.matrix_power or complex pow, independently of both code paths."""
    H, N, T = 3, 4, 50
    u, A, B, C, _ = build(form, make(form, B=1, T=T, H=H, N=N, seed=17))
    u = torch.zeros(1, T, H, dtype=torch.float64)
    u[0, 0] = 1.0
    y, _ = ssm_convolution(u, A, B, C)
    t = torch.arange(T, dtype=torch.float64)
    if form == "diag":
        kernel = ((C * B)[:, None] * A[:, None] ** t[:, None]).sum(-1).real  # (H, T)
    else:
        powers = torch.stack([torch.linalg.matrix_power(A, k) for k in range(T)], 1)
        kernel = torch.einsum("hn,htnm,hm->ht", C, powers, B)
    assert_close(y[0].T, kernel, torch.float64, "impulse response")


def test_real_and_zero_diagonal():
    """A real diagonal A is the complex one with zero phase; an exact-zero mode (an underflowed
    decay) gives finite outputs and gradients."""
    leaves = make("diag", T=30, seed=19)
    u, A, B, C, x0 = build("diag", leaves)
    real = A.abs().detach()
    y_re, x_re = ssm_convolution(u, real, B, C, x0, True)
    y_cx, x_cx = ssm_convolution(u, real.to(A.dtype), B, C, x0, True)
    assert x_re.is_complex()
    assert_close(y_re, y_cx, torch.float64, "y")
    zero = A.detach().clone()
    zero[:, 1] = 0
    zero.requires_grad_()
    y, x = ssm_convolution(u, zero, B, C, x0, True)
    y_ref, x_ref = ssm_convolution_reference(u, zero, B, C, x0, True)
    assert_close(y, y_ref, torch.float64, "y")
    assert_close(x, x_ref, torch.float64, "final state")
    (y.sum() + x.abs().sum()).backward()
    assert torch.isfinite(torch.view_as_real(zero.grad)).all()


@pytest.mark.parametrize("form", FORMS)
def test_dtypes_defaults_and_empty(form):
    u, A, B, C, x0 = build(form, make(form, T=9, seed=23))
    low = [t.to(torch.complex64 if t.is_complex() else torch.float32) for t in (A, B, C)]
    y, x = ssm_convolution(u.to(torch.bfloat16), *low)
    assert y.dtype == torch.bfloat16 and x is None
    y, x = ssm_convolution(u.float(), *low, output_final_state=True)
    assert x.dtype == (torch.float32 if form == "dense" else torch.complex64)
    y0, _ = ssm_convolution(u.float(), *low, initial_state=torch.zeros_like(x))
    assert_close(y0, y, torch.float32, "zero initial state")
    y, x = ssm_convolution(u, A, B, C, x0.to(low[1].dtype), True)  # fp64 u: fp64 compute
    assert y.dtype == torch.float64 and x.dtype == x0.dtype
    y, x = ssm_convolution(u[:, :0], A, B, C, x0, True)
    assert y.shape == (2, 0, 5) and torch.equal(x, x0)
    y, x = ssm_convolution(u[:, :0], A, B, C, output_final_state=True)
    assert x.shape == x0.shape and not x.abs().any()


def test_named_errors():
    u, A, B, C, x0 = build("diag", make("diag", T=6, seed=29))
    cases = [
        (dict(u=u[0]), ValueError, "u:"),
        (dict(u=u.to(torch.complex128)), TypeError, "u:"),
        (dict(A=A[None, None]), ValueError, "A:"),
        (dict(A=A[:, :2]), ValueError, "B:"),
        (dict(A=torch.eye(3, dtype=A.dtype).repeat(5, 1, 1)), TypeError, "A:"),
        (dict(B=B[:2]), ValueError, "B:"),
        (dict(C="C"), TypeError, "C:"),
        (dict(initial_state=x0[:1]), ValueError, "initial_state:"),
        (dict(lengths=torch.tensor([3, 7])), ValueError, "lengths:"),
        (dict(lengths=torch.tensor([3.0, 2.0])), TypeError, "lengths:"),
        (dict(lengths=torch.tensor([3])), ValueError, "lengths:"),
        (dict(cu_seqlens=torch.tensor([0, 6])), ValueError, "cu_seqlens:"),
    ]
    base = dict(u=u, A=A, B=B, C=C, initial_state=x0)
    for fn in (ssm_convolution, ssm_convolution_reference):
        for change, error, name in cases:
            with pytest.raises(error, match=name):
                fn(**{**base, **change})
        one = {**base, "u": u[:1], "initial_state": x0[:1]}
        with pytest.raises(ValueError, match="lengths:"):
            fn(**one, cu_seqlens=torch.tensor([0, 6]), lengths=torch.tensor([6]))
