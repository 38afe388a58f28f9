"""selective_scan (Mamba's S6) against its plain-loop reference on both paths (fused numba kernel,
torch materialising path): outputs, final state and the gradient of every input, odd sizes,
fp32/fp64, both decay modes, cu_seqlens, padded steps; an independent oracle (linear_scan on
the materialised a, b, then the readout); the Mamba cell's own step; named errors."""
from __future__ import annotations

import pytest
import torch

import rnnlab
from rnnlab.ops import diagonal
from rnnlab.ops import selective as sel
from rnnlab.ops.diagonal import linear_scan
from rnnlab.ops.selective import selective_scan, selective_scan_reference

from ..helpers import assert_close

NAMES = ("x", "dt", "A", "Bm", "Cm", "initial_state")


@pytest.fixture(params=["numba", "torch"])
def path(request, monkeypatch):
    """Runs a test once per CPU path; the torch one with both numba switches off."""
    if request.param == "numba" and sel._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(sel, "USE_NUMBA", request.param == "numba")
    if request.param == "torch":
        monkeypatch.setattr(diagonal, "USE_NUMBA", False)
    assert sel.backend("cpu") == request.param
    return request.param


def make(B=2, T=7, H=5, N=7, dtype=torch.float32, rows=None, seed=0, init=True):
    """Mamba-like inputs: dt in [0.01, 0.51] (softplus-sized), A in [-2.1, -0.1]."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    return {"x": rand(B, T, H),
            "dt": torch.rand(B, T, H, generator=gen, dtype=dtype) * 0.5 + 0.01,
            "A": -torch.rand(H, N, generator=gen, dtype=dtype) * 2 - 0.1,
            "Bm": rand(B, T, N), "Cm": rand(B, T, N),
            "initial_state": rand(B if rows is None else rows, H, N) if init else None}


def forward_backward(fn, inputs, upstream=None, **kw):
    """``fn`` on fresh leaves, with upstream gradients on y AND h_T (random when None);
    returns ``(y, h_T, {name: grad})``."""
    leaves = {n: (x.clone().requires_grad_() if x is not None else None)
              for n, x in inputs.items()}
    y, hT = fn(**leaves, output_final_state=True, **kw)
    if upstream is None:
        gen = torch.Generator().manual_seed(1)
        upstream = (torch.randn(y.shape, generator=gen, dtype=y.dtype),
                    torch.randn(hT.shape, generator=gen, dtype=hT.dtype))
    ((y * upstream[0]).sum() + (hT * upstream[1]).sum()).backward()
    return y, hT, {n: x.grad for n, x in leaves.items() if x is not None}


def assert_parity(got, want, dtype):
    (y, hT, grads), (y_ref, hT_ref, grads_ref) = got, want
    assert y.dtype == y_ref.dtype and hT.dtype == hT_ref.dtype
    assert_close(y, y_ref, dtype, "y")
    assert_close(hT, hT_ref, dtype, "h_T")
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert_close(grads[name], grads_ref[name], dtype, f"d{name}")


def check(inputs, dtype=torch.float32, **kw):
    assert_parity(forward_backward(selective_scan, inputs, **kw),
                  forward_backward(selective_scan_reference, inputs, **kw), dtype)


@pytest.mark.parametrize("neg_eigval", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps", [1, 7, 63, 300, 130])  # 130: not a multiple of C = 64
def test_matches_reference(path, steps, dtype, neg_eigval):
    check(make(B=2, T=steps, H=5, N=7, dtype=dtype), dtype, neg_eigval=neg_eigval)


def test_without_initial_state_and_many_chunks(path, monkeypatch):
    monkeypatch.setattr(sel, "CHECKPOINT", 5)  # 23 steps = 4 full chunks and a partial one
    check(make(B=3, T=23, H=3, N=5, init=False))
    check(make(B=1, T=23, H=3, N=5, dtype=torch.float64), torch.float64, neg_eigval=True)


@pytest.mark.parametrize("neg_eigval", [False, True])
@pytest.mark.parametrize("init", [True, False])
def test_varlen_equals_per_sequence_runs(path, init, neg_eigval):
    cu = torch.tensor([0, 3, 3, 70, 71, 140], dtype=torch.int32)  # with an empty sequence
    inputs = make(B=1, T=140, H=3, N=5, dtype=torch.float64, rows=5, init=init)
    check(inputs, torch.float64, cu_seqlens=cu, neg_eigval=neg_eigval)
    gen = torch.Generator().manual_seed(2)
    gy = torch.randn(1, 140, 3, generator=gen, dtype=torch.float64)
    gT = torch.randn(5, 3, 5, generator=gen, dtype=torch.float64)
    y, hT, grads = forward_backward(selective_scan, inputs, (gy, gT), cu_seqlens=cu,
                                    neg_eigval=neg_eigval)
    parts = []
    for i, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        part = {n: (x[:, s:e] if x.dim() == 3 and n != "initial_state" else x)
                for n, x in inputs.items() if n not in ("A", "initial_state")}
        part["A"] = inputs["A"]
        part["initial_state"] = None if not init else inputs["initial_state"][i:i + 1]
        parts.append(forward_backward(selective_scan, part, (gy[:, s:e], gT[i:i + 1]),
                                      neg_eigval=neg_eigval))
    assert_close(y, torch.cat([p[0] for p in parts], 1), torch.float64, "y")
    assert_close(hT, torch.cat([p[1] for p in parts]), torch.float64, "h_T")
    for name in ("x", "dt", "Bm", "Cm"):
        assert_close(grads[name], torch.cat([p[2][name] for p in parts], 1), torch.float64, name)
    assert_close(grads["A"], sum(p[2]["A"] for p in parts), torch.float64, "A")
    if init:
        want = torch.cat([p[2]["initial_state"] for p in parts])
        assert_close(grads["initial_state"], want, torch.float64, "initial_state")


@pytest.mark.parametrize("neg_eigval", [False, True])
def test_padded_steps_leave_the_state_unchanged(path, neg_eigval):
    """dt = 0 gives a = 1 and no input: with Cm repeated there, y repeats exactly; trailing
    padding leaves the final state of the unpadded prefix."""
    inputs = make(B=2, T=90, H=3, N=5)
    pad = torch.zeros(90, dtype=torch.bool)
    pad[[10, 11, 12, 64, 65, 80]] = True  # two across the chunk boundary
    pad[85:] = True
    inputs["dt"][:, pad] = 0
    for t in pad.nonzero().flatten().tolist():
        inputs["Cm"][:, t] = inputs["Cm"][:, t - 1]
    check(inputs, neg_eigval=neg_eigval)
    y, hT = selective_scan(**inputs, output_final_state=True, neg_eigval=neg_eigval)
    for t in pad.nonzero().flatten().tolist():
        assert torch.equal(y[:, t], y[:, t - 1]), t
    prefix = {n: (x[:, :85] if x.dim() == 3 and n != "initial_state" else x)
              for n, x in inputs.items()}
    _, hT_prefix = selective_scan(**prefix, output_final_state=True, neg_eigval=neg_eigval)
    if path == "numba":
        assert torch.equal(hT, hT_prefix)
    assert_close(hT, hT_prefix, what="h_T")


def _materialised(x, dt, A, Bm, Cm, initial_state, output_final_state, neg_eigval=False):
    """Today's path, written out here: a, b (B, T, H, N), linear_scan, readout."""
    a = torch.exp(dt.unsqueeze(-1) * A)  # (B, T, H, N)
    a = 2 * a - 1 if neg_eigval else a
    b = (dt * x).unsqueeze(-1) * Bm.unsqueeze(2)  # (B, T, H, N)
    h, hT = linear_scan(a, b, initial_state, output_final_state)  # (B, T, H, N)
    return (h * Cm.unsqueeze(2)).sum(-1), hT  # (B, T, H)


