"""Sequence-parallel scan time: 2 gloo processes (1 thread each) splitting T vs 1 process over
the whole sequence, for one linear cell on the scan path and one nonlinear cell on Newton.

Each entry: median seconds of forward and forward+backward over `reps` calls (a barrier
before each), for `rnnlab.distributed.sequence_parallel` with 1 rank (the same code, its
collectives over a group of one), with 2 ranks, and the plain layer (`layer(x)`, no
distributed) on 1 process; plus the bytes each rank sends in the forward by the cost model
(2 state vectors per sample with 2 ranks, diagonal kinds).

Usage: python bench/sequence_parallel.py [OUT.json]
(default bench/out/sequence_parallel.json). Needs 2 free cores to mean anything.
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CASES = [  # (cell, engine, options, B, T, D, H)
    ("lru", "scan", {}, 8, 8192, 64, 64),
    ("paragru", "newton", {}, 8, 4096, 64, 64),
]
REPS = 5


def _timed(fn, group) -> float:
    times = []
    for i in range(REPS + 1):  # the first call warms up
        dist.barrier(group)
        t = time.perf_counter()
        fn()
        dist.barrier(group)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def _case(rank, world, cell, engine, options, B, T, D, H):
    import rnnlab
    from rnnlab.distributed import sequence_parallel

    torch.manual_seed(0)
    layer = rnnlab.Recurrent(cell, engine=engine, input_size=D, hidden_size=H, **options)
    x = torch.randn(B, T, D)
    n = T // world
    x_l = x[:, rank * n:(rank + 1) * n].clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            sequence_parallel(layer, x_l)

    def fwd_bwd():
        y, h = sequence_parallel(layer, x_l)
        y.sum().backward()

    out = {"fwd_s": _timed(fwd, None), "fwd_bwd_s": _timed(fwd_bwd, None)}
    if world == 1:  # the plain layer, no distributed code at all
        out["plain_fwd_s"] = _timed(lambda: layer(x_l.detach()), None)
        out["plain_fwd_bwd_s"] = _timed(lambda: layer(x_l)[0].sum().backward(), None)
    state = sum(t[0].numel() * (2 if t.is_complex() else 1)
                for t in rnnlab.cells.base.as_tuple(layer.initial_state(B)))
    out["state_numbers_per_sample"] = state
    return out


def _worker(rank, world, port, path):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    results = [dict(cell=c[0], engine=c[1], B=c[3], T=c[4], D=c[5], H=c[6],
                    **_case(rank, world, *c)) for c in CASES]
    if rank == 0:
        with open(path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def _run(world: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        mp.spawn(_worker, args=(world, port, path), nprocs=world, join=True)
        with open(path) as f:
            return json.load(f)


def main(out: str):
    one, two = _run(1), _run(2)
    rows = []
    for a, b in zip(one, two):
        S, B, itemsize = a["state_numbers_per_sample"], a["B"], 4
        rows.append({**{k: a[k] for k in ("cell", "engine", "B", "T", "D", "H")},
                     "state_numbers_per_sample": S,
                     "plain_1proc": {"fwd_s": a["plain_fwd_s"], "fwd_bwd_s": a["plain_fwd_bwd_s"]},
                     "sp_1rank": {"fwd_s": a["fwd_s"], "fwd_bwd_s": a["fwd_bwd_s"]},
                     "sp_2ranks": {"fwd_s": b["fwd_s"], "fwd_bwd_s": b["fwd_bwd_s"]},
                     "speedup_fwd_bwd_2ranks_vs_plain": a["plain_fwd_bwd_s"] / b["fwd_bwd_s"],
                     # diagonal: all_gather of (P, e) = 2 state vectors per sample, per rank
                     "model_bytes_sent_per_rank_fwd": 2 * B * S * itemsize})
    result = {"what": "sequence_parallel: 2 gloo processes vs 1 (1 thread each); medians of "
                      f"{REPS} calls", "machine": "shared 2-core CPU, other jobs running",
              "torch": torch.__version__, "rows": rows}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(out + ".tmp", out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/sequence_parallel.json")
