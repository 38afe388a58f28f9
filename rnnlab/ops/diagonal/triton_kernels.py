"""Triton kernels for ``h_t = a_t * h_{t-1} + b_t``: one pass over memory each way.

One program owns one sequence and a block of ``BLOCK`` features and walks time with the state in
registers (the time loop inside the kernel, as the numba kernels on CPU): the forward reads a and
b and writes h once; the backward reads dh, a and h once and writes da and db, running the
adjoint ``g_t = dh_t + conj(a_{t+1}) g_{t+1}`` backwards with ``da_t = g_t conj(h_{t-1})``,
``db_t = g_t``, ``dh_0 = conj(a_1) g_1``. Complex inputs are viewed as interleaved real pairs.

Sequences are given by ``offsets`` (S + 1 row offsets into the flattened ``(B·T, D)`` rows):
``arange(B + 1)·T`` for a dense batch, ``cu_seqlens`` for packed ones, so one kernel serves both.

Registered as custom ops (``torch.ops.rnnlab.diagonal_scan`` and its backward) with a fake
implementation and autograd, so ``torch.compile`` traces through them. Triton compiles for GPUs;
under ``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on CPU tensors,
which is how the CPU test suite checks them against ``linear_scan_reference``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

BLOCK = 128  # features per program: one warp-wide vector of fp32 per thread on a GPU


@triton.jit
def _forward_kernel(a, b, h0, h, hT, offsets, D, BLOCK: tl.constexpr, COMPLEX: tl.constexpr):
    seq, block = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    live = cols < D
    start, end = tl.load(offsets + seq), tl.load(offsets + seq + 1)
    if COMPLEX:  # interleaved (real, imag): element c sits at 2c and 2c + 1
        re, im = 2 * cols, 2 * cols + 1
        xr = tl.load(h0 + seq * 2 * D + re, mask=live)
        xi = tl.load(h0 + seq * 2 * D + im, mask=live)
        for t in range(start, end):
            row = t * 2 * D
            ar, ai = tl.load(a + row + re, mask=live), tl.load(a + row + im, mask=live)
            br, bi = tl.load(b + row + re, mask=live), tl.load(b + row + im, mask=live)
            xr, xi = ar * xr - ai * xi + br, ar * xi + ai * xr + bi
            tl.store(h + row + re, xr, mask=live)
            tl.store(h + row + im, xi, mask=live)
        tl.store(hT + seq * 2 * D + re, xr, mask=live)
        tl.store(hT + seq * 2 * D + im, xi, mask=live)
    else:
        x = tl.load(h0 + seq * D + cols, mask=live)
        for t in range(start, end):
            x = tl.load(a + t * D + cols, mask=live) * x + tl.load(b + t * D + cols, mask=live)
            tl.store(h + t * D + cols, x, mask=live)
        tl.store(hT + seq * D + cols, x, mask=live)


@triton.jit
def _backward_kernel(a, h, h0, dh, dhT, da, db, dh0, offsets, D, BLOCK: tl.constexpr,
                     COMPLEX: tl.constexpr):
    seq, block = tl.program_id(0), tl.program_id(1)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    live = cols < D
    start, end = tl.load(offsets + seq), tl.load(offsets + seq + 1)
    if COMPLEX:
        re, im = 2 * cols, 2 * cols + 1
        gr = tl.load(dhT + seq * 2 * D + re, mask=live)  # g carries conj(a_{t+1}) g_{t+1}
        gi = tl.load(dhT + seq * 2 * D + im, mask=live)
        h0r = tl.load(h0 + seq * 2 * D + re, mask=live)
        h0i = tl.load(h0 + seq * 2 * D + im, mask=live)
        for i in range(0, end - start):
            t = end - 1 - i
            row, prev = t * 2 * D, tl.maximum(t - 1, start) * 2 * D  # a row in range
            gr += tl.load(dh + row + re, mask=live)
            gi += tl.load(dh + row + im, mask=live)
            first = t == start
            pr = tl.where(first, h0r, tl.load(h + prev + re, mask=live))
            pi = tl.where(first, h0i, tl.load(h + prev + im, mask=live))
            tl.store(da + row + re, gr * pr + gi * pi, mask=live)  # g conj(h_{t-1})
            tl.store(da + row + im, gi * pr - gr * pi, mask=live)
            tl.store(db + row + re, gr, mask=live)
            tl.store(db + row + im, gi, mask=live)
            ar, ai = tl.load(a + row + re, mask=live), tl.load(a + row + im, mask=live)
            gr, gi = ar * gr + ai * gi, ar * gi - ai * gr  # conj(a_t) g_t
        tl.store(dh0 + seq * 2 * D + re, gr, mask=live)
        tl.store(dh0 + seq * 2 * D + im, gi, mask=live)
    else:
        g = tl.load(dhT + seq * D + cols, mask=live)
        x0 = tl.load(h0 + seq * D + cols, mask=live)
        for i in range(0, end - start):
            t = end - 1 - i
            g += tl.load(dh + t * D + cols, mask=live)
            prev = tl.where(t == start, x0,  # the row read when t == start is not used
                            tl.load(h + tl.maximum(t - 1, start) * D + cols, mask=live))
            tl.store(da + t * D + cols, g * prev, mask=live)
            tl.store(db + t * D + cols, g, mask=live)
            g = tl.load(a + t * D + cols, mask=live) * g
        tl.store(dh0 + seq * D + cols, g, mask=live)


def _real(x: torch.Tensor) -> torch.Tensor:
    """A contiguous real view: complex (..., D) -> (..., D, 2) interleaved."""
    x = x.contiguous()
    return torch.view_as_real(x) if x.is_complex() else x


def _grid(offsets: torch.Tensor, D: int):
    return (offsets.numel() - 1, triton.cdiv(D, BLOCK))


@torch.library.custom_op("rnnlab::diagonal_scan", mutates_args=())
def diagonal_scan(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor,
                  offsets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """a, b ``(R, D)`` rows of all sequences, h0 ``(S, D)``, offsets ``(S + 1,)`` int64 ->
    h ``(R, D)``, h_T ``(S, D)``; one dtype, real or complex."""
    h, hT = torch.empty_like(b), torch.empty_like(h0)
    D = b.shape[-1]
    _forward_kernel[_grid(offsets, D)](_real(a), _real(b), _real(h0), _real(h), _real(hT),
                                       offsets, D, BLOCK=BLOCK, COMPLEX=b.is_complex())
    return h, hT


@diagonal_scan.register_fake
def _(a, b, h0, offsets):
    return torch.empty_like(b), torch.empty_like(h0)


@torch.library.custom_op("rnnlab::diagonal_scan_backward", mutates_args=())
def diagonal_scan_backward(a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor, dh: torch.Tensor,
                           dhT: torch.Tensor, offsets: torch.Tensor
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reverse pass: -> da, db ``(R, D)``, dh0 ``(S, D)``."""
    da, db, dh0 = torch.empty_like(a), torch.empty_like(h), torch.empty_like(h0)
    D = h.shape[-1]
    _backward_kernel[_grid(offsets, D)](_real(a), _real(h), _real(h0), _real(dh), _real(dhT),
                                        _real(da), _real(db), _real(dh0), offsets, D,
                                        BLOCK=BLOCK, COMPLEX=h.is_complex())
    return da, db, dh0


