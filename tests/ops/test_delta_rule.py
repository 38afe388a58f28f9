"""Chunked (WY/UT) delta rule vs its loop reference: outputs, final states and every gradient;
edge values of beta and g; cu_seqlens vs per-sequence runs; named errors; and fla's naive loops
as an independent oracle when fla is installed."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops.delta import delta_rule, delta_rule_reference

from ..helpers import assert_close, fla_naive

NAMES = ("q", "k", "v", "beta", "g", "initial_state")


def make(B=2, T=7, H=3, K=5, V=7, dtype=torch.float32, gated=True, rows=None, seed=0,
         beta=None, g=None):
    """Random inputs: k L2-normalized, beta in [0, 2], g = logsigmoid(N(2, 1)) (<= 0, mild
    enough that decay still links the ends of a 64-step chunk)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    inputs = {"q": rand(B, T, H, K), "k": F.normalize(rand(B, T, H, K), dim=-1),
              "v": rand(B, T, H, V),
              "beta": 2 * torch.rand(B, T, H, generator=gen, dtype=dtype),
              "g": F.logsigmoid(rand(B, T, H) + 2) if gated else None,
              "initial_state": rand(B if rows is None else rows, H, K, V)}
    if beta is not None:
        inputs["beta"] = torch.full((B, T, H), float(beta), dtype=dtype)
    if g is not None:
        inputs["g"] = torch.full((B, T, H), float(g), dtype=dtype)
    return inputs


def forward_backward(fn, inputs, upstream=None, **kw):
    """Run ``fn`` on fresh leaves with upstream gradients ``(do, dS)`` on o and S_T (random when
    None); returns ``(o, S_T, {name: grad})``."""
    leaves = {n: (x.clone().requires_grad_() if x is not None else None)
              for n, x in inputs.items()}
    o, S = fn(**leaves, output_final_state=True, **kw)
    if upstream is None:
        gen = torch.Generator().manual_seed(1)
        upstream = (torch.randn(o.shape, generator=gen, dtype=o.dtype),
                    torch.randn(S.shape, generator=gen, dtype=S.dtype))
    ((o * upstream[0]).sum() + (S * upstream[1]).sum()).backward()
    return o, S, {n: (x.grad if x.grad is not None else torch.zeros_like(x))  # unused: zero
                  for n, x in leaves.items() if x is not None}


def assert_parity(inputs, dtype, **kw):
    """Chunked == reference on o, S_T and the gradient of every input and initial_state."""
    o, S, grads = forward_backward(delta_rule, inputs, **kw)
    o_ref, S_ref, grads_ref = forward_backward(delta_rule_reference, inputs, **kw)
    assert o.dtype == inputs["q"].dtype and S.dtype == S_ref.dtype
    assert_close(o, o_ref, dtype, "o")
    assert_close(S, S_ref, dtype, "S_T")
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert torch.isfinite(grads[name]).all(), f"d{name} not finite"
        assert_close(grads[name], grads_ref[name], dtype, f"d{name}")
    return o, S, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("K, V", [(5, 7), (12, 20)])
@pytest.mark.parametrize("T", [1, 7, 63, 300])
def test_chunked_matches_reference(T, K, V, chunk_size, gated, dtype):
    inputs = make(T=T, K=K, V=V, dtype=dtype, gated=gated, seed=T + K)
    assert_parity(inputs, dtype, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [1, 5, 300])
def test_any_chunk_size(chunk_size):
    assert_parity(make(T=63, dtype=torch.float64), torch.float64, chunk_size=chunk_size)


@pytest.mark.parametrize("gated", [False, True], ids=["delta", "gated"])
def test_beta_zero_is_identity(gated):
    """beta = 0: no writes, so S_T = exp(sum g) S_0 and o_t = S_t^T (scale q_t)."""
    inputs = make(T=40, dtype=torch.float64, gated=gated, beta=0.0)
    o, S, _ = assert_parity(inputs, torch.float64, chunk_size=16, scale=0.5)
    g = inputs["g"] if gated else torch.zeros_like(inputs["beta"])
    decay = g.cumsum(1).exp()  # (B, T, H)
    S_t = decay[..., None, None] * inputs["initial_state"][:, None]  # (B, T, H, K, V)
    expected = torch.einsum("bthk,bthkv->bthv", 0.5 * inputs["q"], S_t)
    assert_close(o, expected, torch.float64, "o")
    assert_close(S, S_t[:, -1], torch.float64, "S_T")


