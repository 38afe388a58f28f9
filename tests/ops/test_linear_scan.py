"""linear_scan against its plain-loop reference: outputs, final state and every gradient, on
both CPU paths (numba kernel and torch chunked scan), odd sizes, every dtype, broadcast a,
varlen; gradcheck of the analytic backward; errors that name the argument."""
from __future__ import annotations

import pytest
import torch

from rnnlab.ops import diagonal as ls
from rnnlab.ops import numba_pool
from rnnlab.ops.diagonal import linear_scan, linear_scan_reference

from ..helpers import assert_close

REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64,
           torch.float32: torch.float32, torch.float64: torch.float64}


@pytest.fixture(params=["numba", "torch"])
def path(request, monkeypatch):
    """Runs a test once per CPU path; the torch one with the numba switch turned off."""
    if request.param == "numba" and ls._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(ls, "USE_NUMBA", request.param == "numba")
    assert ls.backend("cpu") == request.param
    return request.param


def make(a_shape, b_shape, dtype, rows=None, seed=0, init=True):
    """a (|a| < 1, so long scans stay bounded), b, initial_state (rows, ...) or None."""
    gen = torch.Generator().manual_seed(seed)
    real = REAL_OF.get(dtype, dtype)
    mag = torch.rand(a_shape, generator=gen, dtype=torch.float64) * 0.7 + 0.3
    if dtype.is_complex:
        phase = torch.rand(a_shape, generator=gen, dtype=torch.float64) * 6.3
        a = torch.polar(mag, phase).to(dtype)
    else:
        sign = torch.randint(0, 2, a_shape, generator=gen, dtype=torch.float64) * 2 - 1
        a = (mag * sign).to(dtype)
    b = torch.randn(b_shape, generator=gen, dtype=real).to(dtype)
    if dtype.is_complex:
        b = b + 1j * torch.randn(b_shape, generator=gen, dtype=real)
    rows = b_shape[0] if rows is None else rows
    h0 = torch.randn((rows,) + tuple(b_shape[2:]), generator=gen, dtype=real).to(dtype)
    if dtype.is_complex:
        h0 = h0 + 1j * torch.randn(h0.shape, generator=gen, dtype=real)
    return a, b, (h0 if init else None)


def upstream(h, hT, seed=1):
    """Random gradients for h and h_T (complex where they are)."""
    gen, grads = torch.Generator().manual_seed(seed), []
    for out in (h, hT):
        grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        grads.append((grad + 1j * grad.flip(-1) if out.is_complex() else grad).to(out.dtype))
    return grads


