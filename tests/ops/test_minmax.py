"""minmax_scan against its plain-loop reference: outputs, final state and every gradient (r, s,
initial_state), on both CPU paths (numba kernel, torch path), odd sizes, fp32/fp64, varlen;
ties split as torch.minimum / torch.maximum split them; identity (padding) steps; errors."""
from __future__ import annotations

import pytest
import torch

from rnnlab.ops import minmax as mm
from rnnlab.ops import numba_pool
from rnnlab.ops.minmax import minmax_scan, minmax_scan_reference

from ..helpers import assert_close

INF = float("inf")


@pytest.fixture(params=["numba", "torch"])
def path(request, monkeypatch):
    """Runs a test once per CPU path; the torch one with the numba switch turned off."""
    if request.param == "numba" and mm._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(mm, "USE_NUMBA", request.param == "numba")
    assert mm.backend("cpu") == request.param
    return request.param


def make(shape, dtype=torch.float64, rows=None, seed=0, init=True, grid=False):
    """r, s (B, T, ...), initial_state (rows, ...) or None. ``grid``: values in {-1, 0, 1}, so
    r_t == x_{t-1}, s_t == min(r_t, x_{t-1}) and x = 0 ties occur at every few steps."""
    gen = torch.Generator().manual_seed(seed)
    state = ((shape[0] if rows is None else rows),) + tuple(shape[2:])
    if grid:
        r, s, x0 = (torch.randint(-1, 2, sh, generator=gen).to(dtype) for sh in (shape, shape,
                                                                                state))
    else:
        r, s, x0 = (torch.randn(sh, generator=gen, dtype=torch.float64).to(dtype)
                    for sh in (shape, shape, state))
    return r, s, (x0 if init else None)


def upstream(x, xT, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (x, xT)]


