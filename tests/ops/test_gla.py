"""Chunked gated linear attention vs its loop reference, for both forms of the log-decay g
(per key (B, T, H, K), per head (B, T, H)): outputs, final states and every gradient; very
negative g (exact forgetting, no inf/NaN); identity steps; cu_seqlens vs per-sequence runs;
expand()-ed q, k; named errors; and fla's naive loops as an independent oracle."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.ops.gla import gated_linear_attention, gated_linear_attention_reference

from ..helpers import assert_close, fla_naive

NAMES = ("q", "k", "v", "g", "initial_state")
FORMS = ("key", "head")


def make(B=2, T=7, H=3, K=5, V=7, dtype=torch.float32, form="key", rows=None, seed=0):
    """Random inputs; g = logsigmoid(N(2, 1)) (<= 0, mild enough that decay still links the
    ends of a chunk), per key (B, T, H, K) or per head (B, T, H)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    g_shape = (B, T, H, K) if form == "key" else (B, T, H)
    return {"q": rand(B, T, H, K), "k": rand(B, T, H, K), "v": rand(B, T, H, V),
            "g": F.logsigmoid(rand(*g_shape) + 2),
            "initial_state": rand(B if rows is None else rows, H, K, V)}


def forward_backward(fn, inputs, upstream=None, **kw):
    """Run ``fn`` on fresh leaves with upstream gradients ``(do, dS)`` on o and S_T (random when
    None); returns ``(o, S_T, {name: grad})``."""
    leaves = {n: x.clone().requires_grad_() for n, x in inputs.items()}
    o, S = fn(**leaves, output_final_state=True, **kw)
    if upstream is None:
        gen = torch.Generator().manual_seed(1)
        upstream = (torch.randn(o.shape, generator=gen, dtype=o.dtype),
                    torch.randn(S.shape, generator=gen, dtype=S.dtype))
    ((o * upstream[0]).sum() + (S * upstream[1]).sum()).backward()
    return o, S, {n: (x.grad if x.grad is not None else torch.zeros_like(x))
                  for n, x in leaves.items()}


def assert_parity(inputs, dtype, **kw):
    """Chunked == reference on o, S_T and the gradient of every input and initial_state; all
    finite."""
    o, S, grads = forward_backward(gated_linear_attention, inputs, **kw)
    o_ref, S_ref, grads_ref = forward_backward(gated_linear_attention_reference, inputs, **kw)
    assert o.dtype == inputs["q"].dtype and S.dtype == S_ref.dtype
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert_close(o, o_ref, dtype, "o")
    assert_close(S, S_ref, dtype, "S_T")
    for name in grads:
        assert torch.isfinite(grads[name]).all(), f"d{name} not finite"
        assert_close(grads[name], grads_ref[name], dtype, f"d{name}")
    return o, S, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("chunk_size", [None, 16])
@pytest.mark.parametrize("T", [1, 7, 63, 300])
def test_chunked_matches_reference(T, chunk_size, form, dtype):
    """Odd sizes (H 3, K 5, V 7); 63 and 300 are not multiples of 16 or 32."""
    inputs = make(T=T, dtype=dtype, form=form, seed=T)
    assert_parity(inputs, dtype, chunk_size=chunk_size, scale=0.7)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("chunk_size", [1, 5, 24, 64, 100])
def test_any_chunk_size(chunk_size, form):
    """Sub-chunks of the per-key form: none (C <= 8), 3 (C = 24), 8 (C = 64), 20 of 5 (C = 100)."""
    inputs = make(T=130, H=2, K=12, V=20, dtype=torch.float64, form=form)
    assert_parity(inputs, torch.float64, chunk_size=chunk_size)


@pytest.mark.parametrize("form", FORMS)
def test_large_magnitude_g(form):
    """g uniform in [-30, 0], a step of -1e4 (all keys), a step of -1e4 on a few keys: fp32
    outputs and gradients finite and equal to the reference."""
    inputs = make(T=150, K=12, V=20, form=form)
    gen = torch.Generator().manual_seed(3)
    g = -30 * torch.rand(inputs["g"].shape, generator=gen)
    g[:, 40] = -1e4
    g[:, 97, ..., :3] = -1e4  # per key: 3 keys; per head: 3 heads
    assert_parity(dict(inputs, g=g), torch.float32, chunk_size=32)


