"""Chunkwise stabilized mLSTM vs its loop reference: outputs, all three final-state leaves and
every gradient; padded (identity) steps; gates of +-50; large and negative initial stabilizers;
cu_seqlens vs per-sequence runs; named errors; and parity with rnnlab's mLSTM cell."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import rnnlab
from rnnlab.ops.mlstm import mlstm_chunkwise, mlstm_chunkwise_reference

from ..helpers import TOL, assert_close, rel_err

INPUTS = ("q", "k", "v", "i", "log_f")
STATE = ("C0", "n0", "m0")


def make(B=2, T=7, H=3, K=5, V=7, dtype=torch.float32, rows=None, seed=0, m0=None):
    """Random inputs: k scaled by K^-1/2, i ~ N(0, 1), log_f = logsigmoid(N(3, 1)), and a
    random initial state (m0 ~ N(0, 1) unless given)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    R = B if rows is None else rows
    m = rand(R, H) if m0 is None else torch.full((R, H), float(m0), dtype=dtype)
    return {"q": rand(B, T, H, K), "k": rand(B, T, H, K) * K ** -0.5, "v": rand(B, T, H, V),
            "i": rand(B, T, H), "log_f": F.logsigmoid(rand(B, T, H) + 3),
            "initial_state": (rand(R, H, K, V), rand(R, H, K).abs(), m)}


def forward_backward(fn, inputs, upstream=None, **kw):
    """Run ``fn`` on fresh leaves with upstream gradients on h and each state leaf (random when
    None); returns ``(h, state, {name: grad})`` over the inputs and the initial-state leaves."""
    leaves = {n: inputs[n].clone().requires_grad_() for n in INPUTS}
    state = tuple(x.clone().requires_grad_() for x in inputs["initial_state"])
    h, final = fn(**leaves, initial_state=state, output_final_state=True, **kw)
    if upstream is None:
        gen = torch.Generator().manual_seed(1)
        upstream = tuple(torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
                         for x in (h, *final))  # the same draws for every dtype
    loss = sum((x * u).sum() for x, u in zip((h, *final), upstream))
    loss.backward()
    named = dict(leaves, **dict(zip(STATE, state)))
    return h, final, {n: (x.grad if x.grad is not None else torch.zeros_like(x))
                      for n, x in named.items()}


def assert_parity(inputs, dtype, **kw):
    """Chunkwise == reference on h, (C, n, m) and every gradient. The reference runs in fp64 on
    the same (widened) inputs: the truth, so fp32 rounding is not counted twice."""
    h, S, grads = forward_backward(mlstm_chunkwise, inputs, **kw)
    h_ref, S_ref, grads_ref = forward_backward(mlstm_chunkwise_reference,
                                               _cast(inputs, torch.float64))
    assert h.dtype == inputs["q"].dtype and all(x.dtype == dtype for x in S)
    assert_close(h, h_ref, dtype, "h")
    for name, x, y in zip(STATE, S, S_ref):
        assert_close(x, y, dtype, f"final {name[0]}")
    for name in grads:
        assert torch.isfinite(grads[name]).all(), f"d{name} not finite"
        assert_close(grads[name], grads_ref[name], dtype, f"d{name}")
    return h, S, grads


def _cast(inputs, dtype):
    return {n: (tuple(t.to(dtype) for t in x) if isinstance(x, tuple) else x.to(dtype))
            for n, x in inputs.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [16, None])
@pytest.mark.parametrize("T", [1, 7, 63, 300])
def test_chunkwise_matches_reference(T, chunk_size, dtype):
    assert_parity(make(T=T, dtype=dtype, seed=T), dtype, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 5, 64, 300])
def test_any_chunk_size(chunk_size):
    assert_parity(make(T=130, K=12, V=20, dtype=torch.float64), torch.float64,
                  chunk_size=chunk_size)


