"""The Triton diagonal-scan kernels (``ops/diagonal/triton_kernels.py``) == the plain loop
``linear_scan_reference``, outputs and gradients, run on CPU by Triton's interpreter: real and
complex, fp32 and fp64, initial state, broadcast decays, packed sequences; the custom op passes
``torch.library.opcheck`` (fake implementation, autograd registration)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on CPU
pytest.importorskip("triton")
if os.environ["TRITON_INTERPRET"] != "1":
    pytest.skip("TRITON_INTERPRET was set to something other than 1", allow_module_level=True)

from rnnlab.ops.diagonal import linear_scan_reference  # noqa: E402
from rnnlab.ops.diagonal import triton_kernels as tk  # noqa: E402

from .helpers import assert_close  # noqa: E402


def _inputs(B, T, feats, dtype, seed=0, a_feats=None):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32

    def rand(*shape, scale=1.0):
        x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
        if dtype.is_complex:
            x = torch.complex(x, torch.randn(*shape, generator=g, dtype=torch.float64) * scale)
        return x.to(dtype if dtype.is_complex else real)

    a = rand(B, T, *(a_feats or feats), scale=0.6).requires_grad_()
    b = rand(B, T, *feats).requires_grad_()
    return a, b, rand(B, *feats).requires_grad_()


def _both(a, b, h0, cu=None):
    out = []
    for fn in (lambda: tk.triton_forward(a, b, h0, cu),
               lambda: linear_scan_reference(a, b, h0, True, cu)):
        h, hT = fn()
        g = torch.Generator().manual_seed(3)
        w = torch.randn(h.shape, generator=g, dtype=torch.float64).to(h.dtype)
        wT = torch.randn(hT.shape, generator=g, dtype=torch.float64).to(hT.dtype)
        loss = (h * w).real.sum() + (hT * wT).real.sum()
        out.append((h, hT, torch.autograd.grad(loss, (a, b, h0))))
    return out


def _check(got, want, dtype):
    tol_dtype = torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32
    for name, x, y in zip(("h", "h_T"), got[:2], want[:2]):
        assert_close(x, y, tol_dtype, name)
    for name, x, y in zip(("da", "db", "dh0"), got[2], want[2]):
        assert_close(x, y, tol_dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64,
                                   torch.complex128], ids=str)
@pytest.mark.parametrize("T", [1, 5, 37])
def test_kernels_equal_the_loop(dtype, T):
    got, want = _both(*_inputs(2, T, (3, 50), dtype, seed=T))  # D = 150: two feature blocks
    _check(got, want, dtype)


def test_a_broadcast_over_trailing_dims():
    got, want = _both(*_inputs(2, 9, (2, 3, 4), torch.float64, a_feats=(2, 1, 1)))
    _check(got, want, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128], ids=str)
def test_packed_sequences_with_an_empty_one(dtype):
    a, b, _ = _inputs(1, 12, (5,), dtype)
    h0 = _inputs(4, 1, (5,), dtype, seed=1)[2]
    cu = torch.tensor([0, 4, 4, 11, 12])
    got, want = _both(a, b, h0, cu)
    _check(got, want, dtype)
    torch.testing.assert_close(got[1][1], h0[1].detach())  # the empty sequence keeps its state


def test_custom_op_passes_opcheck():
    a, b, h0 = (x.detach().reshape(-1, x.shape[-1]) for x in _inputs(1, 6, (4,), torch.float32))
    offsets = torch.tensor([0, 6], dtype=torch.int64)
    torch.library.opcheck(tk.diagonal_scan, (a.requires_grad_(), b, h0[:1], offsets),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_linear_scan_dispatches_to_the_kernels_where_the_backend_says_triton(monkeypatch):
    """On CUDA ``backend`` says "triton"; here it is forced on CPU tensors (interpreter) so
    ``linear_scan``'s own dispatch (dtype cast, broadcast decay, default h0) runs the kernels."""
    from rnnlab.ops import diagonal
    assert diagonal.backend("cuda") == "triton"
    monkeypatch.setattr(diagonal, "USE_TRITON", False)
    assert diagonal.backend("cuda") == "torch"
    calls = []
    monkeypatch.setattr(diagonal, "backend", lambda device="cpu": "triton")
    monkeypatch.setattr(tk, "diagonal_scan", lambda *args: calls.append(1) or
                        tk.torch.ops.rnnlab.diagonal_scan(*args))
    a, b, _ = _inputs(2, 7, (3, 4), torch.float32, a_feats=(3, 1))
    h, hT = diagonal.linear_scan(a.bfloat16(), b.bfloat16(), None, True)
    want, want_T = linear_scan_reference(a.bfloat16(), b.bfloat16(), None, True)
    assert calls and h.dtype == torch.bfloat16 and hT.dtype == torch.float32
    torch.testing.assert_close(h, want)
    torch.testing.assert_close(hT, want_T, rtol=1e-2, atol=1e-2)