def run(fn, r, s, x0=None, cu=None, grads=None):
    """x, x_T and the gradients of r, s (and x0) from upstream gradients on x AND x_T."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (r, s, x0)]
    x, xT = fn(leaves[0], leaves[1], leaves[2], True, cu)
    torch.autograd.backward((x, xT), upstream(x, xT) if grads is None else grads)
    return (x, xT) + tuple(t.grad for t in leaves if t is not None)


NAMES = ("x", "x_T", "dr", "ds", "dx0")


def check(r, s, x0=None, cu=None, tol_dtype=None, exact=None):
    """Parity with the reference; the numba kernel is bitwise equal (no arithmetic but halving
    and one addition per step, in the reference's order)."""
    fast, ref = run(minmax_scan, r, s, x0, cu), run(minmax_scan_reference, r, s, x0, cu)
    exact = mm.backend("cpu") == "numba" if exact is None else exact
    for name, a, b in zip(NAMES, fast, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert not torch.isnan(a).any(), name
        if exact:
            assert torch.equal(a, b), name
        assert_close(a, b, tol_dtype or r.dtype, name)
    return fast


@pytest.mark.parametrize("steps", [1, 7, 63, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init", [True, False])
def test_matches_reference(path, steps, dtype, init):
    check(*make((3, steps, 5), dtype, init=init))


@pytest.mark.parametrize("steps", [1, 7, 63, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_split_like_torch(path, steps, dtype):
    """On the {-1, 0, 1} grid most steps hold a tie of some kind, x_0 = 0 ties included."""
    r, s, x0 = make((2, steps, 3, 7), dtype, grid=True)
    check(r, s, x0)
    check(r, s, None)  # x_0 = 0 against r or s exactly 0


def test_tie_gradients_by_hand(path):
    """x_0 = 0, r = s = 0: x = max(min(0, 0), 0); each tie halves: ds = 1/2, dr = dx0 = 1/4."""
    zero = torch.zeros(1, 1, 1, dtype=torch.float64)
    for fn in (minmax_scan, minmax_scan_reference):
        x, xT, dr, ds, dx0 = run(fn, zero, zero, zero[0], grads=(torch.ones_like(zero),
                                                                  torch.zeros_like(zero[0])))
        assert (float(dr), float(ds), float(dx0)) == (0.25, 0.5, 0.25), fn.__name__


def test_odd_feature_shapes(path):
    check(*make((2, 29, 3, 11), torch.float32))
    check(*make((4, 13), torch.float64))  # no feature dims at all


@pytest.mark.parametrize("init", [True, False])
@pytest.mark.parametrize("grid", [False, True])
def test_varlen_equals_per_sequence_runs(path, init, grid):
    cu = torch.tensor([0, 3, 3, 40, 41, 70], dtype=torch.int32)  # with an empty sequence
    r, s, x0 = make((1, 70, 2, 9), torch.float64, rows=5, init=init, grid=grid)
    check(r, s, x0, cu)
    gx, gT = upstream(*minmax_scan(r, s, x0, True, cu))
    packed = run(minmax_scan, r, s, x0, cu, (gx, gT))
    spans = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
    parts = [run(minmax_scan, r[:, a:b], s[:, a:b], None if x0 is None else x0[i:i + 1],
                 grads=(gx[:, a:b], gT[i:i + 1])) for i, (a, b) in enumerate(spans)]
    for k, name in enumerate(NAMES[:len(packed)]):
        dim = 0 if name in ("x_T", "dx0") else 1
        assert_close(packed[k], torch.cat([p[k] for p in parts], dim), torch.float64, name)


@pytest.mark.parametrize("grid", [False, True])
def test_identity_steps_leave_the_state_unchanged(path, grid):
    """r = +inf, s = -inf (padding) at random steps, the first and the whole of the second
    sequence: the state passes exactly, no NaN anywhere, and r, s there get no gradient."""
    cu = torch.tensor([0, 30, 45, 80])
    r, s, x0 = make((1, 80, 6), torch.float64, rows=3, grid=grid)
    pad = torch.rand(1, 80, 6, generator=torch.Generator().manual_seed(3)) < 0.3
    pad[:, 0] = pad[:, 30:45] = True
    r, s = r.masked_fill(pad, INF), s.masked_fill(pad, -INF)
    x, xT, dr, ds, dx0 = check(r, s, x0, cu)
    prev = torch.cat([x0[:1, None], x[:, :-1]], 1)  # (1, T, 6)
    prev[:, 30], prev[:, 45] = x0[1], x0[2]
    assert torch.equal(x[pad], prev[pad])
    assert torch.equal(xT[1], x0[1])
    assert not dr[pad].any() and not ds[pad].any()


def test_all_identity_steps(path):
    r = torch.full((2, 9, 4), INF, dtype=torch.float64)
    _, _, x0 = make((2, 9, 4))
    x, xT, dr, ds, dx0 = check(r, -r, x0)
    assert torch.equal(x, x0[:, None].expand_as(x)) and torch.equal(xT, x0)
    gx, gT = upstream(x, xT)
    assert_close(dx0, gx.sum(1) + gT, torch.float64, "dx0")
    assert not dr.any() and not ds.any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(path, dtype):
    r, s, _ = make((2, 33, 5), torch.float32)
    r, s = r.to(dtype), s.to(dtype)
    check(r, s, None, tol_dtype=dtype)
    x, xT = minmax_scan(r, s, output_final_state=True)
    assert x.dtype == dtype and xT.dtype == torch.float32
    assert torch.equal(x, minmax_scan_reference(r.float(), s.float())[0].to(dtype))


def test_gradient_through_one_output_only(path):
    r, s, x0 = make((2, 9, 4), grid=True)
    for pick in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (r, s, x0)]
        ref_leaves = [t.clone().requires_grad_() for t in (r, s, x0)]
        minmax_scan(*leaves, True)[pick].sum().backward()
        minmax_scan_reference(*ref_leaves, True)[pick].sum().backward()
        for a, b in zip(leaves, ref_leaves):
            assert_close(a.grad, b.grad, torch.float64, f"output {pick}")


def test_layouts_and_empty(path):
    """Permuted inputs, no steps at all."""
    r, s, x0 = make((20, 3, 4))
    check(r.transpose(0, 1), s.transpose(0, 1), x0[:3].clone())
    x, xT = minmax_scan(r[:3, :0], s[:3, :0], x0[:3], output_final_state=True)
    assert x.shape == (3, 0, 4) and torch.equal(xT, x0[:3])


def test_uneven_feature_blocks(monkeypatch):
    """The kernels' split of a row into feature blocks (used when few sequences)."""
    if mm._numba is None:
        pytest.skip("numba is not installed")
    widths = []  # the row widths the kernels asked to split: proves the split was used

    def three_blocks(nseg, feats, threads):
        widths.append(feats)
        return min(3, feats)

    monkeypatch.setattr(numba_pool, "feature_blocks", three_blocks)
    check(*make((1, 30, 130), torch.float32, grid=True))
    assert set(widths) == {130}


X = torch.zeros(2, 5, 3)


@pytest.mark.parametrize("args, kwargs, err, pattern", [
    ((X, torch.zeros(2, 5, 4)), {}, ValueError, r"s: expected shape \(2, 5, 3\).*got \(2, 5, 4\)"),
    ((torch.zeros(2), torch.zeros(2)), {}, ValueError, r"r: expected shape \(B, T, \.\.\.\)"),
    ((X.long(), X), {}, TypeError, r"r: expected a real floating dtype, got torch.int64"),
    ((X, X.to(torch.complex64)), {}, TypeError, r"s: expected a real floating dtype"),
    ((X, [[0.0]]), {}, TypeError, r"s: expected a torch.Tensor, got list"),
    ((X.to("meta"), X), {}, ValueError, r"s: expected device meta \(that of r\), got cpu"),
    ((X, X, torch.zeros(3, 3)), {}, ValueError,
     r"initial_state: expected shape \(B, \.\.\.\) = \(2, 3\), got \(3, 3\)"),
    ((X, X), {"cu_seqlens": torch.tensor([0, 5])}, ValueError, r"cu_seqlens: .*batch size"),
    ((X[:1], X[:1], torch.zeros(1, 3)), {"cu_seqlens": torch.tensor([0, 2, 5])}, ValueError,
     r"initial_state: expected shape \(N, \.\.\.\) .* = \(2, 3\), got \(1, 3\)"),
])
@pytest.mark.parametrize("fn", [minmax_scan, minmax_scan_reference])
def test_errors_name_the_argument(fn, args, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        fn(*args, **kwargs)