@pytest.mark.parametrize("m0", [30.0, -30.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_and_negative_initial_stabilizer(m0, dtype):
    """m0 = 30 dominates the first steps, then input gates ramping up to ~45 overtake it
    mid-sequence; m0 = -30 is overtaken at once. Both must give the reference's m, not just
    its h. q, k >= 0 keep n~^T q away from 0 (with exp(-m) ~ 1e-13 nothing else bounds the
    normaliser, and h would be ill-conditioned in any precision)."""
    inputs = make(T=100, dtype=dtype, m0=m0)
    ramp = torch.linspace(0, 45, 100, dtype=dtype)[None, :, None]  # (1, T, 1)
    inputs.update(q=inputs["q"].abs(), k=inputs["k"].abs(), i=inputs["i"] + ramp)
    assert_parity(inputs, dtype, chunk_size=16)


def _pad(inputs, where):
    """Mark the steps in ``where`` (a bool (T,)) as padding: i = -inf, log_f = 0."""
    w = where[None, :, None]
    return dict(inputs, i=inputs["i"].masked_fill(w, -math.inf),
                log_f=inputs["log_f"].masked_fill(w, 0.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_steps_are_identities(dtype):
    """Padding (i = -inf, log_f = 0) at the start, inside and across whole chunks leaves the
    state as the unpadded sequence's, with finite h and gradients everywhere."""
    inputs = make(T=90, dtype=dtype)
    pad = torch.zeros(90, dtype=torch.bool)
    pad[:3], pad[20:45], pad[60::7], pad[-5:] = True, True, True, True
    padded = _pad(inputs, pad)
    h, S, grads = assert_parity(padded, dtype, chunk_size=8)
    kept = {n: (x[:, ~pad] if n in INPUTS else x) for n, x in inputs.items()}
    h_kept, S_kept = mlstm_chunkwise_reference(**kept, output_final_state=True)
    for name, x, y in zip(STATE, S, S_kept):
        assert_close(x, y, dtype, f"final {name[0]}")
    assert_close(h[:, ~pad], h_kept, dtype, "h at kept steps")
    assert grads["i"][:, pad].abs().max() == 0  # no gradient reaches a padded input gate


def test_empty_state_then_padding_then_inputs():
    """The monoid's identity state (C = n = 0, m = -inf), then padding, then inputs: no
    -inf - (-inf) anywhere, forward or backward."""
    inputs = make(T=40, dtype=torch.float64, m0=-math.inf)
    inputs["initial_state"] = tuple(x * 0 if x.dim() > 2 else x for x in inputs["initial_state"])
    pad = torch.zeros(40, dtype=torch.bool)
    pad[:20] = True
    assert_parity(_pad(inputs, pad), torch.float64, chunk_size=8)


@pytest.mark.parametrize("m0", [0.0, None])
def test_all_padding_returns_the_initial_state_exactly(m0):
    inputs = _pad(make(T=40, m0=m0), torch.ones(40, dtype=torch.bool))
    h, S, grads = forward_backward(mlstm_chunkwise, inputs, chunk_size=16)
    for x, y in zip(S, inputs["initial_state"]):
        assert torch.equal(x, y)
    assert torch.isfinite(h).all() and all(torch.isfinite(g).all() for g in grads.values())


def _extreme(kind, T=80, seed=3):
    """Gates of +-50: i = +50 with forget pre-activation -50 (log_f ~ -50); i = -50 with -50;
    i = +50 with +50 (log_f ~ -2e-22: nothing is forgotten); random signs for both. A jitter
    N(0, 0.1) keeps the stabilizer's max free of exact ties (with log_f rounding to 0, m + log_f
    would equal an earlier i exactly, a kink where any split of dm is a valid subgradient).
    q, k >= 0 keep n~^T q away from 0, where h is ill-conditioned in any precision."""
    inputs = make(T=T, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    shape = inputs["i"].shape
    sign = torch.randint(0, 2, (2, *shape), generator=gen).float() * 2 - 1  # (2, B, T, H)
    i, f = {"write_forget": (50.0, -50.0), "quiet_forget": (-50.0, -50.0),
            "write_keep": (50.0, 50.0), "mixed": (50 * sign[0], 50 * sign[1])}[kind]
    jitter = 0.1 * torch.randn(2, *shape, generator=gen)  # (2, B, T, H)
    return dict(inputs, q=inputs["q"].abs(), k=inputs["k"].abs(), i=i + jitter[0],
                log_f=F.logsigmoid(f + jitter[1]))


def _assert_grads_scaled(grads, ref, dtype):
    """Each gradient against the reference's, relative to its own norm or, where it nearly
    vanishes (dq when one write dominates, h = v sign(q^T k): zero up to e^-50), to 1% of the
    norm of all gradients."""
    scale = sum(float(g.double().norm()) ** 2 for g in ref.values()) ** 0.5
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"d{name} not finite"
        r = ref[name].to(g.dtype)
        err = float((g - r).double().norm()) / max(float(r.double().norm()), 1e-2 * scale)
        assert err <= TOL[dtype], f"d{name}: relative error {err:.3e} > {TOL[dtype]:.0e}"


@pytest.mark.parametrize("kind", ["write_forget", "quiet_forget", "write_keep", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_gates_are_finite_and_exact(kind, dtype):
    """The op in ``dtype`` against the reference in fp64: h, (C, n, m), every gradient."""
    inputs = _cast(_extreme(kind), dtype)
    h, S, grads = forward_backward(mlstm_chunkwise, inputs, chunk_size=16)
    h_ref, S_ref, grads_ref = forward_backward(mlstm_chunkwise_reference,
                                               _cast(inputs, torch.float64))
    assert all(torch.isfinite(x).all() for x in (h, *S))
    assert_close(h, h_ref, dtype, "h")
    for name, x, y in zip(STATE, S, S_ref):
        assert_close(x, y, dtype, f"final {name[0]}")
    _assert_grads_scaled(grads, grads_ref, dtype)


def test_defaults_and_empty():
    inputs = make(T=9)
    state = inputs.pop("initial_state")
    h, S = mlstm_chunkwise(**inputs)
    assert S is None and h.shape == (2, 9, 3, 7)
    zeros = tuple(torch.zeros_like(x) for x in state)
    h0, S0 = mlstm_chunkwise(**inputs, initial_state=zeros, output_final_state=True)
    assert_close(h, h0, torch.float32, "h")
    empty = make(T=0)
    h, S = mlstm_chunkwise(**empty, output_final_state=True)
    assert h.shape == (2, 0, 3, 7)
    assert all(torch.equal(x, y) for x, y in zip(S, empty["initial_state"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    inputs = {n: x.to(dtype) for n, x in make(T=50).items() if n != "initial_state"}
    h, S = mlstm_chunkwise(**inputs, output_final_state=True, chunk_size=16)
    h_ref, S_ref = mlstm_chunkwise_reference(**inputs, output_final_state=True)
    assert h.dtype == dtype and all(x.dtype == torch.float32 for x in S)
    assert_close(h, h_ref, dtype, "h")
    assert_close(S, S_ref, torch.float32, "state")


def _split(inputs, bounds):
    """Per-sequence inputs of a packed batch: time slices and rows of the initial state."""
    for j, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = {n: inputs[n][:, s:e] for n in INPUTS}
        yield dict(part, initial_state=tuple(x[j:j + 1] for x in inputs["initial_state"]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [[0, 5, 5, 40, 41, 110], [0, 300]])
def test_cu_seqlens_equals_per_sequence_runs(bounds, dtype):
    """Packed sequences == each run alone from its row of the initial state: h, (C, n, m) and,
    with the same upstream gradients, every input and initial-state gradient."""
    cu = torch.tensor(bounds, dtype=torch.int32)
    inputs = make(B=1, T=bounds[-1], dtype=dtype, rows=len(bounds) - 1, seed=len(bounds))
    gen = torch.Generator().manual_seed(2)
    up = [torch.randn(inputs["v"].shape, generator=gen, dtype=dtype)]  # (1, T, H, V)
    up += [torch.randn(x.shape, generator=gen, dtype=dtype) for x in inputs["initial_state"]]
    h, S, grads = forward_backward(mlstm_chunkwise, inputs, up, cu_seqlens=cu, chunk_size=16)
    runs = [forward_backward(mlstm_chunkwise_reference, part,
                             (up[0][:, s:e], *(u[j:j + 1] for u in up[1:])))
            for j, (part, s, e) in enumerate(zip(_split(inputs, bounds), bounds, bounds[1:]))]
    assert_close(h, torch.cat([r[0] for r in runs], 1), dtype, "h")
    for leaf, name in enumerate(STATE):
        assert_close(S[leaf], torch.cat([r[1][leaf] for r in runs]), dtype, f"final {name[0]}")
    for name in (*INPUTS, *STATE):
        dim = 0 if name in STATE else 1
        assert_close(grads[name], torch.cat([r[2][name] for r in runs], dim), dtype, f"d{name}")


def test_reference_cu_seqlens_equals_per_sequence_runs():
    bounds = [0, 3, 20, 20, 33]
    inputs = make(B=1, T=33, dtype=torch.float64, rows=4)
    h, S = mlstm_chunkwise_reference(**inputs, cu_seqlens=torch.tensor(bounds),
                                     output_final_state=True)
    runs = [mlstm_chunkwise_reference(**part, output_final_state=True)
            for part in _split(inputs, bounds)]
    assert_close(h, torch.cat([r[0] for r in runs], 1), torch.float64, "h")
    for leaf in range(3):
        assert_close(S[leaf], torch.cat([r[1][leaf] for r in runs]), torch.float64, "state")


def _bad(**changes):
    inputs = make(T=4)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("fn", [mlstm_chunkwise, mlstm_chunkwise_reference])
@pytest.mark.parametrize("kwargs, err, pattern", [
    (_bad(q=torch.randn(2, 4, 5)), ValueError, r"q: expected a tensor of shape \(B, T, H, K\)"),
    (_bad(q=[1.0]), TypeError, r"q: expected a tensor of shape .*got list"),
    (_bad(k=torch.randn(2, 4, 3, 6)), ValueError,
     r"k: expected shape \(B, T, H, K\) = \(2, 4, 3, 5\), got \(2, 4, 3, 6\)"),
    (_bad(v=torch.randn(2, 5, 3, 7)), ValueError, r"v: expected shape \(B, T, H, V\)"),
    (_bad(i=torch.rand(2, 4)), ValueError, r"i: expected shape \(B, T, H\) = \(2, 4, 3\)"),
    (_bad(log_f=torch.zeros(2, 4, 3, dtype=torch.long)), TypeError, r"log_f: expected a floa"),
    (_bad(k=torch.randn(2, 4, 3, 5, dtype=torch.float64)), TypeError,
     r"k, v: expected the dtype of q"),
    (_bad(initial_state=torch.zeros(2, 3, 5, 7)), TypeError,
     r"initial_state: expected a tuple \(C, n, m\) or None, got Tensor"),
    (_bad(initial_state=(torch.zeros(2, 3, 5, 7), torch.zeros(2, 3, 5))), TypeError,
     r"initial_state: .*tuple of length 2"),
    (_bad(initial_state=(torch.zeros(2, 3, 5, 7), torch.zeros(2, 3, 5), torch.zeros(2, 1))),
     ValueError, r"initial_state m: expected shape \(B, H\) = \(2, 3\), got \(2, 1\)"),
    (_bad(chunk_size=0), ValueError, r"chunk_size: expected an integer >= 1 or None, got 0"),
    (_bad(chunk_size=16.0), TypeError, r"chunk_size: expected an integer >= 1 or None, got 16.0"),
    (_bad(cu_seqlens=torch.tensor([0, 4])), ValueError, r"cu_seqlens: .*batch size must be 1"),
    (dict(make(B=1, T=4), cu_seqlens=torch.tensor([0, 1, 4])), ValueError,
     r"initial_state C: expected shape \(N, H, K, V\) = \(2, 3, 5, 7\), got \(1, 3, 5, 7\)"),
])
def test_errors_name_the_argument(fn, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        fn(**kwargs)


def _cell_run(layer, x, h0, use_op):
    """The layer's output and final state, and the gradients of a random loss to x, every
    initial-state leaf and every parameter; by the layer itself or by the op on the cell's own
    projected inputs (``y = sigmoid(o) * h`` flattened over heads)."""
    x = x.clone().requires_grad_()
    h0 = tuple(t.clone().requires_grad_() for t in h0)
    cell = layer.cell
    if use_op:
        q, k, v, o, i, log_f = cell._split(cell.project(x))  # (B, T, heads, ·), o (B, T, H)
        h, state = mlstm_chunkwise(q, k, v, i, log_f, h0, True, chunk_size=8)
        y = torch.sigmoid(o) * h.flatten(-2)  # (B, T, heads, V) -> (B, T, H)
    else:
        y, state = layer(x, h0)
    gen = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=gen)).sum() + sum((s ** 2).sum() for s in state)
    grads = torch.autograd.grad(loss, [x, *h0, *cell.parameters()])
    return y, state, grads


def test_matches_the_mlstm_cell():
    """rnnlab's mLSTM cell on the sequential engine (the monoid step) == the op on the cell's
    projected inputs: outputs, final (C, n, m) and the gradients to x, h0 and the parameters."""
    torch.manual_seed(0)
    layer = rnnlab.Recurrent("mlstm", input_size=5, hidden_size=12, heads=3, key_dim=4,
                             engine="sequential")
    with torch.no_grad():  # non-zero gate weights, so the gates vary over time
        layer.cell.gates.weight.normal_(std=1.0)
    x = torch.randn(2, 37, 5)
    h0 = (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4).abs(), torch.randn(2, 3))
    y_ref, S_ref, g_ref = _cell_run(layer, x, h0, use_op=False)
    y, S, g = _cell_run(layer, x, h0, use_op=True)
    assert_close(y, y_ref, torch.float32, "y")
    for leaf, name in enumerate("Cnm"):
        assert_close(S[leaf], S_ref[leaf], torch.float32, f"final {name}")
    for j, (a, b) in enumerate(zip(g, g_ref)):
        assert rel_err(a, b) <= 1e-5, f"gradient {j}: {rel_err(a, b):.2e}"