@pytest.mark.parametrize("form", FORMS)
def test_minus_1e4_forgets_exactly(form):
    """After a step with g = -1e4 the past is gone: outputs from there on equal a run that
    starts at that step from a zero state."""
    inputs = make(T=90, K=12, V=20, form=form, dtype=torch.float64)
    inputs["g"][:, 37] = -1e4
    o, S = gated_linear_attention(**inputs, output_final_state=True)
    tail = {n: x[:, 37:] for n, x in inputs.items() if n != "initial_state"}
    o_tail, S_tail = gated_linear_attention(**tail, output_final_state=True)
    assert_close(o[:, 37:], o_tail, torch.float64, "o after the reset")
    assert_close(S, S_tail, torch.float64, "S_T")


def _with_identity_steps(inputs, where):
    """Insert steps with g = 0 and k = 0 (random q, v) before the steps listed in ``where``."""
    T = inputs["q"].shape[1]
    keep = [t for t in range(T + len(where)) if t not in where]
    gen, out = torch.Generator().manual_seed(5), {}
    for n, x in inputs.items():
        if n == "initial_state":
            out[n] = x
            continue
        filled = torch.randn(x.shape[0], T + len(where), *x.shape[2:], generator=gen,
                             dtype=x.dtype)
        if n in ("g", "k"):
            filled.zero_()
        filled[:, keep] = x
        out[n] = filled
    return out, keep


@pytest.mark.parametrize("form", FORMS)
def test_identity_steps_leave_state_unchanged(form):
    inputs = make(T=50, K=6, V=9, form=form, dtype=torch.float64)
    padded, keep = _with_identity_steps(inputs, [0, 3, 4, 20, 21, 22, 23, 57, 58])
    o_ref, S_ref = gated_linear_attention(**inputs, output_final_state=True)
    for fn in (gated_linear_attention, gated_linear_attention_reference):
        o, S = fn(**padded, output_final_state=True, chunk_size=16)
        assert_close(o[:, keep], o_ref, torch.float64, f"{fn.__name__} o")
        assert_close(S, S_ref, torch.float64, f"{fn.__name__} S_T")
    # Whole chunks of identity steps (the engine's padding) leave the state bit for bit.
    tail = {n: (x if n == "initial_state" else torch.cat([x, torch.zeros_like(x)], 1))
            for n, x in inputs.items()}
    tail["q"][:, 50:], tail["v"][:, 50:] = 1.0, 1.0
    for fn in (gated_linear_attention, gated_linear_attention_reference):
        _, S_short = fn(**inputs, output_final_state=True, chunk_size=25)
        _, S_long = fn(**tail, output_final_state=True, chunk_size=25)
        assert torch.equal(S_long, S_short), fn.__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expanded_qk_shared_by_heads(dtype):
    """Mamba-2's layout: one (B, T, N) q and k expand()-ed over H heads, per-head g; the
    gradients flow back into the shared tensors."""
    gen = torch.Generator().manual_seed(4)
    B, T, H, N, V = 2, 70, 4, 16, 9
    base = {n: torch.randn(B, T, 1, N, generator=gen, dtype=dtype) for n in ("q", "k")}
    rest = {"v": torch.randn(B, T, H, V, generator=gen, dtype=dtype),
            "g": F.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=dtype) + 2)}
    results = []
    for fn in (gated_linear_attention, gated_linear_attention_reference):
        leaves = {n: x.clone().requires_grad_() for n, x in {**base, **rest}.items()}
        q, k = (leaves[n].expand(B, T, H, N) for n in ("q", "k"))  # (B, T, H, N)
        o, S = fn(q, k, leaves["v"], leaves["g"], output_final_state=True)
        (o.square().sum() + S.sum()).backward()
        results.append((o, S, [x.grad for x in leaves.values()]))
    (o, S, grads), (o_ref, S_ref, grads_ref) = results
    assert_close(o, o_ref, dtype, "o")
    assert_close(S, S_ref, dtype, "S_T")
    for name, a, b in zip(("q", "k", "v", "g"), grads, grads_ref):
        assert_close(a, b, dtype, f"d{name}")


