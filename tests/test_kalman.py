"""The parallel-in-time Kalman smoother (``ops/kalman.py``) equals the sequential sweeps: in the
op's block layout against its loop reference, in ELK's column layout against the numba and torch
sweeps of ``elk_step`` (Diagonal, Block, Heads, Dense; quasi too), with linearizations that are
unstable in places, and end to end in the Newton engine with ELK damping."""
from __future__ import annotations

import math

import pytest
import torch

from rnnlab import cells
from rnnlab.cells import map_state
from rnnlab.engines import Newton, elk
from rnnlab.engines.linearize import Layout
from rnnlab.ops.kalman import parallel_smoother, smoother_reference

from .helpers import TOL, assert_agrees, assert_close, rel_err
from .test_engines_elk import dense_lm_step

SIGMA2 = (1e-3, 1.0, 1e4)


def unstable_blocks(T, N, M, dtype=torch.float64, seed=0):
    """Blocks ``(T, N, M, M)`` alternating contracting (x0.4) and expanding (x2.5) runs of time,
    so the linearization has spectral radius > 1 in places (ELK's use case)."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(T, N, M, M, generator=g, dtype=torch.float64) / M ** 0.5
    scale = torch.where(torch.arange(T) % 8 < 4, 0.4, 2.5).to(torch.float64)
    return (J * scale.view(T, 1, 1, 1)).to(dtype)


def test_blocks_are_unstable_in_places():
    radius = torch.linalg.eigvals(unstable_blocks(64, 5, 2)).abs().amax(-1)  # (T, N)
    assert (radius > 1).any() and (radius < 1).any()


@pytest.mark.parametrize("M", [1, 2, 3, 4])
@pytest.mark.parametrize("T", [1, 2, 5, 64, 100])
@pytest.mark.parametrize("sigma2", SIGMA2)
def test_parallel_smoother_equals_the_sweeps(M, T, sigma2):
    J = unstable_blocks(T, 5, M, seed=T * 10 + M)
    r = torch.randn(T, 5, M, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = smoother_reference(J, r, sigma2)
    assert rel_err(parallel_smoother(J, r, sigma2), ref) <= 1e-9, "float64"
    out32 = parallel_smoother(J.float(), r.float(), sigma2)
    assert out32.dtype == torch.float32
    assert_close(out32, smoother_reference(J.float(), r.float(), sigma2), torch.float32, "fp32")


@pytest.mark.parametrize("M", [1, 3])
def test_parallel_smoother_is_the_levenberg_marquardt_step(M):
    """Against the brute-force dense solve (independent of both sweeps): one group per batch."""
    J = unstable_blocks(9, 2, M)
    r = torch.randn(9, 2, M, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cols = J.transpose(-1, -2)  # (T, B, M, S = M): column c of group 0 is J[:, c]
    src = torch.arange(M).repeat(M, 1).t()  # (M, S): member m of the one group is m
    for sigma2 in SIGMA2:
        assert_close(parallel_smoother(J, r, sigma2), dense_lm_step(cols, r, src, sigma2),
                     torch.float64, f"sigma2={sigma2}")


def layouts():
    """Diagonal (S = 6), Block(2) (3 channels), Heads(3, 2) over 2 leaves (M = 4), Dense."""
    return {"diagonal": Layout(((6,),), False, 6, 1, (6, 1)),
            "block2": Layout(((3,), (3,)), True, 6, 2, (3, 1)),
            "heads": Layout(((6,), (6,)), True, 12, 4, (3, 2)),
            "dense": Layout(((5,),), False, 5, 5, (1, 5))}


@pytest.mark.parametrize("name", list(layouts()))
@pytest.mark.parametrize("quasi", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_elk_step_parallel_equals_sequential(monkeypatch, name, quasi, dtype):
    lay = layouts()[name]
    g = torch.Generator().manual_seed(3)
    A = (1.3 * torch.randn(37, 2, lay.width, lay.size, generator=g)).to(dtype)  # (T, B, M, S)
    r = torch.randn(37, 2, lay.size, generator=g).to(dtype)  # (T, B, S)
    args = (A, r, lay.members(), lay.within())
    for sigma2 in SIGMA2:
        par = elk.elk_step(*args, sigma2, quasi=quasi, parallel=True)
        assert par.dtype == dtype
        seq = [elk.elk_step(*args, sigma2, quasi=quasi, parallel=False)]  # numba if installed
        with monkeypatch.context() as m:
            m.setattr(elk, "USE_NUMBA", False)
            seq.append(elk.elk_step(*args, sigma2, quasi=quasi, parallel=False))  # torch loop
        for s in seq:
            err = rel_err(par, s)
            assert err <= (1e-9 if dtype == torch.float64 else TOL[dtype]), \
                f"{name} sigma2={sigma2}: relative error {err:.2e}"


def _spy(monkeypatch):
    calls = []
    real = elk._smooth_parallel

    def spy(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(elk, "_smooth_parallel", spy)
    return calls


@pytest.mark.parametrize("flag, use_numba, kind, runs_parallel",
                         [(None, True, "block2", False), (None, False, "block2", False),
                          (None, False, "diagonal", True), (None, True, "diagonal", False),
                          (True, True, "block2", True), (False, False, "diagonal", False)])
def test_the_switch(monkeypatch, flag, use_numba, kind, runs_parallel):
    """parallel=None reads elk.PARALLEL; when that is None too, on CPU numba's sweeps win, and
    without numba the scan runs only for scalar groups (the torch loop beats it for blocks)."""
    if use_numba and elk._numba is None and not runs_parallel:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(elk, "PARALLEL", flag)
    monkeypatch.setattr(elk, "USE_NUMBA", use_numba)
    calls = _spy(monkeypatch)
    lay = layouts()[kind]
    M = lay.width
    elk.elk_step(torch.randn(4, 1, M, 6), torch.randn(4, 1, 6), lay.members(), lay.within(), 1.0)
    assert bool(calls) == runs_parallel


@pytest.mark.parametrize("damping", ["elk", "quasi-elk"])
@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_newton_elk_with_the_parallel_smoother_equals_sequential(monkeypatch, name, damping):
    monkeypatch.setattr(elk, "PARALLEL", True)
    calls = _spy(monkeypatch)
    torch.manual_seed(0)
    cell = cells.get(name, 5, 6)
    h0 = map_state(lambda z: 0.5 * torch.randn(z.shape), cell.init_state(3))
    x = torch.randn(3, 63, 5)
    engine = Newton(damping=damping, max_iters=200)
    assert_agrees(cell, engine, x, h0, torch.tensor([63, 31, 0]), f"{name} {damping}")
    assert engine.stats["converged"] and calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("M", [1, 2])
def test_parallel_smoother_on_cuda(M):
    J, r = unstable_blocks(100, 4, M), torch.randn(100, 4, M, dtype=torch.float64)
    out = parallel_smoother(J.cuda(), r.cuda(), 1.0)
    assert rel_err(out.cpu(), smoother_reference(J, r, 1.0)) <= 1e-9


def test_errors():
    J, r = torch.zeros(3, 2, 2, 2), torch.zeros(3, 2, 2)
    with pytest.raises(ValueError, match=r"J: expected shape \(T, N, M, M\)"):
        parallel_smoother(J[..., 0], r, 1.0)
    with pytest.raises(ValueError, match=r"r: expected shape \(T, N, M\) = \(3, 2, 2\)"):
        parallel_smoother(J, r[:, :1], 1.0)
    with pytest.raises(ValueError, match=r"sigma2: expected a number in \(0, inf\), got 0.0"):
        parallel_smoother(J, r, 0.0)
    with pytest.raises(ValueError, match=r"sigma2: expected a number in \(0, inf\), got inf"):
        parallel_smoother(J, r, math.inf)
    with pytest.raises(TypeError, match=r"sigma2: expected a number in \(0, inf\), got True"):
        parallel_smoother(J, r, True)
    with pytest.raises(TypeError, match="parallel: expected None, True or False"):
        elk.elk_step(J[:, :, :1], r, torch.arange(2).unsqueeze(0), torch.arange(2), 1.0,
                     parallel="yes")
