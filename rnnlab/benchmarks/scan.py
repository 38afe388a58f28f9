"""Diagonal linear scan (``rnnlab.ops.linear_scan``) against memory bandwidth and a naive loop.

For each T, in one process: copy bandwidth (``y.copy_(x)`` on 256 MB, counted as 2 x bytes /
time), a naive torch loop over time (forward; forward+backward through autograd), and
``linear_scan`` forward and forward+backward, fp32, a, b: (B, T, D), backward from random
upstream gradients on h. Bytes: a diagonal scan must read a, b and write h, 3 B T D 4 bytes;
forward+backward must move at least 8 B T D 4 (backward reads dh, a, h and writes da, db).

Fresh pages: glibc hands blocks this large back to the OS on free, so every call's outputs
land on new pages whose first-touch page faults cost about as much as the scan itself (more
in a VM). The op is therefore timed twice: ``as_called`` (the process allocator as it is) and
``reuse`` (glibc told, for that part only, to keep freed memory for reuse, as jemalloc,
tcmalloc or a caching allocator do; see ``_reuse_freed_memory``). Setting torch's
``THP_MEM_ALLOC_ENABLE=1`` before torch is imported (2 MB pages for large tensors) also removes
most of the fault cost; the result records whether it was set.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

import torch

from ..ops import diagonal as scan_ops
from .timing import best_ms, machine

_FP32 = 4  # bytes per element


@contextlib.contextmanager
def _reuse_freed_memory():
    """Have glibc malloc keep freed large blocks in its heap (no munmap, no trim) and restore
    its defaults after; yields whether that was possible (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, TypeError, AttributeError):
        yield False
        return
    trim, mmap = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD from <malloc.h>
    done = mallopt(mmap, 1 << 30) == 1 and mallopt(trim, (1 << 31) - 1) == 1
    try:
        yield done
    finally:  # glibc's defaults, then give the retained memory back
        mallopt(mmap, 128 * 1024)
        mallopt(trim, 128 * 1024)
        libc.malloc_trim(0)


