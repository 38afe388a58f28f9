"""Timing and result-writing helpers shared by the benchmarks."""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


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


def machine() -> dict:
    """What the numbers were measured on."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "device": "cpu"}


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