def run(fn, a, b, h0=None, cu=None, grads=None):
    """Outputs and gradients of a, b, h0 from upstream gradients on h AND h_T."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (a, b, h0)]
    h, hT = fn(leaves[0], leaves[1], leaves[2], True, cu)
    grads = upstream(h, hT) if grads is None else grads
    torch.autograd.backward((h, hT), grads)
    return (h, hT) + tuple(x.grad for x in leaves if x is not None)


def check(a, b, h0=None, cu=None, tol_dtype=None):
    fast, ref = run(linear_scan, a, b, h0, cu), run(linear_scan_reference, a, b, h0, cu)
    tol_dtype = tol_dtype or REAL_OF.get(b.dtype, b.dtype)
    for name, x, y in zip(("h", "h_T", "da", "db", "dh0"), fast, ref):
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert_close(x, y, tol_dtype, name)


@pytest.mark.parametrize("steps", [1, 7, 63, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64,
                                   torch.complex128])
def test_matches_reference(path, steps, dtype):
    check(*make((3, steps, 5), (3, steps, 5), dtype))


@pytest.mark.parametrize("a_feats, b_feats", [
    ((3, 7), (3, 7)),          # two feature dims, like b
    ((3, 1), (3, 7)),          # broadcast over 7 (< 16: expanded, summed back by autograd)
    ((2, 1, 1), (2, 4, 5)),    # per-head decay over K x V = 20 (broadcast kernel)
    ((1, 1), (3, 17)),         # one decay per step for all features
    ((1, 6), (3, 6)),          # broadcast over a leading feature dim (expanded)
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128])
def test_feature_shapes_and_broadcast(path, a_feats, b_feats, dtype):
    check(*make((2, 63) + a_feats, (2, 63) + b_feats, dtype))


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_edge_decays(path, value):
    """a = 0 resets every step (h = b); a = 1 is a running sum."""
    _, b, h0 = make((2, 40, 6), (2, 40, 6), torch.float64)
    a = torch.full_like(b, value)
    check(a, b, h0)
    h, hT = linear_scan(a, b, h0, output_final_state=True)
    want = b if value == 0 else h0.unsqueeze(1) + b.cumsum(1)
    assert_close(h, want, torch.float64, "h")
    assert_close(hT, want[:, -1], torch.float64, "h_T")


@pytest.mark.parametrize("init", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex128])
def test_varlen_equals_per_sequence_runs(path, init, dtype):
    cu = torch.tensor([0, 3, 3, 40, 41, 70], dtype=torch.int32)  # with an empty sequence
    a, b, h0 = make((1, 70, 2, 1), (1, 70, 2, 16), dtype, rows=5, init=init)
    check(a, b, h0, cu)
    gh, gT = upstream(*linear_scan(a, b, h0, True, cu))
    packed = run(linear_scan, a, b, h0, cu, (gh, gT))
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    parts = [run(linear_scan, a[:, s:e], b[:, s:e], None if h0 is None else h0[i:i + 1],
                 grads=(gh[:, s:e], gT[i:i + 1])) for i, (s, e) in enumerate(spans)]
    for k, name in enumerate(("h", "h_T", "da", "db", "dh0")[:len(packed)]):
        dim = 0 if name in ("h_T", "dh0") else 1
        assert_close(packed[k], torch.cat([p[k] for p in parts], dim), REAL_OF[dtype], name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(path, dtype):
    a, b, _ = make((2, 63, 5), (2, 63, 5), torch.float32)
    a, b = a.to(dtype), b.to(dtype)
    check(a, b, None, tol_dtype=dtype)
    h, hT = linear_scan(a, b, output_final_state=True)
    assert h.dtype == dtype and hT.dtype == torch.float32
    want, _ = linear_scan_reference(a.float(), b.float())  # the same sums in fp32
    assert_close(h, want.to(dtype), dtype, "h")


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("a_feats, b_feats", [((3,), (3,)), ((1, 1), (2, 16))])
def test_gradcheck(path, dtype, a_feats, b_feats):
    a, b, h0 = make((2, 5) + a_feats, (2, 5) + b_feats, dtype)
    inputs = tuple(x.requires_grad_() for x in (a, b, h0))
    assert torch.autograd.gradcheck(lambda *x: linear_scan(*x, output_final_state=True), inputs)


def test_gradcheck_varlen(path):
    a, b, h0 = make((1, 6, 2), (1, 6, 2), torch.complex128, rows=3)
    cu = torch.tensor([0, 2, 2, 6])
    inputs = tuple(x.requires_grad_() for x in (a, b, h0))
    assert torch.autograd.gradcheck(lambda *x: linear_scan(*x, True, cu), inputs)


def test_gradient_through_one_output_only(path):
    a, b, h0 = make((2, 9, 4), (2, 9, 4), torch.float64)
    for pick in (0, 1):
        leaves = [x.clone().requires_grad_() for x in (a, b, h0)]
        ref_leaves = [x.clone().requires_grad_() for x in (a, b, h0)]
        linear_scan(*leaves, True)[pick].sum().backward()
        linear_scan_reference(*ref_leaves, True)[pick].sum().backward()
        for x, y in zip(leaves, ref_leaves):
            assert_close(x.grad, y.grad, torch.float64, f"output {pick}")


def test_layouts_and_views(path):
    """Permuted b, a conj view, real a with complex b, no steps at all."""
    a, b, h0 = make((3, 20, 4), (3, 20, 4), torch.complex128)
    check(a.conj(), b.transpose(0, 1).contiguous().transpose(0, 1), h0)
    check(a.real, b, h0)
    h, hT = linear_scan(a[:, :0], b[:, :0], h0, output_final_state=True)
    assert h.shape == (3, 0, 4) and torch.equal(hT, h0)


def test_uneven_feature_blocks(monkeypatch):
    """The kernels' split of a row into feature blocks (used when few sequences)."""
    if ls._numba is None:
        pytest.skip("numba is not installed")
    widths = []  # the row widths the kernels asked to split: proves the split was used

    def three_blocks(nseg, groups, threads):
        widths.append(groups)
        return min(3, groups)

    monkeypatch.setattr(numba_pool, "feature_blocks", three_blocks)
    check(*make((1, 30, 130), (1, 30, 130), torch.float32))
    check(*make((1, 30, 5, 1), (1, 30, 5, 16), torch.float32))
    assert set(widths) == {130, 5}


