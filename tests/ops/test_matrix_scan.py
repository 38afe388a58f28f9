"""matrix_scan (chunked fast path, analytic backward) == matrix_scan_reference (a plain loop,
gradients by autograd): states, final state and the gradients of A, b and initial_state under
random upstream gradients on both outputs; odd sizes, extra batch dims, chunk sizes, packed
sequences, low precision, edge cases and named errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab.ops import monoids as mo
from rnnlab.ops.associative import associative_scan
from rnnlab.ops.matrix import matrix_scan, matrix_scan_reference

from ..helpers import assert_close

B, E = 2, 3  # batch and one extra batch dim (e.g. heads)


def inputs(T, N, dtype=torch.float64, extra=(E,), seed=0, scale=0.7, batch=B):
    """A (batch, T, *extra, N, N) with entries ~ scale/√N (spectral radius ≈ scale), b and h0."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, T, *extra, N, N, generator=g, dtype=torch.float64) * scale / N ** .5
    b = torch.randn(batch, T, *extra, N, generator=g, dtype=torch.float64)
    h0 = torch.randn(batch, *extra, N, generator=g, dtype=torch.float64)
    return [x.to(dtype).requires_grad_() for x in (A, b, h0)]


def run_both(A, b, h0, cu_seqlens=None, **kw):
    """Outputs and gradients of (A, b, h0) for both implementations, same upstream gradients."""
    results = []
    for fn, extra in ((matrix_scan, kw), (matrix_scan_reference, {})):
        h, h_T = fn(A, b, h0, True, cu_seqlens, **extra)
        g = torch.Generator().manual_seed(7)
        up_h = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
        up_T = torch.randn(h_T.shape, generator=g, dtype=torch.float64).to(h.dtype)
        wrt = [x for x in (A, b, h0) if x is not None]
        grads = torch.autograd.grad((h * up_h).sum() + (h_T * up_T).sum(), wrt)
        results.append((h, h_T, grads))
    return results


def check(fast, ref, dtype, what=""):
    (h, h_T, grads), (h_r, h_T_r, grads_r) = fast, ref
    assert h.dtype == h_r.dtype and h_T.dtype == h_T_r.dtype
    assert_close(h, h_r, dtype, f"{what} h")
    assert_close(h_T, h_T_r, dtype, f"{what} h_T")
    for name, g, g_r in zip(("dA", "db", "dh0"), grads, grads_r):
        assert_close(g, g_r, dtype, f"{what} {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("N", [1, 3, 5])
@pytest.mark.parametrize("T", [1, 7, 63, 300])
def test_matches_reference(T, N, dtype):
    check(*run_both(*inputs(T, N, dtype)), dtype, f"T={T} N={N}")


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 8, 64, 400])
@pytest.mark.parametrize("T", [7, 63, 300])
def test_chunk_sizes(T, chunk_size):
    """Explicit chunk sizes: padded last chunks, several recursion levels, one chunk, the loop."""
    check(*run_both(*inputs(T, 4, extra=()), chunk_size=chunk_size), torch.float64)


@pytest.mark.parametrize("extra", [(), (3,), (2, 3)])
def test_extra_batch_dims(extra):
    check(*run_both(*inputs(63, 5, extra=extra)), torch.float64, f"extra dims {extra}")


