"""Timing and result-writing helpers shared by the benchmarks."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from ..tools.files import write_atomic


def best_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``fn`` over ``repeats`` runs, in milliseconds (after ``warmup`` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def cuda_ms(fn: Callable[[], object], warmup: int = 3, runs: int = 10,
            stat: str = "median") -> float:
    """Milliseconds of ``fn`` on the current CUDA stream, timed with CUDA events after
    ``warmup`` calls: the ``median`` (or ``min``) of ``runs`` timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return min(times) if stat == "min" else sorted(times)[len(times) // 2]


def cuda_fwd_and_fwdbwd(forward: Callable, x: torch.Tensor, params, warmup: int = 3,
                        runs: int = 10) -> dict:
    """``forward(x) -> y`` timed on CUDA without grad, then with ``y.sum().backward()`` (the
    gradients of ``params`` cleared each call): ``fwd_ms`` and ``fwd_bwd_ms``."""
    def fwd():
        with torch.no_grad():
            forward(x)

    xg = x.detach().clone().requires_grad_()

    def fwdbwd():
        for p in params:
            p.grad = None
        forward(xg).sum().backward()

    return dict(fwd_ms=round(cuda_ms(fwd, warmup, runs), 3),
                fwd_bwd_ms=round(cuda_ms(fwdbwd, warmup, runs), 3))


def machine() -> dict:
    """What the numbers were measured on."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "device": "cpu"}


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` as JSON, atomically (temp file, then rename)."""
    return write_atomic(Path(path), json.dumps(data, indent=1))
