"""What every numba CPU kernel in ``rnnlab.ops`` needs around it: the optional numba import,
numba's thread pool sized to torch's, zero-copy numpy views of tensors, and the split of work
into (sequence x feature block) items.

``numba`` is the module, or None where it is not installed (then every op runs its torch path).
The kernels share one layout: rows are the packed ``(B T)`` time steps, features contiguous
within a row; sequence ``s`` spans rows ``starts[s]:starts[s + 1]`` (``segment_starts``). A work
item is one sequence x one block of features (``item_span``), so sequences of different lengths
and wide rows both spread over the threads.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

try:  # optional: the fast CPU kernels; without it CPU runs the torch paths
    import numba
except ImportError:  # pragma: no cover - exercised where numba is not installed
    numba = None


# ----------------------------------------------------------------------------- threads

@contextlib.contextmanager
def torch_threads_kept():
    """Numba's OpenMP layer shares the OpenMP runtime with torch: launching its pool resets the
    thread count torch sees (1 became 2). Put torch's back after every kernel."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def numba_threads():
    """Run numba kernels with torch's thread count, and give torch its count back afterwards."""
    with torch_threads_kept():  # the first call starts numba's pool
        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        yield


def pool_threads() -> int:
    """Size numba's pool to torch's thread count (torch keeps its own) and return it."""
    with numba_threads():
        return numba.get_num_threads()


# ----------------------------------------------------------------------------- arrays

def empty_contiguous(x: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor like x (empty_like would keep a permuted or expanded layout)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def np_view(x: torch.Tensor, shape) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor made contiguous (conj/neg views resolved first)."""
    return x.detach().resolve_conj().resolve_neg().contiguous().numpy().reshape(shape)  # shape


# ----------------------------------------------------------------------------- work items

def segment_starts(cu, batch: int, steps: int) -> np.ndarray:
    """(N + 1,) int64 first row of each sequence in the packed (B T) rows, then the end:
    every T rows for a dense batch, else ``cu_seqlens`` (a CPU long tensor)."""
    return np.arange(batch + 1, dtype=np.int64) * steps if cu is None else cu.numpy()


def feature_blocks(nseg: int, width: int, threads: int) -> int:
    """Feature blocks per row. Whole rows stream best; rows are split (blocks >= 64 wide)
    only when there are too few sequences to keep the threads evenly busy."""
    if nseg % threads == 0 or nseg >= 4 * threads:
        return 1
    return max(1, min(threads, width // 64))


def plan_rows(a: torch.Tensor, b: torch.Tensor, cu):
    """Kernel arguments of an elementwise scan over non-empty ``b (B, T, ...)`` with ``a`` like
    b or broadcasting over a trailing block of it (``linear_scan``; ``minmax_scan`` passes its
    one shape twice): starts (N + 1,), feature blocks per row, and the kernel shapes of a-like
    (BT, G), b-like (BT, G, R) and state-like (N, G, R) arrays, without the R axis when a is
    not broadcast. Sizes numba's pool to torch's thread count on the way."""
    threads = pool_threads()
    batch, steps = b.shape[:2]
    groups = math.prod(a.shape[2:])
    rep = math.prod(b.shape[2:]) // groups
    starts = segment_starts(cu, batch, steps)
    nseg = len(starts) - 1
    nblk = feature_blocks(nseg, groups, threads)
    tail = (groups, rep) if rep > 1 else (groups,)
    return starts, nblk, (batch * steps, groups), (batch * steps,) + tail, (nseg,) + tail


if numba is not None:
    # Inlined into each kernel's loop body. numba's on-disk cache checks only the kernel's own
    # file: after editing this function, delete the kernels' cached builds (*.nbi, *.nbc under
    # rnnlab/ops/**/__pycache__), or they keep the old version.
    @numba.njit(inline="always")
    def item_span(item, nblk, width):
        """Work item -> (sequence, first feature, end feature): items run over sequences x
        ``nblk`` blocks of ``ceil(width / nblk)`` features (the last block may be short)."""
        block = -(-width // nblk)
        f0 = (item % nblk) * block
        return item // nblk, f0, min(f0 + block, width)
