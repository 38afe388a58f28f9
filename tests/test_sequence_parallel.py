"""Sequence parallelism (``rnnlab.distributed.sequence_parallel``) on spawned gloo process
groups of 2 and 3 ranks: each rank's outputs, the final state and every gradient (input chunk,
initial state, parameters: the last two summed over ranks) equal the single-process run of the
same layer over the whole sequence, for a complex diagonal cell (LRU), a diagonal cell with a
per-head decay (GLA), a matrix cell (LSSL) and nonlinear cells on Newton (ParaGRU: Diagonal,
ParaLSTM: Block(2)). One spawn of 3 ranks (process start-up dominates the time): the 3 ranks
split T = 10 unevenly (4, 3, 3) on the default group, then ranks 0 and 1 split T = 8 evenly on
a 2-rank subgroup (the ``group`` argument)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rnnlab
from rnnlab.cells.base import as_tuple
from rnnlab.distributed import sequence_parallel

CASES = [  # (cell, options, engine, tolerance on relative errors)
    ("lru", {}, "scan", 1e-9),
    ("gla", {"heads": 2}, "scan", 1e-9),
    ("lssl", {"state_size": 3}, "scan", 1e-9),
    ("paragru", {}, "newton", 1e-7),
    ("paralstm", {}, "newton", 1e-7),
]
B, D, H = 2, 4, 6


def _split(T: int, world: int):
    """Contiguous chunks, the first ones one step longer when T does not divide."""
    sizes = [T // world + (r < T % world) for r in range(world)]
    starts = [sum(sizes[:r]) for r in range(world)]
    return [(s, s + n) for s, n in zip(starts, sizes)]


def _dot(state, weights) -> torch.Tensor:
    """A scalar reading every (real or complex) leaf of a state."""
    leaves = as_tuple(state)
    return sum(((torch.view_as_real(t) if t.is_complex() else t) * w).sum()
               for t, w in zip(leaves, weights))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = (torch.view_as_real(t) if t.is_complex() else t for t in (a, b))
    return float((a - b).norm() / (b.norm() + 1e-30))


def _grads(layer, x, h0, loss_of):
    """Gradients of ``loss_of(y, h_T)`` to x, each leaf of h0 and each parameter."""
    leaves = [t.clone().requires_grad_() for t in as_tuple(h0)]
    x = x.clone().requires_grad_()
    state = tuple(leaves) if isinstance(h0, tuple) else leaves[0]
    y, h_T = loss_of[0](x, state)
    params = list(layer.parameters())
    grads = torch.autograd.grad(loss_of[1](y, h_T), [x, *leaves, *params], allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, [x, *leaves,
                                                                               *params])]
    return y.detach(), h_T, grads


def _check_case(name, options, engine, tol, group, T):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    torch.manual_seed(0)  # the same layer and data on every rank
    layer = rnnlab.Recurrent(name, engine=engine, input_size=D, hidden_size=H,
                             **options).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    h0 = tuple(torch.randn_like(t) for t in as_tuple(layer.initial_state(B)))
    h0 = h0 if isinstance(layer.initial_state(B), tuple) else h0[0]
    w = torch.randn(B, T, layer.output_size, dtype=torch.float64)
    v = [torch.randn((torch.view_as_real(t) if t.is_complex() else t).shape,
                     dtype=torch.float64) for t in as_tuple(h0)]
    y, h_T, ref = _grads(layer, x, h0, (layer, lambda y, h: (y * w).sum() + _dot(h, v)))
    t0, t1 = _split(T, world)[rank]
    run = lambda x_l, s: sequence_parallel(layer, x_l, s, group=group)  # noqa: E731
    # each rank's loss: its chunk's outputs and a 1/world share of the final state's term
    loss = lambda y_l, h: (y_l * w[:, t0:t1]).sum() + _dot(h, v) / world  # noqa: E731
    y_l, h_l, got = _grads(layer, x[:, t0:t1], h0, (run, loss))
    n_state = len(as_tuple(h0))
    got = got[:1] + [g.contiguous() for g in got[1:]]  # gloo reduces contiguous tensors
    for g in got[1:]:  # replicated tensors: per-rank partial gradients sum to the whole
        dist.all_reduce(g, group=group)
    where = f"{name} on rank {rank}/{world}"
    assert _rel(y_l, y[:, t0:t1]) <= tol, (where, "y", _rel(y_l, y[:, t0:t1]))
    for a, b in zip(as_tuple(h_l), as_tuple(h_T)):
        assert _rel(a.detach(), b.detach()) <= tol, (where, "h_T", _rel(a, b))
    assert _rel(got[0], ref[0][:, t0:t1]) <= tol, (where, "dx", _rel(got[0], ref[0][:, t0:t1]))
    names = [f"h0[{i}]" for i in range(n_state)] + [n for n, _ in layer.named_parameters()]
    for what, a, b in zip(names, got[1:], ref[1:]):
        assert _rel(a, b) <= tol, (where, what, _rel(a, b))
    if engine == "newton":
        assert layer.stats["engine"] == "sequence_parallel/newton"
        assert layer.stats["residual"] <= 1e-10, layer.stats


def _check_refusals():
    deltanet = rnnlab.Recurrent("deltanet", input_size=D, hidden_size=H)
    with pytest.raises(ValueError, match="deltanet|DeltaNet"):
        sequence_parallel(deltanet, torch.randn(B, 3, D))
    with pytest.raises(ValueError, match="householder"):
        sequence_parallel(deltanet, torch.randn(B, 3, D))
    lru = rnnlab.Recurrent("lru", input_size=D, hidden_size=H)
    with pytest.raises(ValueError, match="x_local"):
        sequence_parallel(lru, torch.randn(B, 3, D + 1))


def _worker(rank, port):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=3)
    try:
        pair = dist.new_group([0, 1])  # collective: every rank creates it
        for case in CASES:
            _check_case(*case, None, 10)
            if rank < 2:
                _check_case(*case, pair, 8)
        _check_refusals()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_split_over_3_and_2_ranks_equals_single_process():
    mp.spawn(_worker, args=(_free_port(),), nprocs=3, join=True)


def test_split_helper_is_contiguous_and_uneven():
    assert _split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert _split(8, 2) == [(0, 4), (4, 8)]


def test_needs_a_process_group():
    layer = rnnlab.Recurrent("lru", input_size=D, hidden_size=H)
    with pytest.raises(RuntimeError, match="init_process_group"):
        sequence_parallel(layer, torch.randn(B, 4, D))


def test_needs_a_recurrent_layer():
    with pytest.raises(TypeError, match="layer must be a rnnlab.Recurrent, got Linear"):
        sequence_parallel(torch.nn.Linear(D, H), torch.randn(B, 4, D))