@pytest.mark.parametrize("neg_eigval", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_independent_oracle_linear_scan(dtype, neg_eigval):
    inputs = make(B=3, T=130, H=9, N=11, dtype=dtype, seed=3)
    assert_parity(forward_backward(selective_scan, inputs, neg_eigval=neg_eigval),
                  forward_backward(_materialised, inputs, neg_eigval=neg_eigval), dtype)


def test_mamba_cell_sequential_engine(path):
    """The op plus the cell's D x skip equals the Mamba cell run step by step."""
    torch.manual_seed(0)
    cell = rnnlab.cells.get("mamba", 6, 5, state_size=7, allow_neg_eigval=True).double()
    inp = torch.randn(2, 70, 6, dtype=torch.float64)
    h0 = torch.randn(2, 5, 7, dtype=torch.float64)
    want, hT_want = rnnlab.Recurrent(cell, engine="sequential")(inp, h0)
    xin, dt, Bm, Cm = cell._split(cell.project(inp))
    y, hT = selective_scan(xin, dt, -torch.exp(cell.A_log), Bm, Cm, h0, True, neg_eigval=True)
    assert_close(y + cell.D * xin, want, torch.float64, "y")
    assert_close(hT, hT_want, torch.float64, "h_T")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(path, dtype):
    inputs = {n: x.to(dtype) for n, x in make(T=40).items()}
    y, hT = selective_scan(**inputs, output_final_state=True)
    assert y.dtype == dtype and hT.dtype == torch.float32
    want, hT_want = selective_scan_reference(**{n: x.float() for n, x in inputs.items()},
                                             output_final_state=True)
    assert_close(y, want.to(dtype), dtype, "y")
    assert_close(hT, hT_want, torch.float32, "h_T")
    check(inputs, dtype)


@pytest.mark.parametrize("neg_eigval", [False, True])
def test_gradcheck(path, neg_eigval):
    inputs = make(B=1, T=6, H=2, N=3, dtype=torch.float64, rows=2)
    cu = torch.tensor([0, 2, 6])
    leaves = tuple(inputs[n].requires_grad_() for n in NAMES)
    assert torch.autograd.gradcheck(
        lambda *a: selective_scan(*a, True, cu, neg_eigval), leaves)


def test_gradient_through_one_output_only(path):
    inputs = make(T=9, dtype=torch.float64)
    for pick in (0, 1):
        got, want = [], []
        for fn, grads in ((selective_scan, got), (selective_scan_reference, want)):
            leaves = {n: x.clone().requires_grad_() for n, x in inputs.items()}
            fn(**leaves, output_final_state=True)[pick].sum().backward()
            grads.extend(torch.zeros_like(leaves[n]) if leaves[n].grad is None  # unused: 0
                         else leaves[n].grad for n in NAMES)
        for name, a, b in zip(NAMES, got, want):
            assert_close(a, b, torch.float64, f"output {pick}: d{name}")


def test_uneven_channel_blocks(monkeypatch):
    """The kernels' split of the channels into blocks (used when there are few sequences)."""
    if sel._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(sel, "_blocks", lambda nseg, H, threads: min(3, H))
    check(make(B=2, T=70, H=13, N=5))
    check(make(B=1, T=70, H=13, N=5, rows=3), cu_seqlens=torch.tensor([0, 30, 30, 70]))


def test_layouts_and_empty(path):
    """Non-contiguous inputs, mixed fp32/fp64 (computed in fp64), no steps at all."""
    inputs = make(B=3, T=20, H=4, N=3)
    inputs["x"] = inputs["x"].transpose(0, 1).contiguous().transpose(0, 1)
    inputs["Bm"] = inputs["Bm"].double()
    y, hT = selective_scan(**inputs, output_final_state=True)
    assert y.dtype == torch.float32 and hT.dtype == torch.float64
    check(inputs)
    empty = {n: (x[:, :0] if x.dim() == 3 and n != "initial_state" else x)
             for n, x in inputs.items()}
    y, hT = selective_scan(**empty, output_final_state=True)
    assert y.shape == (3, 0, 4) and torch.equal(hT, inputs["initial_state"].double())


def test_backend_names_the_path(monkeypatch):
    monkeypatch.setattr(sel, "USE_NUMBA", False)
    assert sel.backend("cpu") == "torch"
    assert sel.backend("meta") == "torch"


X, D, A = torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), torch.zeros(3, 4)
BM = torch.zeros(2, 5, 4)