def test_beta_two_is_a_reflection():
    """beta = 2, ||k|| = 1, v = 0, g = 0: each step is a Householder reflection, so the state
    keeps its Frobenius norm (per batch and head)."""
    inputs = make(T=100, dtype=torch.float64, gated=False, beta=2.0)
    inputs["v"] = torch.zeros_like(inputs["v"])
    _, S, _ = assert_parity(inputs, torch.float64, chunk_size=16)
    norms = S.flatten(2).norm(dim=-1)  # (B, H)
    assert_close(norms, inputs["initial_state"].flatten(2).norm(dim=-1), torch.float64, "norm")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_beta_two_random(dtype):
    assert_parity(make(T=150, dtype=dtype, beta=2.0), dtype, chunk_size=64)


def test_zero_gate_equals_no_gate():
    inputs = make(T=70, gated=False)
    zero = dict(inputs, g=torch.zeros_like(inputs["beta"]))
    o, S, _ = assert_parity(zero, torch.float32, chunk_size=16)
    o_none, S_none = delta_rule(**inputs, output_final_state=True, chunk_size=16)
    assert_close(o, o_none, torch.float32, "o")
    assert_close(S, S_none, torch.float32, "S_T")


@pytest.mark.parametrize("g", [-20.0, -1e4])
def test_strong_decay_is_finite(g):
    """exp(g) ~ 0: the state forgets everything but the last write, with no NaN or inf."""
    inputs = make(T=100, g=g)
    o, S, grads = assert_parity(inputs, torch.float32, chunk_size=64)
    assert all(torch.isfinite(x).all() for x in (o, S, *grads.values()))
    beta, k, q, v = inputs["beta"], inputs["k"], inputs["q"], inputs["v"]
    expected = (beta * (q * k).sum(-1))[..., None] * v  # (B, T, H, V): beta_t (q_t.k_t) v_t
    assert_close(o, expected, torch.float32, "o")


def test_mixed_gates_with_exact_zeros():
    inputs = make(T=130, dtype=torch.float64)
    g = inputs["g"] * 10
    g[:, ::3] = 0.0
    g[:, 5::7] = -30.0
    assert_parity(dict(inputs, g=g), torch.float64, chunk_size=32)