def test_benchmark_smoke():
    """`rnnlab bench scan` runs end to end on tiny sizes and gives JSON (no timing asserted)."""
    import io
    import json

    from rich.console import Console

    from rnnlab.benchmarks import scan
    result = scan.run(batch=2, lengths=(8,), width=3, repeats=1)
    json.dumps(result)
    out = io.StringIO()
    scan.print_table(result, Console(file=out, width=200))
    assert "linear_scan" in out.getvalue() and result["rows"][0]["T"] == 8


def test_backend_names_the_path(monkeypatch):
    monkeypatch.setattr(ls, "USE_NUMBA", False)
    assert ls.backend("cpu") == "torch"
    assert ls.backend("meta") == "torch"


def test_the_switch_picks_the_path_that_runs(path, monkeypatch):
    """``diagonal.USE_NUMBA`` (set by the fixture) decides which module's forward and backward
    run: the other path's functions are made to fail."""
    def refuse(*args):
        raise AssertionError("the other path ran")

    other = ("torch_forward", "torch_backward") if path == "numba" else \
        ("numba_forward", "numba_backward")
    for name in other:
        monkeypatch.setattr(ls, name, refuse)
    check(*make((2, 9, 4), (2, 9, 4), torch.float64))


X = torch.zeros(2, 5, 3)


@pytest.mark.parametrize("args, kwargs, err, pattern", [
    ((torch.zeros(2, 5, 4), X), {}, ValueError, r"a: expected shape \(2, 5, 3\).*got \(2, 5, 4\)"),
    ((torch.zeros(2, 5), X), {}, ValueError, r"a: expected shape .*got \(2, 5\)"),
    ((X, torch.zeros(2)), {}, ValueError, r"b: expected shape \(B, T, \.\.\.\).*got \(2,\)"),
    ((X.long(), X), {}, TypeError, r"a: expected a floating or complex dtype, got torch.int64"),
    ((X, X.int()), {}, TypeError, r"b: expected a floating or complex dtype, got torch.int32"),
    ((X, [[0.0]]), {}, TypeError, r"b: expected a torch.Tensor, got list"),
    ((X.to("meta"), X), {}, ValueError, r"b: expected device meta \(that of a\), got cpu"),
    ((X, X, torch.zeros(3, 3)), {}, ValueError,
     r"initial_state: expected shape \(B, \.\.\.\) = \(2, 3\), got \(3, 3\)"),
    ((X, X, torch.zeros(2, 3, dtype=torch.long)), {}, TypeError, r"initial_state: .*int64"),
    ((X, X), {"cu_seqlens": torch.tensor([0, 5])}, ValueError, r"cu_seqlens: .*batch size"),
    ((X[:1], X[:1]), {"cu_seqlens": torch.tensor([0, 6])}, ValueError,
     r"cu_seqlens: expected non-decreasing values from 0 to T=5"),
    ((X[:1], X[:1]), {"cu_seqlens": torch.tensor([0.0, 5.0])}, TypeError, r"cu_seqlens: .*integer"),
    ((X[:1], X[:1], torch.zeros(1, 3)), {"cu_seqlens": torch.tensor([0, 2, 5])}, ValueError,
     r"initial_state: expected shape \(N, \.\.\.\) .* = \(2, 3\), got \(1, 3\)"),
])
@pytest.mark.parametrize("fn", [linear_scan, linear_scan_reference])
def test_errors_name_the_argument(fn, args, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        fn(*args, **kwargs)


def test_the_numba_kernel_leaves_torch_thread_count_alone():
    """numba's OpenMP pool shares the runtime with torch; starting it must not change the
    thread count torch uses (the arena runs single-threaded workers)."""
    import subprocess
    import sys
    code = ("import torch; torch.set_num_threads(1); from rnnlab.ops import linear_scan; "
            "a = torch.rand(2, 50, 8, requires_grad=True); b = torch.randn(2, 50, 8); "
            "linear_scan(a, b)[0].sum().backward(); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