def broadcast_inputs(T, N, seed=0):
    """A shared over two of three extra dims (an ``expand`` view, stride 0, as pLSTM's key and
    value dims) and the same A materialised; b, h0 of the full shape."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randn(B, T, 2, 1, 1, N, N, generator=g, dtype=torch.float64) * 0.7 / N ** .5
    b = torch.randn(B, T, 2, 3, 4, N, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(B, 2, 3, 4, N, generator=g, dtype=torch.float64).requires_grad_()
    small.requires_grad_()
    return small, b, h0


@pytest.mark.parametrize("chunk", [None, 1, 3, 8])
@pytest.mark.parametrize("T", [1, 7, 63])
@pytest.mark.parametrize("with_h0", [False, True])
def test_a_broadcast_over_extra_dims_is_shared_not_copied(T, chunk, with_h0):
    """An A expanded over extra dims runs them as columns of one matrix: the same states and
    the same gradients (summed over the broadcast, into the unexpanded A) as a copied A."""
    small, b, h0 = broadcast_inputs(T, 3, seed=T)
    h0 = h0 if with_h0 else None
    results = []
    for A in (small.expand(B, T, 2, 3, 4, 3, 3), small.expand(B, T, 2, 3, 4, 3, 3).clone()):
        h, h_T = matrix_scan(A, b, h0, True, chunk_size=chunk)
        up = torch.randn(h.shape, generator=torch.Generator().manual_seed(7), dtype=h.dtype)
        wrt = [x for x in (small, b, h0) if x is not None]
        results.append([h, h_T, *torch.autograd.grad((h * up).sum() + h_T.square().sum(), wrt)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    h_r, h_T_r = matrix_scan_reference(small.expand(B, T, 2, 3, 4, 3, 3), b, h0, True)
    torch.testing.assert_close(results[0][0], h_r)


def test_a_broadcast_packed_sequences():
    small, b, h0 = broadcast_inputs(10, 2)
    cu = torch.tensor([0, 4, 4, 10])
    A = small[:1].expand(1, 10, 2, 3, 4, 2, 2)
    got = matrix_scan(A, b[:1], h0[:1].expand(3, 2, 3, 4, 2), True, cu)
    want = matrix_scan_reference(A, b[:1], h0[:1].expand(3, 2, 3, 4, 2), True, cu)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w)


@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 80), N=st.integers(1, 4), extra=st.lists(st.integers(1, 3), max_size=2),
       chunk=st.one_of(st.none(), st.integers(1, 9)), with_h0=st.booleans())
def test_any_shape(T, N, extra, chunk, with_h0):
    A, b, h0 = inputs(T, N, extra=tuple(extra), seed=T)
    check(*run_both(A, b, h0 if with_h0 else None, chunk_size=chunk), torch.float64)


def test_no_initial_state_no_final_state():
    A, b, _ = inputs(63, 3)
    h, h_T = matrix_scan(A, b)
    assert h_T is None
    assert_close(h, matrix_scan_reference(A, b)[0], torch.float64)
    h, h_T = matrix_scan(A, b, output_final_state=True)
    assert torch.equal(h_T, h[:, -1])


def test_gradient_through_final_state_only():
    A, b, h0 = inputs(63, 3)
    grads = [torch.autograd.grad(fn(A, b, h0, True)[1].square().sum(), (A, b, h0))
             for fn in (matrix_scan, matrix_scan_reference)]
    assert_close(grads[0], grads[1], torch.float64)


def test_gradcheck_and_gradgradcheck():
    A, b, h0 = inputs(5, 3, extra=(2,), batch=1)
    fn = lambda A, b, h0: matrix_scan(A, b, h0, True, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (A, b, h0))
    assert torch.autograd.gradgradcheck(fn, (A, b, h0))
    cu = torch.tensor([0, 2, 2, 5])
    h0 = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda A, b, h0: matrix_scan(A, b, h0, True, cu, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (A, b, h0))


def test_zero_transitions_give_b():
    A, b, h0 = inputs(63, 3)
    zero = torch.zeros_like(A, requires_grad=True)
    h, h_T = matrix_scan(zero, b, h0, True)
    assert torch.equal(h, b)
    check(*run_both(zero, b, h0), torch.float64, "A = 0")


def test_identity_transitions_give_cumsum():
    _, b, h0 = inputs(300, 5)
    eye = torch.eye(5, dtype=torch.float64).expand(B, 300, E, 5, 5).clone().requires_grad_()
    h, h_T = matrix_scan(eye, b, h0, True)
    assert_close(h, h0.unsqueeze(1) + b.cumsum(1), torch.float64, "A = I")
    check(*run_both(eye, b, h0), torch.float64, "A = I")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_contracting_transitions_long(dtype):
    """A_t = U diag(σ) Vᵀ with σ ≤ 0.97: every step contracts, so states stay bounded."""
    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(B, 300, E, 5, 5, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(B, 300, E, 5, 5, generator=g, dtype=torch.float64))
    sigma = 0.5 + 0.47 * torch.rand(B, 300, E, 5, generator=g, dtype=torch.float64)
    A = (U * sigma.unsqueeze(-2)) @ V.transpose(-1, -2)  # (B, T, E, N, N)
    assert torch.linalg.eigvals(A).abs().max() < 1
    _, b, h0 = inputs(300, 5)
    A, b, h0 = (x.detach().to(dtype).requires_grad_() for x in (A, b, h0))
    fast, ref = run_both(A, b, h0)
    check(fast, ref, dtype, "contracting")
    bound = h0.norm(dim=-1).max() + b.norm(dim=-1).max() / (1 - 0.97)
    assert fast[0].norm(dim=-1).max() <= bound


def test_matches_associative_scan_of_the_affine_monoid():
    A, b, h0 = (x.detach() for x in inputs(63, 3))
    A_s, b_s = associative_scan(mo.matrix_affine_combine, (A, b))
    assert_close(matrix_scan(A, b, h0)[0], mo.matrix_affine_apply(A_s, b_s, h0), torch.float64)


@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("cu", [[0, 63], [0, 1, 8, 8, 30, 63], [0, 0, 63, 63]])
def test_cu_seqlens_equals_separate_runs(cu, with_h0):
    A, b, _ = inputs(63, 3, batch=1)
    g = torch.Generator().manual_seed(5)
    h0 = torch.randn(len(cu) - 1, E, 3, generator=g, dtype=torch.float64).requires_grad_() \
        if with_h0 else None
    cu_t = torch.tensor(cu, dtype=torch.int32)
    check(*run_both(A, b, h0, cu_t, chunk_size=3), torch.float64, f"cu_seqlens {cu}")
    h, h_T = matrix_scan(A, b, h0, True, cu_t)
    for i, (start, end) in enumerate(zip(cu[:-1], cu[1:])):
        h_i, h_T_i = matrix_scan(A[:, start:end], b[:, start:end],
                                 None if h0 is None else h0[i:i + 1], True)
        assert torch.allclose(h[:, start:end], h_i, rtol=1e-12, atol=1e-12)
        assert torch.allclose(h_T[i:i + 1], h_T_i, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision_is_computed_in_float32(dtype):
    A, b, h0 = inputs(63, 5, dtype)
    h, h_T = matrix_scan(A, b, h0, True)
    assert h.dtype == h_T.dtype == dtype
    h_r, h_T_r = matrix_scan_reference(*(x.detach().float() for x in (A, b, h0)), True)
    assert_close(h, h_r, dtype, "h")
    assert_close(h_T, h_T_r, dtype, "h_T")
    h.float().sum().backward()
    assert A.grad.dtype == b.grad.dtype == h0.grad.dtype == dtype


def test_zero_steps():
    A, b, h0 = inputs(0, 3)
    h, h_T = matrix_scan(A, b, h0, True)
    assert h.shape == b.shape and torch.equal(h_T, h0)
    h, h_T = matrix_scan(A[:1], b[:1], None, True, torch.tensor([0, 0]))
    assert h_T.shape == (1, E, 3) and not h_T.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_cuda_matches_cpu_reference(dtype):
    A, b, h0 = inputs(1000, 8, dtype)
    cpu = run_both(A, b, h0)[1]
    A, b, h0 = (x.detach().cuda().requires_grad_() for x in (A, b, h0))
    fast = run_both(A, b, h0)[0]
    check([fast[0].cpu(), fast[1].cpu(), [g.cpu() for g in fast[2]]], cpu, dtype, "cuda")


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize("args, kw, err, pattern", [
    (([[1.0]], _t(1, 2, 3)), {}, TypeError, r"A: expected a torch.Tensor, got list"),
    ((_t(1, 2, 3, 3, dtype=torch.long), _t(1, 2, 3)), {}, TypeError,
     r"A: expected a real floating dtype .*got torch.int64"),
    ((_t(1, 2, 3, 3, dtype=torch.complex64), _t(1, 2, 3)), {}, TypeError,
     r"A: expected a real floating dtype .*got torch.complex64"),
    ((_t(2, 3, 3), _t(2, 3)), {}, ValueError,
     r"A: expected shape \(B, T, ..., N, N\) with square N x N matrices, got \(2, 3, 3\)"),
    ((_t(1, 2, 3, 4), _t(1, 2, 3)), {}, ValueError, r"A: expected shape .*got \(1, 2, 3, 4\)"),
    ((_t(1, 2, 3, 3), _t(1, 2, 4)), {}, ValueError,
     r"b: expected shape \(B, T, ..., N\) = \(1, 2, 3\) to match A \(1, 2, 3, 3\), "
     r"got \(1, 2, 4\)"),
    ((_t(1, 2, 3, 3), _t(1, 2, 3, dtype=torch.float64)), {}, TypeError,
     r"b: expected dtype torch.float32 \(that of A\), got torch.float64"),
    ((_t(2, 2, 3, 3), _t(2, 2, 3), _t(3, 3)), {}, ValueError,
     r"initial_state: expected shape \(B, ..., N\) = \(2, 3\), got \(3, 3\)"),
    ((_t(2, 2, 3, 3), _t(2, 2, 3), _t(2, 3, dtype=torch.float64)), {}, TypeError,
     r"initial_state: expected dtype torch.float32 \(that of A\), got torch.float64"),
    ((_t(1, 5, 3, 3), _t(1, 5, 3), _t(1, 3)), {"cu_seqlens": torch.tensor([0, 2, 5])}, ValueError,
     r"initial_state: expected shape \(num_seqs, ..., N\) = \(2, 3\), got \(1, 3\)"),
    ((_t(2, 5, 3, 3), _t(2, 5, 3)), {"cu_seqlens": torch.tensor([0, 5])}, ValueError,
     r"cu_seqlens: .*batch size must be 1, got B=2"),
    ((_t(1, 5, 3, 3), _t(1, 5, 3)), {"cu_seqlens": torch.tensor([0, 6])}, ValueError,
     r"cu_seqlens: expected non-decreasing values from 0 to T=5"),
    ((_t(1, 5, 3, 3), _t(1, 5, 3)), {"chunk_size": 0}, ValueError,
     r"chunk_size: expected an integer >= 1 or None, got 0"),
])
def test_errors(args, kw, err, pattern):
    with pytest.raises(err, match=pattern):
        matrix_scan(*args, **kw)
    if "chunk_size" not in kw:
        with pytest.raises(err, match=pattern):
            matrix_scan_reference(*args, **kw)