def test_defaults_and_empty():
    inputs = make(T=9)
    inputs.pop("initial_state")
    o, S = delta_rule(**inputs)
    assert S is None and o.shape == (2, 9, 3, 7)
    zeros = torch.zeros(2, 3, 5, 7)
    o0, S0 = delta_rule(**inputs, initial_state=zeros, output_final_state=True)
    assert_close(o, o0, torch.float32, "o")
    empty = make(T=0)
    o, S = delta_rule(**empty, output_final_state=True)
    assert o.shape == (2, 0, 3, 7) and torch.equal(S, empty["initial_state"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    inputs = {n: (x.to(dtype) if x is not None else None) for n, x in make(T=50).items()}
    o, S = delta_rule(**inputs, output_final_state=True, chunk_size=16)
    o_ref, S_ref = delta_rule_reference(**inputs, output_final_state=True)
    assert o.dtype == dtype and S.dtype == torch.float32
    assert_close(o, o_ref, dtype, "o")
    assert_close(S, S_ref, torch.float32, "S_T")


def _split(inputs, bounds):
    """Per-sequence inputs of a packed batch: time slices and rows of initial_state."""
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = {n: x[:, s:e] for n, x in inputs.items() if n != "initial_state"}
        yield dict(part, initial_state=inputs["initial_state"][i:i + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [[0, 5, 5, 40, 41, 110], [0, 300]])
def test_cu_seqlens_equals_per_sequence_runs(bounds, dtype):
    """Packed sequences == each run alone from its row of initial_state: o, S_T and, with the
    same upstream gradients, every input gradient."""
    cu = torch.tensor(bounds, dtype=torch.int32)
    inputs = make(B=1, T=bounds[-1], dtype=dtype, rows=len(bounds) - 1, seed=len(bounds))
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(inputs["v"].shape, generator=gen, dtype=dtype)  # (1, T, H, V)
    dS = torch.randn(inputs["initial_state"].shape, generator=gen, dtype=dtype)  # (N, H, K, V)
    o, S, grads = forward_backward(delta_rule, inputs, (do, dS), cu_seqlens=cu, chunk_size=16)
    runs = [forward_backward(delta_rule_reference, part, (do[:, s:e], dS[i:i + 1]))
            for i, (part, s, e) in enumerate(zip(_split(inputs, bounds), bounds, bounds[1:]))]
    assert_close(o, torch.cat([r[0] for r in runs], 1), dtype, "o")
    assert_close(S, torch.cat([r[1] for r in runs]), dtype, "S_T")
    for name in NAMES:
        dim = 0 if name == "initial_state" else 1
        assert_close(grads[name], torch.cat([r[2][name] for r in runs], dim), dtype, f"d{name}")


def test_reference_cu_seqlens_equals_per_sequence_runs():
    bounds = [0, 3, 20, 20, 33]
    inputs = make(B=1, T=33, dtype=torch.float64, rows=4)
    o, S = delta_rule_reference(**inputs, cu_seqlens=torch.tensor(bounds),
                                output_final_state=True)
    runs = [delta_rule_reference(**part, output_final_state=True)
            for part in _split(inputs, bounds)]
    assert_close(o, torch.cat([r[0] for r in runs], 1), torch.float64, "o")
    assert_close(S, torch.cat([r[1] for r in runs]), torch.float64, "S_T")


def _bad(**changes):
    inputs = make(T=4)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("fn", [delta_rule, delta_rule_reference])
@pytest.mark.parametrize("kwargs, err, pattern", [
    (_bad(q=torch.randn(2, 4, 5)), ValueError, r"q: expected a tensor of shape \(B, T, H, K\)"),
    (_bad(q=[1.0]), TypeError, r"q: expected a tensor of shape .*got list"),
    (_bad(k=torch.randn(2, 4, 3, 6)), ValueError,
     r"k: expected shape \(B, T, H, K\) = \(2, 4, 3, 5\), got \(2, 4, 3, 6\)"),
    (_bad(v=torch.randn(2, 5, 3, 7)), ValueError, r"v: expected shape \(B, T, H, V\)"),
    (_bad(v=torch.randn(2, 4, 7)), ValueError, r"v: expected a tensor of shape \(B, T, H, V\)"),
    (_bad(beta=torch.rand(2, 4)), ValueError, r"beta: expected shape \(B, T, H\) = \(2, 4, 3\)"),
    (_bad(g=torch.zeros(2, 4, 3, dtype=torch.long)), TypeError, r"g: expected a floating"),
    (_bad(k=torch.randn(2, 4, 3, 5, dtype=torch.float64)), TypeError,
     r"k, v: expected the dtype of q"),
    (_bad(initial_state=torch.zeros(2, 3, 7, 5)), ValueError,
     r"initial_state: expected shape \(B, H, K, V\) = \(2, 3, 5, 7\), got \(2, 3, 7, 5\)"),
    (_bad(chunk_size=0), ValueError, r"chunk_size: expected an integer >= 1, got 0"),
    (_bad(chunk_size=16.0), TypeError, r"chunk_size: expected an integer >= 1, got 16.0"),
    (_bad(scale="1"), TypeError, r"scale: expected a number in \(-inf, inf\) or None, got '1'"),
    (_bad(cu_seqlens=torch.tensor([0, 4])), ValueError, r"cu_seqlens: .*batch size must be 1"),
    (dict(make(B=1, T=4), cu_seqlens=torch.tensor([0, 1, 4])), ValueError,
     r"initial_state: expected shape \(N, H, K, V\) = \(2, 3, 5, 7\), got \(1, 3, 5, 7\)"),
])
def test_errors_name_the_argument(fn, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        fn(**kwargs)


@pytest.mark.parametrize("T", [7, 130])
def test_fla_delta_rule_recurrence_oracle(T):
    fn = getattr(fla_naive("delta_rule.naive"), "delta_rule_recurrence", None)
    if fn is None:
        pytest.skip("fla has no delta_rule_recurrence")
    x = make(T=T, K=12, V=20, gated=False)
    # fla's loop is head-first (B, H, T, .), fp32, with a fixed scale K ** -0.5.
    o_fla, S_fla = fn(*(x[n].transpose(1, 2) for n in ("q", "k", "v", "beta")),
                      initial_state=x["initial_state"], output_final_state=True)
    for ours in (delta_rule, delta_rule_reference):
        o, S = ours(**x, output_final_state=True, chunk_size=16, scale=12 ** -0.5)
        assert_close(o, o_fla.transpose(1, 2), torch.float32, f"{ours.__name__} o")
        assert_close(S, S_fla, torch.float32, f"{ours.__name__} S_T")


@pytest.mark.parametrize("beta", [None, 2.0])
def test_fla_gated_delta_rule_oracle(beta):
    fn = getattr(fla_naive("gated_delta_rule.naive"), "naive_recurrent_gated_delta_rule", None)
    if fn is None:
        pytest.skip("fla has no naive_recurrent_gated_delta_rule")
    x = make(T=150, K=12, V=20, beta=beta)
    o_fla, S_fla = fn(x["q"], x["k"], x["v"], x["beta"], x["g"], scale=0.3,
                      initial_state=x["initial_state"], output_final_state=True)
    for ours in (delta_rule, delta_rule_reference):
        o, S = ours(**x, output_final_state=True, chunk_size=64, scale=0.3)
        assert_close(o, o_fla, torch.float32, f"{ours.__name__} o")
        assert_close(S, S_fla, torch.float32, f"{ours.__name__} S_T")