@diagonal_scan_backward.register_fake
def _(a, h, h0, dh, dhT, offsets):
    return torch.empty_like(a), torch.empty_like(h), torch.empty_like(h0)


def _setup_context(ctx, inputs, output):
    a, _, h0, offsets = inputs
    ctx.save_for_backward(a, output[0], h0, offsets)


def _backward(ctx, dh, dhT):
    a, h, h0, offsets = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh
    dhT = torch.zeros_like(h0) if dhT is None else dhT
    da, db, dh0 = diagonal_scan_backward(a, h, h0, dh.contiguous(), dhT.contiguous(), offsets)
    return da, db, dh0, None


diagonal_scan.register_autograd(_backward, setup_context=_setup_context)


def triton_forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, cu) -> tuple:
    """``linear_scan``'s contract on the kernels: a, b ``(B, T, ...)`` (a broadcast to b),
    h0 ``(B or S, ...)``, cu the packed offsets or None -> h ``(B, T, ...)``, h_T."""
    B, T = b.shape[:2]
    D = max(1, b[0, 0].numel()) if B * T else h0[0].numel()
    if cu is None:
        offsets = torch.arange(B + 1, device=b.device, dtype=torch.int64) * T
    else:
        offsets = cu.to(device=b.device, dtype=torch.int64)
    rows = b.reshape(B * T, D)  # (B, T, ...) -> (B·T, D)
    h, hT = diagonal_scan(a.expand(b.shape).reshape(B * T, D), rows, h0.reshape(-1, D),
                          offsets)
    return h.view(b.shape), hT.view(h0.shape)
