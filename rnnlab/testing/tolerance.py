"""How close is close: the relative error ``||a - b|| / ||b||`` over states (tensors or tuples
of tensors, real or complex) and the one tolerance table per compute dtype that every parity
check of rnnlab (its own suite and ``check_cell``) holds to."""
from __future__ import annotations

import torch

from ..cells.base import State, as_tuple

# rel_err(a, b) = ||a - b|| / ||b|| must stay under this, per compute dtype.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


def widen(t: torch.Tensor) -> torch.Tensor:
    """fp64, or complex128 for complex tensors."""
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def sq_norm(state: State) -> torch.Tensor:
    """Sum of |x|^2 over a state's leaves: a real scalar, also for complex states."""
    return sum((t.abs() ** 2).sum() for t in as_tuple(state))


def rel_err(a: State, b: State) -> float:
    """``||a - b|| / ||b||`` over tensors or tuples of tensors (0 when both are zero)."""
    a = tuple(t.detach() for t in as_tuple(a))
    b = tuple(t.detach() for t in as_tuple(b))
    if len(a) != len(b):
        raise AssertionError(f"layouts differ: {len(a)} vs {len(b)} tensors")
    for x, y in zip(a, b):
        if x.shape != y.shape:
            raise AssertionError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    a, b = tuple(map(widen, a)), tuple(map(widen, b))
    num = sum(float((x - y).norm() ** 2) for x, y in zip(a, b)) ** 0.5
    den = sum(float(y.norm() ** 2) for y in b) ** 0.5
    return num / den if den > 0 else num


def assert_close(a: State, b: State, dtype: torch.dtype = torch.float32, what: str = "") -> None:
    """``rel_err(a, b) <= TOL[dtype]``, else an AssertionError saying ``what`` and by how much."""
    err = rel_err(a, b)
    if err > TOL[dtype]:
        raise AssertionError(f"{what}: relative error {err:.3e} > {TOL[dtype]:.0e} ({dtype})")