def test_scale_and_defaults():
    inputs = make(T=40, form="key")
    S0 = inputs.pop("initial_state")
    o, S = gated_linear_attention(**inputs)
    assert S is None and o.shape == (2, 40, 3, 7)
    o0, _ = gated_linear_attention(**inputs, initial_state=torch.zeros_like(S0),
                                   output_final_state=True)
    assert_close(o, o0, torch.float32, "zero initial state")
    scaled, _ = gated_linear_attention(**inputs, scale=0.5)
    assert_close(scaled, gated_linear_attention(**dict(inputs, q=0.5 * inputs["q"]))[0],
                 torch.float32, "scale")


@pytest.mark.parametrize("form", FORMS)
def test_empty_sequence(form):
    inputs = make(T=0, form=form)
    o, S = gated_linear_attention(**inputs, output_final_state=True)
    assert o.shape == (2, 0, 3, 7) and torch.equal(S, inputs["initial_state"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_compute_in_fp32(dtype):
    inputs = {n: x.to(dtype) for n, x in make(T=50).items()}
    o, S = gated_linear_attention(**inputs, output_final_state=True, chunk_size=16)
    o_ref, S_ref = gated_linear_attention_reference(**inputs, output_final_state=True)
    assert o.dtype == dtype and S.dtype == torch.float32
    assert_close(o, o_ref, dtype, "o")
    assert_close(S, S_ref, torch.float32, "S_T")


def _split(inputs, bounds):
    """Per-sequence inputs of a packed batch: time slices and rows of initial_state."""
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = {n: x[:, s:e] for n, x in inputs.items() if n != "initial_state"}
        yield dict(part, initial_state=inputs["initial_state"][i:i + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bounds", [[0, 5, 5, 40, 41, 110], [0, 300]])
def test_cu_seqlens_equals_per_sequence_runs(bounds, form, dtype):
    """Packed sequences == each run alone from its row of initial_state: o, S_T and, with the
    same upstream gradients, every input gradient."""
    cu = torch.tensor(bounds, dtype=torch.int32)
    inputs = make(B=1, T=bounds[-1], dtype=dtype, form=form, rows=len(bounds) - 1,
                  seed=len(bounds))
    gen = torch.Generator().manual_seed(2)
    do = torch.randn(inputs["v"].shape, generator=gen, dtype=dtype)  # (1, T, H, V)
    dS = torch.randn(inputs["initial_state"].shape, generator=gen, dtype=dtype)  # (N, H, K, V)
    o, S, grads = forward_backward(gated_linear_attention, inputs, (do, dS), cu_seqlens=cu)
    runs = [forward_backward(gated_linear_attention_reference, part, (do[:, s:e], dS[i:i + 1]))
            for i, (part, s, e) in enumerate(zip(_split(inputs, bounds), bounds, bounds[1:]))]
    assert_close(o, torch.cat([r[0] for r in runs], 1), dtype, "o")
    assert_close(S, torch.cat([r[1] for r in runs]), dtype, "S_T")
    for name in NAMES:
        dim = 0 if name == "initial_state" else 1
        assert_close(grads[name], torch.cat([r[2][name] for r in runs], dim), dtype, f"d{name}")


def test_reference_cu_seqlens_equals_per_sequence_runs():
    bounds = [0, 3, 20, 20, 33]
    inputs = make(B=1, T=33, dtype=torch.float64, rows=4)
    o, S = gated_linear_attention_reference(**inputs, cu_seqlens=torch.tensor(bounds),
                                            output_final_state=True)
    runs = [gated_linear_attention_reference(**part, output_final_state=True)
            for part in _split(inputs, bounds)]
    assert_close(o, torch.cat([r[0] for r in runs], 1), torch.float64, "o")
    assert_close(S, torch.cat([r[1] for r in runs]), torch.float64, "S_T")


def _bad(**changes):
    inputs = make(T=4)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize("fn", [gated_linear_attention, gated_linear_attention_reference])
@pytest.mark.parametrize("kwargs, err, pattern", [
    (_bad(q=torch.randn(2, 4, 5)), ValueError, r"q: expected a tensor of shape \(B, T, H, K\)"),
    (_bad(q=[1.0]), TypeError, r"q: expected a tensor of shape .*got list"),
    (_bad(k=torch.randn(2, 4, 3, 6)), ValueError,
     r"k: expected shape \(B, T, H, K\) = \(2, 4, 3, 5\), got \(2, 4, 3, 6\)"),
    (_bad(v=torch.randn(2, 5, 3, 7)), ValueError, r"v: expected shape \(B, T, H, V\)"),
    (_bad(v=torch.randn(2, 4, 7)), ValueError, r"v: expected a tensor of shape \(B, T, H, V\)"),
    (_bad(g=torch.rand(2, 4, 3, 6)), ValueError,
     r"g: expected shape \(B, T, H, K\) = \(2, 4, 3, 5\) \(per key\) or \(B, T, H\) = "
     r"\(2, 4, 3\) \(per head\), got \(2, 4, 3, 6\)"),
    (_bad(g=torch.rand(2, 4)), ValueError, r"g: expected shape .*got \(2, 4\)"),
    (_bad(g=None), TypeError, r"g: expected a torch.Tensor"),
    (_bad(g=torch.zeros(2, 4, 3, dtype=torch.long)), TypeError, r"g: expected a floating"),
    (_bad(k=torch.randn(2, 4, 3, 5, dtype=torch.float64)), TypeError,
     r"k, v: expected the dtype of q"),
    (_bad(initial_state=torch.zeros(2, 3, 7, 5)), ValueError,
     r"initial_state: expected shape \(B, H, K, V\) = \(2, 3, 5, 7\), got \(2, 3, 7, 5\)"),
    (_bad(chunk_size=0), ValueError, r"chunk_size: expected an integer >= 1 or None, got 0"),
    (_bad(chunk_size=16.0), TypeError, r"chunk_size: expected an integer >= 1 or None, got 16.0"),
    (_bad(scale="1"), TypeError, r"scale: expected a number in \(-inf, inf\) or None, got '1'"),
    (_bad(cu_seqlens=torch.tensor([0, 4])), ValueError, r"cu_seqlens: .*batch size must be 1"),
    (dict(make(B=1, T=4), cu_seqlens=torch.tensor([0, 1, 4])), ValueError,
     r"initial_state: expected shape \(N, H, K, V\) = \(2, 3, 5, 7\), got \(1, 3, 5, 7\)"),
])
def test_errors_name_the_argument(fn, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        fn(**kwargs)


@pytest.mark.parametrize("T", [7, 130])
def test_fla_naive_recurrent_gla_oracle(T):
    """Per-key g. fla scales q by K^-1/2 itself, so ours gets scale=K^-1/2."""
    fn = fla_naive("gla.naive").naive_recurrent_gla
    x = make(T=T, K=12, V=20)
    o_fla, S_fla = fn(x["q"], x["k"], x["v"], x["g"], initial_state=x["initial_state"],
                      output_final_state=True)
    for ours in (gated_linear_attention, gated_linear_attention_reference):
        o, S = ours(**x, output_final_state=True, scale=12 ** -0.5)
        assert_close(o, o_fla, torch.float32, f"{ours.__name__} o")
        assert_close(S, S_fla, torch.float32, f"{ours.__name__} S_T")


@pytest.mark.parametrize("T", [7, 130])
def test_fla_naive_recurrent_simple_gla_oracle(T):
    """Per-head g, fla's (B, T, H, .) layout in and out, with an explicit scale."""
    fn = fla_naive("simple_gla.naive").naive_recurrent_simple_gla
    x = make(T=T, K=12, V=20, form="head")
    o_fla, S_fla = fn(x["q"], x["k"], x["v"], x["g"], scale=0.3,
                      initial_state=x["initial_state"], output_final_state=True)
    for ours in (gated_linear_attention, gated_linear_attention_reference):
        o, S = ours(**x, output_final_state=True, scale=0.3)
        assert_close(o, o_fla, torch.float32, f"{ours.__name__} o")
        assert_close(S, S_fla, torch.float32, f"{ours.__name__} S_T")
