"""Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``, elementwise over features.

``linear_scan`` is the fast op: on CPU a numba kernel (optional dependency) that makes one pass
over memory with the time loop inside, threaded over sequences and feature blocks with
``torch.get_num_threads()`` threads; on CUDA the same one-pass design as Triton kernels (optional
dependency); elsewhere (or without them) a pure-torch chunked scan.
``backend(device)`` says which; setting ``USE_NUMBA = False`` here sends CPU to the torch path
too. The backward is the analytic reverse scan, never autograd through a loop.
``linear_scan_reference`` is the plain loop over time both are tested against.

One module per path, as fla splits ``naive`` / ``chunk`` / ``fused_recurrent``:

- ``reference.py``: ``linear_scan_reference``, the plain loop;
- ``chunked.py``: the torch path;
- ``numba_kernels.py``: the CPU kernels (thread pool and array helpers in ``ops/numba_pool.py``);
- ``triton_kernels.py``: the CUDA kernels (custom ops ``torch.ops.rnnlab.diagonal_scan``);
- ``inputs.py``: the checks and dtypes all of them share;
- here: the dispatch between the paths, the autograd Function and ``linear_scan``.

Shapes: ``a, b`` are ``(B, T, ...)``; ``a`` may hold size-1 trailing dims that broadcast against
``b`` (e.g. ``a (B, T, H, 1, 1)`` with ``b (B, T, H, K, V)``); states are ``(B, ...)``, or
``(N, ...)`` with ``cu_seqlens`` (see ``varlen.py``).
"""
from __future__ import annotations

import functools
import importlib.util
import math

import torch
from torch.autograd.function import once_differentiable

from ..numba_pool import numba as _numba
from ..numba_pool import numba_threads  # noqa: F401 - public here before the split
from .chunked import torch_backward, torch_forward
from .inputs import check_inputs, dtypes
from .numba_kernels import numba_backward, numba_forward
from .reference import linear_scan_reference  # noqa: F401 - public API

USE_NUMBA = _numba is not None  # module-level switch (tests turn it off to test the torch path)
USE_TRITON = True  # CUDA takes the Triton kernels where triton imports; False: the torch path
_MIN_BROADCAST = 16  # fewer b elements per broadcast `a` value: expanding `a` is faster


def backend(device="cpu") -> str:
    """The path ``linear_scan`` takes on ``device``: "numba" (CPU kernel), "triton" (CUDA
    kernel, ``triton_kernels.py``) or "torch" (chunked)."""
    kind = torch.device(device).type
    if kind == "cpu" and USE_NUMBA and _numba is not None:
        return "numba"
    if kind == "cuda" and USE_TRITON and _triton_importable():
        return "triton"
    return "torch"


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def _numba_ready(*tensors) -> bool:
    return all(backend(t.device) == "numba" for t in tensors)


def _kernel_layout(a_feats, b_feats) -> bool:
    """Whether the kernels take ``a`` as it is: like b, or one value per group broadcast over
    a trailing block of >= 16 elements (fewer is faster expanded to b's shape)."""
    if a_feats == b_feats:
        return True
    k = next(i for i, (m, n) in enumerate(zip(a_feats, b_feats)) if m != n)
    return all(m == 1 for m in a_feats[k:]) and math.prod(b_feats[k:]) >= _MIN_BROADCAST


class _LinearScan(torch.autograd.Function):
    """a (B, T, ...) broadcasting against b (B, T, ...), h0 (B or N, ...), all in one compute
    dtype -> h (B, T, ...), h_T (B or N, ...). Backward is the analytic reverse scan."""

    @staticmethod
    def forward(ctx, a, b, h0, cu):
        ctx.set_materialize_grads(False)  # an unused h or h_T gets no zero-filled gradient
        fast = _numba_ready(a, b, h0) and b.numel() > 0
        h, hT = (numba_forward if fast else torch_forward)(a, b, h0, cu)
        ctx.save_for_backward(a, h, h0)
        ctx.cu, ctx.fast = cu, fast
        return h, hT

    @staticmethod
    @once_differentiable
    def backward(ctx, dh, dhT):
        a, h, h0 = ctx.saved_tensors
        dh = torch.zeros_like(h) if dh is None else dh
        dhT = torch.zeros_like(h0) if dhT is None else dhT
        backward = numba_backward if ctx.fast else torch_backward
        da, db, dh0 = backward(a, h, h0, dh, dhT, ctx.cu)
        return da, db, dh0, None


_run_linearscan = torch.compiler.disable(_LinearScan.apply)  # graph break under torch.compile


def linear_scan(a: torch.Tensor, b: torch.Tensor, initial_state: torch.Tensor | None = None,
                output_final_state: bool = False, cu_seqlens: torch.Tensor | None = None):
    """Diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` with ``h_0 = initial_state``.

    Args:
        a: (B, T, ...) decays; size-1 trailing dims broadcast against b, e.g. (B, T, H, 1, 1)
            with b (B, T, H, K, V). Real (fp16/bf16/fp32/fp64) or complex.
        b: (B, T, ...) inputs.
        initial_state: (B, ...), or (N, ...) with cu_seqlens; zeros if None.
        output_final_state: also return h_T.
        cu_seqlens: (N + 1,) cumulative lengths of N sequences packed along T (B == 1); each
            restarts from its own initial_state row.
    Returns:
        h: (B, T, ...) in the dtype of a and b (bf16/fp16 are computed in fp32);
        h_T: (B, ...) or (N, ...) in the compute dtype (>= fp32), or None.
    Gradients flow to a, b and initial_state, through h and h_T (not twice differentiable).
    On CPU with numba installed the kernel moves each tensor through memory once (forward:
    read a, b, write h; backward: read dh, a, h, write da, db).
    """
    cu = check_inputs(a, b, initial_state, cu_seqlens)
    io, compute = dtypes(a, b, initial_state)
    feats = b.shape[2:]
    if _numba_ready(a) and not _kernel_layout(tuple(a.shape[2:]), tuple(feats)):
        a = a.expand(b.shape)  # (B, T, ...) like b; autograd sums the gradient back
    h0 = (b.new_zeros((b.shape[0] if cu is None else cu.numel() - 1,) + feats, dtype=compute)
          if initial_state is None else initial_state.to(compute))  # (B or N, ...)
    if backend(b.device) == "triton" and b.numel() > 0:
        from .triton_kernels import triton_forward  # imports triton: only when used
        h, hT = triton_forward(a.to(compute), b.to(compute), h0, cu)
    else:
        h, hT = _run_linearscan(a.to(compute), b.to(compute), h0, cu)
    return h.to(io), (hT if output_final_state else None)
