"""block_scan (the Newton engine's forward-only small-block solve) against its loop reference, on
both CPU paths (numba sweep, matrix_scan fallback)."""
from __future__ import annotations

import pytest
import torch

from rnnlab.ops import block as block_ops
from rnnlab.ops.block import block_scan, block_scan_reference

from ..helpers import assert_close


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("T, G, M", [(1, 3, 2), (7, 5, 3), (300, 4, 2), (63, 2, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_scan_equals_reference(monkeypatch, use_numba, T, G, M, dtype):
    if use_numba and block_ops._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(block_ops, "USE_NUMBA", use_numba)
    A = 0.9 * torch.randn(3, T, G, M, M, dtype=dtype) / M ** 0.5
    b, h0 = torch.randn(3, T, G, M, dtype=dtype), torch.randn(3, G, M, dtype=dtype)
    assert_close(block_scan(A, b, h0), block_scan_reference(A, b, h0), dtype, "block_scan")


def test_block_scan_takes_strided_inputs_and_names_bad_shapes():
    A, b, h0 = torch.randn(2, 9, 3, 2, 2), torch.randn(2, 9, 3, 2), torch.randn(2, 3, 2)
    flipped = block_scan(A.flip(1), b.flip(1), h0)
    assert_close(flipped, block_scan_reference(A.flip(1), b.flip(1), h0), torch.float32, "flip")
    with pytest.raises(ValueError, match=r"block_scan: expected A \(B, T, G, M, M\)"):
        block_scan(A, b[..., :1], h0)


# ---- the column form (the Newton engine's scans) ------------------------------------------------

def _src(kind, S, M):
    """src tables: diagonal (M = 1), per-channel blocks, heads (2 groups of 3 members), dense."""
    s, m = torch.arange(S), torch.arange(M)
    if kind == "diagonal":
        return s[None, :]
    if kind == "block":
        return m[:, None] * (S // M) + s[None, :] % (S // M)
    if kind == "heads":  # S = 12: 2 leaves x (2 heads x 3), members (leaf, channel) of a head
        head = (s % 6) // 3
        return (m[:, None] // 3) * 6 + head[None, :] * 3 + m[:, None] % 3
    return m[:, None].expand(M, S)  # dense


COLUMN_CASES = [("diagonal", 7, 1), ("block", 10, 2), ("block", 9, 3), ("heads", 12, 6),
                ("dense", 5, 5)]


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("kind, S, M", COLUMN_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_column_scan_equals_reference_in_chunks(monkeypatch, use_numba, kind, S, M, dtype):
    if use_numba and block_ops._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(block_ops, "USE_NUMBA", use_numba)
    torch.manual_seed(0)
    T, B, src = 23, 3, _src(kind, S, M)
    A = 0.9 * torch.randn(T, B, M, S, dtype=dtype) / M ** 0.5
    b, h0 = torch.randn(T, B, S, dtype=dtype), torch.randn(B, S, dtype=dtype)
    ref = block_ops.column_scan_reference(A, b, src, h0)
    out, state = torch.zeros(T, B, S, dtype=dtype), h0.clone()
    for t0, t1 in ((0, 1), (1, 9), (9, 23)):  # chained chunks carry the state
        block_ops.column_scan_(out[t0:t1], A[t0:t1], b[t0:t1], src, state)
    assert_close(out, ref, dtype, "column_scan_")
    assert_close(state, ref[-1], dtype, "carried state")
    base, state = torch.randn(T, B, S, dtype=dtype), h0.clone()  # the Newton update form
    block_ops.column_scan_(out, A, b, src, state, base=base, scale=0.5)
    want = base + 0.5 * block_ops.column_scan_reference(A, b - base, src, h0)
    assert_close(out, want, dtype, "column_scan_ with base")


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("kind, S, M", COLUMN_CASES)
def test_column_adjoint_scan_is_the_adjoint(monkeypatch, use_numba, kind, S, M):
    """Against its loop reference, chunk by chunk; and <g, scan(b)> == <adjoint(g), b>."""
    if use_numba and block_ops._numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(block_ops, "USE_NUMBA", use_numba)
    torch.manual_seed(1)
    T, B, src, dtype = 17, 2, _src(kind, S, M), torch.float64
    A = 0.9 * torch.randn(T, B, M, S, dtype=dtype) / M ** 0.5
    g, carry = torch.randn(B, T, S, dtype=dtype), torch.randn(B, S, dtype=dtype)
    lam_ref, q_ref = block_ops.column_adjoint_scan_reference(A, g, src, carry)
    lam, q = torch.empty_like(g), carry.clone()
    for t0, t1 in ((10, 17), (3, 10), (0, 3)):  # reverse chunk order, the carry goes back
        block_ops.column_adjoint_scan_(lam, A[t0:t1], g, src, q, t0)
    assert_close(lam, lam_ref, dtype, "adjoint")
    assert_close(q, q_ref, dtype, "A_0^T lambda_0")
    b = torch.randn(T, B, S, dtype=dtype)
    h = block_ops.column_scan_reference(A, b, src, torch.zeros(B, S, dtype=dtype))
    block_ops.column_adjoint_scan_(lam, A, g, src, torch.zeros(B, S, dtype=dtype))
    assert torch.allclose((g.transpose(0, 1) * h).sum(), (lam.transpose(0, 1) * b).sum())


def test_column_scans_name_bad_shapes():
    A, b, src = torch.randn(4, 2, 1, 3), torch.randn(4, 2, 3), torch.arange(3)[None]
    with pytest.raises(ValueError, match=r"column_scan_: expected A \(T, B, M, S\)"):
        block_ops.column_scan_(torch.empty(4, 2, 3), A, b[..., :2], src, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"column_adjoint_scan_: expected .* t0 \+ C <= T"):
        block_ops.column_adjoint_scan_(torch.empty(2, 4, 3), A, torch.randn(2, 4, 3), src,
                                       torch.zeros(2, 3), t0=2)
