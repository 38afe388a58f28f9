"""On CUDA (skipped without it): every cell on every engine that runs it, and the ops with CUDA
kernels, give the CPU's numbers and gradients. ``python bench/gpu.py`` runs this suite and the
GPU benchmarks in one call on a GPU machine."""
from __future__ import annotations

import copy

import pytest
import torch

import rnnlab
from rnnlab import cells, engines
from rnnlab.cells import as_tuple, map_state
from rnnlab.ops import matrix_scan
from rnnlab.ops.diagonal import backend, linear_scan, linear_scan_reference

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

D, H, B, T = 8, 12, 3, 37  # H: even (S4D), divisible by heads


def _run(layer, x, h0, lengths):
    x = x.clone().requires_grad_()
    h0 = map_state(lambda t: t.clone().requires_grad_(), h0)
    y, h = layer(x, h0, lengths=lengths)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y)
    ((y * w).sum() + sum(t.abs().square().sum() for t in as_tuple(h))).backward()
    grads = [x.grad, *[t.grad for t in as_tuple(h0)], *[p.grad for p in layer.parameters()]]
    return [y, *as_tuple(h), *grads]


def _rel(a, b):
    a, b = a.detach().cpu().to(torch.complex128 if a.is_complex() else torch.float64), \
        b.detach().to(a.dtype if a.is_complex() else torch.float64)
    return ((a - b).abs().norm() / b.abs().norm().clamp_min(1e-30)).item()


def _runs(cell: str, engine: str) -> bool:
    try:  # resolve refuses an engine that cannot run the cell
        engines.resolve(engine, cells.get(cell, D, H, device="meta"))
    except ValueError:
        return False
    return True


CASES = [(c, e) for c in cells.available() for e in ("sequential", "scan", "newton", "fused")
         if _runs(c, e)]


@pytest.mark.parametrize("cell,engine", CASES)
def test_cell_on_cuda_equals_cpu(cell, engine):
    torch.manual_seed(0)
    cpu = rnnlab.Recurrent(cells.get(cell, D, H), engine=engine)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(B, T, D)
    h0 = map_state(lambda z: 0.3 * torch.randn(z.shape, dtype=z.dtype), cpu.cell.init_state(B))
    lengths = torch.tensor([T, T // 2, 1])
    want = _run(cpu, x, h0, lengths)
    got = _run(gpu, x.cuda(), map_state(lambda t: t.cuda(), h0), lengths.cuda())
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.is_cuda
        assert _rel(g, w) < 1e-4, f"{cell} on {engine}: tensor #{i} differs by {_rel(g, w):.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bfloat16], ids=str)
def test_diagonal_scan_kernel_on_cuda(dtype):
    assert backend("cuda") in ("triton", "torch")
    g = torch.Generator().manual_seed(0)
    real = torch.float32 if dtype == torch.bfloat16 else dtype
    a = (0.9 * torch.rand(1, 300, 4, 33, generator=g)).to(real)
    b = torch.randn(1, 300, 4, 33, generator=g).to(real)
    if dtype.is_complex:
        a, b = a * (1 + 0.1j), b * (1 - 0.2j)
    a, b = a.to(dtype), b.to(dtype)
    h0 = torch.randn(3, 4, 33, generator=g).to(torch.float32 if not dtype.is_complex else dtype)
    cu = torch.tensor([0, 100, 100, 300])
    want = linear_scan_reference(a, b, h0, True, cu)
    got = linear_scan(a.cuda(), b.cuda(), h0.cuda(), True, cu.cuda())
    for g_, w in zip(got, want):
        assert _rel(g_, w) < (2e-2 if dtype == torch.bfloat16 else 1e-5)


def test_matrix_scan_on_cuda():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(2, 500, 3, 4, 4, generator=g) * 0.4
    b = torch.randn(2, 500, 3, 4, generator=g)
    want = matrix_scan(A, b, None, True)
    got = matrix_scan(A.cuda(), b.cuda(), None, True)
    for g_, w in zip(got, want):
        assert _rel(g_, w) < 1e-4


@pytest.mark.parametrize("per_key", [True, False])
def test_gla_kernels_on_cuda(per_key):
    from rnnlab.ops.gla import gated_linear_attention, gated_linear_attention_reference
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 100, 2, 16, generator=g), torch.randn(2, 100, 2, 16, generator=g)
    v = torch.randn(2, 100, 2, 16, generator=g)
    lg = -torch.rand(2, 100, 2, *((16,) if per_key else ()), generator=g)
    want = gated_linear_attention_reference(q, k, v, lg, output_final_state=True)
    got = gated_linear_attention(*(t.cuda() for t in (q, k, v, lg)), output_final_state=True)
    for g_, w in zip(got, want):
        assert _rel(g_, w) < 1e-5


@pytest.mark.parametrize("name", ["paragru", "indrnn", "paralstm"])
def test_newton_takes_the_fused_kernels_on_cuda(name):
    from rnnlab.engines import Newton
    torch.manual_seed(0)
    cpu = rnnlab.Recurrent(cells.get(name, D, H), engine="sequential")
    gpu = rnnlab.Recurrent(copy.deepcopy(cpu.cell).cuda(), engine=Newton())
    x = torch.randn(B, 300, D)
    lengths = torch.tensor([300, 150, 1])
    h0 = map_state(lambda z: 0.3 * torch.randn(z.shape), cpu.cell.init_state(B))
    want = _run(cpu, x, h0, lengths)
    got = _run(gpu, x.cuda(), map_state(lambda t: t.cuda(), h0), lengths.cuda())
    assert gpu.stats.get("kernel") == "triton"
    for i, (g, w) in enumerate(zip(got, want)):
        assert _rel(g, w) < 1e-4, f"{name}: tensor #{i} differs by {_rel(g, w):.2e}"
