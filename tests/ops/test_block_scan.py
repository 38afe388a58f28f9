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