def _loadavg():
    """1-minute load average: other processes move these numbers (None where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _copy_gbps(repeats: int) -> float:
    x = torch.randn(64 * 2 ** 20)  # 256 MB
    y = torch.empty_like(x)
    return 2 * x.numel() * _FP32 / best_ms(lambda: y.copy_(x), max(5, repeats)) / 1e6


def _naive_ms(a, b, grad, repeats: int) -> tuple:
    """(forward ms, forward+backward ms) of a plain torch loop over time."""
    batch, steps, width = b.shape

    def forward():  # as in the CPU anchors: preallocated output, one slice per step
        h, out = b.new_zeros(batch, width), torch.empty_like(b)
        for t in range(steps):
            h = a[:, t] * h + b[:, t]
            out[:, t] = h
        return out

    def forward_backward():  # unbind, not a[:, t]: each slice's backward would fill a (B, T, D)
        h, outs = b.new_zeros(batch, width), []
        for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
            h = a_t * h + b_t
            outs.append(h)
        torch.stack(outs, 1).backward(grad)
        a.grad = b.grad = None

    with torch.no_grad():
        fwd = best_ms(forward, repeats, warmup=0)
    return fwd, best_ms(forward_backward, max(1, min(repeats, 2)), warmup=0)


def _scan_ms(a, b, grad, repeats: int) -> tuple:
    """(forward ms, forward+backward ms) of linear_scan."""
    def forward_backward():
        h, _ = scan_ops.linear_scan(a, b)
        h.backward(grad)
        a.grad = b.grad = None

    with torch.no_grad():  # two warm-ups: compile (or load) the kernels, then settle malloc
        fwd = best_ms(lambda: scan_ops.linear_scan(a, b), repeats, warmup=2)
    return fwd, best_ms(forward_backward, repeats, warmup=2)


def _rates(fwd_ms, fwdbwd_ms, numel, copy_gbps, naive_fwd_ms, naive_fwdbwd_ms) -> dict:
    """Bandwidths, % of copy bandwidth and speedups over the naive loop, from the times."""
    fwd_gbps = 3 * numel * _FP32 / fwd_ms / 1e6
    fwdbwd_gbps = 8 * numel * _FP32 / fwdbwd_ms / 1e6
    return {"fwd_ms": fwd_ms, "fwdbwd_ms": fwdbwd_ms,
            "fwd_GBps": fwd_gbps, "fwd_pct_copy": 100 * fwd_gbps / copy_gbps,
            "fwdbwd_GBps": fwdbwd_gbps, "fwdbwd_pct_copy": 100 * fwdbwd_gbps / copy_gbps,
            "fwd_speedup": naive_fwd_ms / fwd_ms, "fwdbwd_speedup": naive_fwdbwd_ms / fwdbwd_ms,
            "fwdbwd_speedup_over_naive_fwd": naive_fwd_ms / fwdbwd_ms}


def run(batch: int = 16, lengths=(1024, 4096, 16384), width: int = 256, repeats: int = 3,
        seed: int = 0) -> dict:
    """Time linear_scan, a naive loop and a memory copy at each T in ``lengths``; JSON-able."""
    torch.manual_seed(seed)
    load_before, rows = _loadavg(), []
    for steps in lengths:
        a = (torch.rand(batch, steps, width) * 0.5 + 0.5).requires_grad_()  # decays in [0.5, 1)
        b = torch.randn(batch, steps, width).requires_grad_()
        grad = torch.randn(batch, steps, width)
        naive_fwd, naive_fwdbwd = _naive_ms(a, b, grad, repeats)
        copy_before = _copy_gbps(repeats)
        as_called = _scan_ms(a, b, grad, repeats)
        with _reuse_freed_memory() as reusing:
            reuse = _scan_ms(a, b, grad, repeats) if reusing else None
        copies = (copy_before, _copy_gbps(repeats))
        copy = max(copies)  # the better machine state of the two: % of copy errs low, not high
        rows.append({"T": steps, "copy_GBps": copy, "copy_GBps_before_after": copies,
                     "naive_fwd_ms": naive_fwd, "naive_fwdbwd_ms": naive_fwdbwd,
                     "as_called": _rates(*as_called, a.numel(), copy, naive_fwd, naive_fwdbwd),
                     "reuse": None if reuse is None else _rates(*reuse, a.numel(), copy,
                                                                naive_fwd, naive_fwdbwd)})
        del a, b, grad
    return {"benchmark": "scan", "op": "rnnlab.ops.linear_scan",
            "backend": scan_ops.backend("cpu"), "batch": batch, "width": width,
            "dtype": "float32", "repeats": repeats, "bytes_fwd": "3*B*T*D*4",
            "bytes_fwdbwd": "8*B*T*D*4", "machine": machine(),
            # torch's own switch for 2 MB pages on large CPU tensors (set before import)
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
            "loadavg_1min": {"before": load_before, "after": _loadavg()}, "rows": rows}


def print_table(result: dict, console) -> None:
    """One rich table per allocator mode: ms, % of copy bandwidth, speedup over the loop."""
    from rich.table import Table
    console.print(f"linear_scan ({result['backend']}) B={result['batch']} D={result['width']} "
                  f"fp32, {result['machine']['threads']} threads, best of {result['repeats']}; "
                  f"times in ms; bytes fwd 3·BTD·4, fwd+bwd 8·BTD·4; x = speedup over the loop")
    for mode, title in (("as_called", "as called (process allocator as is)"),
                        ("reuse", "freed memory reused (glibc mallopt)")):
        table = Table(title=title)
        for col in ("T", "copy GB/s", "loop fwd", "loop f+b", "fwd", "fwd %copy", "fwd x",
                    "f+b", "f+b %copy", "f+b x"):
            table.add_column(col, justify="right")
        for row in result["rows"]:
            r = row[mode]
            if r is None:
                continue
            table.add_row(str(row["T"]), f"{row['copy_GBps']:.1f}", f"{row['naive_fwd_ms']:.0f}",
                          f"{row['naive_fwdbwd_ms']:.0f}", f"{r['fwd_ms']:.1f}",
                          f"{r['fwd_pct_copy']:.0f}%", f"{r['fwd_speedup']:.1f}",
                          f"{r['fwdbwd_ms']:.1f}", f"{r['fwdbwd_pct_copy']:.0f}%",
                          f"{r['fwdbwd_speedup']:.1f}")
        console.print(table)