@pytest.mark.parametrize("args, kwargs, err, pattern", [
    (([0.0], D, A, BM, BM), {}, TypeError, r"x: expected a tensor of shape \(B, T, H\), got list"),
    ((X[0], D, A, BM, BM), {}, ValueError, r"x: expected .*\(B, T, H\), got \(5, 3\)"),
    ((X, D[:, :4], A, BM, BM), {}, ValueError, r"dt: expected shape \(B, T, H\) = \(2, 5, 3\)"),
    ((X, D, A[0], BM, BM), {}, ValueError, r"A: expected .*\(H, N\) = \(3, N\), got \(4,\)"),
    ((X, D, A[:2], BM, BM), {}, ValueError, r"A: expected shape \(H, N\) = \(3, 4\)"),
    ((X, D, A, BM[..., :3], BM), {}, ValueError, r"Bm: expected shape \(B, T, N\) = \(2, 5, 4\)"),
    ((X, D, A, BM, BM.long()), {}, TypeError, r"Cm: expected a floating dtype, got torch.int64"),
    ((X, D, A, BM, BM.to("meta")), {}, ValueError, r"Cm: expected device cpu"),
    ((X, D, A, BM, BM, torch.zeros(2, 3, 3)), {}, ValueError,
     r"initial_state: expected shape \(B, H, N\) = \(2, 3, 4\), got \(2, 3, 3\)"),
    ((X, D, A, BM, BM), {"cu_seqlens": torch.tensor([0, 5])}, ValueError, r"cu_seqlens: .*batch"),
    ((X[:1], D[:1], A, BM[:1], BM[:1], torch.zeros(1, 3, 4)),
     {"cu_seqlens": torch.tensor([0, 2, 5])}, ValueError,
     r"initial_state: expected shape \(N, H, N\).* = \(2, 3, 4\), got \(1, 3, 4\)"),
])
@pytest.mark.parametrize("fn", [selective_scan, selective_scan_reference])
def test_errors_name_the_argument(fn, args, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        fn(*args, **kwargs)
