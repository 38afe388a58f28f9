"""The Triton chunked gated-linear-attention kernels (``ops/gla_triton.py``) == the plain loop
``gated_linear_attention_reference``, outputs, final state and the gradients of q, k, v, g and
the initial state, run on CPU by Triton's interpreter: per-key and per-head decay, T not a
multiple of the chunk, several chunks and sub-chunks, initial state on and off, g = -1e4,
fp32 and fp64, packed sequences; the custom op passes ``torch.library.opcheck``."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU
pytest.importorskip("triton")
if os.environ["TRITON_INTERPRET"] != "1":
    pytest.skip("TRITON_INTERPRET was set to something other than 1", allow_module_level=True)

from rnnlab.ops import gla_triton as gt  # noqa: E402
from rnnlab.ops.gla import gated_linear_attention_reference  # noqa: E402
from rnnlab.ops.gla_triton import gated_linear_attention_triton, gla_chunk  # noqa: E402

from .helpers import assert_close  # noqa: E402


def _inputs(B, T, H, K, V, per_key, dtype, h0=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    g_shape = (B, T, H, K) if per_key else (B, T, H)
    g = -torch.rand(g_shape, generator=gen, dtype=torch.float64).to(dtype) * 0.6
    xs = [rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V), g]
    if h0:
        xs.append(rand(B, H, K, V))
    return [x.requires_grad_() for x in xs]


def _run(fn, xs, has_h0=True, **kw):
    """o, S and the gradients of a random loss of both to every input."""
    q, k, v, g = xs[:4]
    o, S = fn(q, k, v, g, initial_state=xs[4] if has_h0 else None, output_final_state=True,
              **kw)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
    loss = loss + (S * torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)).sum()
    return o, S, torch.autograd.grad(loss, xs)


def _check(xs, dtype, has_h0=True, chunk_size=None, **kw):
    got = _run(gated_linear_attention_triton, xs, has_h0, chunk_size=chunk_size, **kw)
    want = _run(gated_linear_attention_reference, xs, has_h0, **kw)
    tol = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(got[0], want[0], tol, "o")
    assert_close(got[1], want[1], tol, "final state")
    names = ("dq", "dk", "dv", "dg", "dh0")
    for name, x, y in zip(names, got[2], want[2]):
        assert torch.isfinite(x).all(), name
        assert_close(x, y, tol, name)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("per_key", [True, False], ids=["per_key", "per_head"])
def test_kernels_equal_the_loop(per_key, dtype):
    """T = 40 with C = 32: two chunks, the last one partial, two sub-chunks of 16 each."""
    xs = _inputs(1, 40, 2, 5, 7, per_key, dtype)
    _check(xs, dtype, chunk_size=32, scale=0.7)


@pytest.mark.parametrize("per_key", [True, False], ids=["per_key", "per_head"])
def test_no_initial_state_short_sequence_default_chunk(per_key):
    """T = 19 < C = 32 (one partial chunk), no initial state, full-width K = V = 16."""
    xs = _inputs(2, 19, 1, 16, 16, per_key, torch.float64, h0=False, seed=2)
    _check(xs, torch.float64, has_h0=False)


@pytest.mark.parametrize("per_key", [True, False], ids=["per_key", "per_head"])
def test_many_chunks_of_sixteen(per_key):
    xs = _inputs(1, 37, 1, 3, 4, per_key, torch.float64, seed=3)
    _check(xs, torch.float64, chunk_size=16)


@pytest.mark.parametrize("per_key", [True, False], ids=["per_key", "per_head"])
def test_g_minus_1e4_forgets_exactly(per_key):
    """g = -1e4 (all keys) at steps 5, 16 (a sub-chunk start) and 32 (a chunk start): no inf or
    NaN anywhere, the loop's values and gradients, and from step 32 on the outputs equal a run
    of the suffix from a zero state (the state before is forgotten exactly)."""
    xs = _inputs(1, 40, 1, 4, 6, per_key, torch.float32, seed=4)
    with torch.no_grad():
        for t in (5, 16, 32):
            xs[3][:, t] = -1e4
    o = _check(xs, torch.float32, chunk_size=32)[0]
    suffix, _ = gated_linear_attention_triton(*(x.detach()[:, 32:] for x in xs[:4]),
                                              chunk_size=16)  # from a zero state
    torch.testing.assert_close(o.detach()[:, 32:], suffix, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("per_key", [True, False], ids=["per_key", "per_head"])
def test_packed_sequences_with_an_empty_one(per_key):
    q, k, v, g = _inputs(1, 30, 1, 4, 5, per_key, torch.float64, h0=False, seed=5)
    h0 = _inputs(4, 1, 1, 4, 5, per_key, torch.float64, seed=6)[4]
    cu = torch.tensor([0, 7, 7, 26, 30])
    got = _check([q, k, v, g, h0], torch.float64, chunk_size=16, cu_seqlens=cu)
    torch.testing.assert_close(got[1][1], h0[1].detach())  # the empty sequence keeps its state


def test_dtypes_scale_and_layout():
    """bf16 inputs: o in bf16, the final state fp32; scale=None means 1; a non-contiguous
    (expanded) q is accepted; T = 0 returns the initial state."""
    q, k, v, g, h0 = (x.detach() for x in _inputs(1, 9, 2, 4, 4, False, torch.float32))
    q1 = q[:, :, :1].expand(q.shape)  # (1, 9, 2, 4) view shared by both heads
    o, S = gated_linear_attention_triton(q1.bfloat16(), k.bfloat16(), v.bfloat16(), g, None,
                                         h0, True)
    want, want_S = gated_linear_attention_reference(q1.bfloat16(), k.bfloat16(), v.bfloat16(),
                                                    g, None, h0, True)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    torch.testing.assert_close(o, want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(S, want_S)
    o0, S0 = gated_linear_attention_triton(q[:, :0], k[:, :0], v[:, :0], g[:, :0], None, h0,
                                           True)
    assert o0.shape == (1, 0, 2, 4) and torch.equal(S0, h0)


def test_bad_arguments_name_themselves():
    q, k, v, g = (x.detach() for x in _inputs(1, 8, 1, 4, 4, True, torch.float32, h0=False))
    with pytest.raises(ValueError, match=r"chunk_size: expected a power of two >= 16.*got 24"):
        gated_linear_attention_triton(q, k, v, g, chunk_size=24)
    with pytest.raises(ValueError, match=r"g: expected shape"):
        gated_linear_attention_triton(q, k, v, g[..., :2])
    with pytest.raises(ValueError, match=r"initial_state: expected shape"):
        gated_linear_attention_triton(q, k, v, g, initial_state=torch.zeros(1, 1, 4, 5))


def test_custom_op_passes_opcheck():
    q, k, v, g, h0 = (x.detach() for x in _inputs(1, 6, 1, 3, 4, False, torch.float32))
    torch.library.opcheck(gla_chunk, (q.requires_grad_(), k, v, g, h0, 0.5, 16),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_gated_linear_attention_dispatches_to_the_kernels_on_the_triton_backend(monkeypatch):
    """On CUDA ``gla.backend`` says "triton"; forced here on CPU tensors (interpreter), the
    public op runs the kernels for a power-of-two chunk and keeps the torch path otherwise."""
    from rnnlab.ops import gla
    assert gla.backend("cuda") == "triton" and gla.backend("cpu") == "torch"
    monkeypatch.setattr(gla, "backend", lambda device="cpu": "triton")
    calls = []
    real = gt.gated_linear_attention_triton
    monkeypatch.setattr(gt, "gated_linear_attention_triton",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 20, 2, 4, generator=g), torch.randn(1, 20, 2, 4, generator=g)
    v, lg = torch.randn(1, 20, 2, 3, generator=g), -torch.rand(1, 20, 2, 4, generator=g)
    want = gated_linear_attention_reference(q, k, v, lg, output_final_state=True)
    for chunk, kernel in ((None, True), (16, True), (5, False)):
        calls.clear()
        got = gla.gated_linear_attention(q, k, v, lg, output_final_state=True, chunk_size=chunk)
        assert bool(calls) == kernel
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
