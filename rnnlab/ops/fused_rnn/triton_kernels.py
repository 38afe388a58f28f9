"""Triton kernels for the fused sequential head-wise cells (FlashRNN's design): Elman (tanh), GRU,
LSTM and sLSTM with ``wx = W x + b`` computed outside and the whole time loop inside the kernel.

One program owns a block of ``BB`` sequences and one head of ``D`` channels. It loads that head's
recurrent blocks ``R_g (D, D)`` once, before the time loop, and keeps them and the state in
registers for all T steps: per step it reads ``wx_t``, does one ``(BB, D) @ (D, D)`` product per
gate and the cell's pointwise update, and writes ``y_t = h_t`` and what the backward needs
(``aux``: GRU's r, z, n and ``R_n h + b_n``; LSTM's activated gates and c; sLSTM's pre-
activations and c, n, m). Heads are independent, so the grid is (batch blocks, heads); a dense
cell is one head of ``D = H``.

The backward is a second kernel running time in reverse with the state's gradients in registers:
it rebuilds each step's local derivatives from ``aux`` (no recurrent matmul is recomputed),
writes ``d wx_t``, carries ``dh_{t-1} = sum_g d(R_g h)_t R_g`` (+ the cell's direct terms), and
accumulates ``dR_g += d(R_g h)_t^T h_{t-1}`` and the recurrent bias's gradient in registers per
program; the partial sums of the batch blocks are added afterwards. Derivatives follow the
branches autograd takes through the cells (sLSTM: ``maximum`` splits a tie evenly, ``clamp``
passes at its bound, the empty-memory test ``n == 0`` is a constant).

Padded lengths: step t of a sequence with ``t >= length`` keeps its state and outputs 0, as
rnnlab's sequential engine. The matmuls are fp32 (``input_precision="ieee"``: no TF32) so the
kernels equal the cells in fp32. R stays on chip only while ``G·D²`` fp32 fit a program's
registers: ``MAX_HEAD_DIM`` is the widest head the wrapper accepts.

Registered as custom ops (``torch.ops.rnnlab.fused_rnn`` and its backward) with fake
implementations and autograd, so ``torch.compile`` traces through them. Under
``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on CPU tensors.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..triton_math import sigmoid as _sigmoid
from ..triton_math import tanh as _tanh
from .reference import CELLS

MAX_HEAD_DIM = 64  # G·D² fp32 of R per program: 64 KB for an LSTM head of 64 (FlashRNN's limit)
BLOCK_B = 16  # sequences per program (tl.dot needs >= 16 rows)
PRECISION = "ieee"  # full fp32 products, as the cells compute; "tf32" trades accuracy for speed
CODES = {"rnn_tanh": 0, "gru": 1, "lstm": 2, "slstm": 3}
AUX = {"rnn_tanh": 0, "gru": 4, "lstm": 5, "slstm": 7}  # saved (B, T, A, H) rows per cell


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _tile(R, g, head, N, D, cols, cmask, TRANS: tl.constexpr):
    """Gate g's block of this head, ``R[g, head]`` as ``[j, k]``, or transposed ``[k, j]``."""
    base = (g * N + head) * D * D
    if TRANS:
        off = base + cols[None, :] * D + cols[:, None]
    else:
        off = base + cols[:, None] * D + cols[None, :]
    return tl.load(R + off, mask=cmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def _row(ptr, off, g, stride, mask):
    return tl.load(ptr + off + g * stride, mask=mask, other=0.0)


@triton.jit
def _forward_kernel(wx, R, bias, h0, lengths, y, hT, aux, B, T, N, D,
                    CELL: tl.constexpr, G: tl.constexpr, A: tl.constexpr,
                    BB: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    pb, head = tl.program_id(0), tl.program_id(1)
    rows = pb * BB + tl.arange(0, BB)
    cols = tl.arange(0, BD)
    rmask, cmask = rows < B, cols < D
    mask = rmask[:, None] & cmask[None, :]
    H = N * D
    ch = head * D + cols  # channels of this head in H
    st = rows[:, None] * H + ch[None, :]  # (BB, BD) offsets into one (B, H) state leaf
    ln = tl.load(lengths + rows, mask=rmask, other=0)
    h = tl.load(h0 + st, mask=mask, other=0.0)
    # R^T blocks ([k, j]) for h @ R_g^T, loaded once and kept for all T steps
    R0 = _tile(R, 0, head, N, D, cols, cmask, True)
    b0 = tl.load(bias + ch, mask=cmask, other=0.0)[None, :]
    if G > 1:
        R1 = _tile(R, 1, head, N, D, cols, cmask, True)
        R2 = _tile(R, 2, head, N, D, cols, cmask, True)
        b1 = tl.load(bias + H + ch, mask=cmask, other=0.0)[None, :]
        b2 = tl.load(bias + 2 * H + ch, mask=cmask, other=0.0)[None, :]
    if G > 3:
        R3 = _tile(R, 3, head, N, D, cols, cmask, True)
        b3 = tl.load(bias + 3 * H + ch, mask=cmask, other=0.0)[None, :]
    if CELL >= 2:
        c = tl.load(h0 + B * H + st, mask=mask, other=0.0)
    if CELL == 3:
        n = tl.load(h0 + 2 * B * H + st, mask=mask, other=0.0)
        m = tl.load(h0 + 3 * B * H + st, mask=mask, other=0.0)
    for t in range(0, T):
        alive = (t < ln)[:, None]
        step = rows[:, None] * T + t  # (BB, 1) row of (B·T)
        xo = step * (G * H) + ch[None, :]
        ao = step * (A * H) + ch[None, :]
        p0 = _row(wx, xo, 0, H, mask) + (tl.dot(h, R0, input_precision=PREC) + b0)
        if CELL == 0:
            hn = _tanh(p0)
        elif CELL == 1:  # gru: (r, z, n), r applied to R_n h + b_n
            rh = tl.dot(h, R2, input_precision=PREC) + b2
            r = _sigmoid(p0)
            z = _sigmoid(_row(wx, xo, 1, H, mask) + (tl.dot(h, R1, input_precision=PREC) + b1))
            nn = _tanh(_row(wx, xo, 2, H, mask) + r * rh)
            hn = nn + z * (h - nn)
            tl.store(aux + ao, r, mask=mask)
            tl.store(aux + ao + H, z, mask=mask)
            tl.store(aux + ao + 2 * H, nn, mask=mask)
            tl.store(aux + ao + 3 * H, rh, mask=mask)
        elif CELL == 2:  # lstm: (i, f, g, o)
            ig = _sigmoid(p0)
            fg = _sigmoid(_row(wx, xo, 1, H, mask) + (tl.dot(h, R1, input_precision=PREC) + b1))
            gg = _tanh(_row(wx, xo, 2, H, mask) + (tl.dot(h, R2, input_precision=PREC) + b2))
            og = _sigmoid(_row(wx, xo, 3, H, mask) + (tl.dot(h, R3, input_precision=PREC) + b3))
            cn = fg * c + ig * gg
            hn = og * _tanh(cn)
            c = tl.where(alive, cn, c)
            tl.store(aux + ao, ig, mask=mask)
            tl.store(aux + ao + H, fg, mask=mask)
            tl.store(aux + ao + 2 * H, gg, mask=mask)
            tl.store(aux + ao + 3 * H, og, mask=mask)
            tl.store(aux + ao + 4 * H, cn, mask=mask)
        else:  # slstm: (i, f, z, o) pre-activations, stabiliser m, normaliser n
            p1 = _row(wx, xo, 1, H, mask) + (tl.dot(h, R1, input_precision=PREC) + b1)
            p2 = _row(wx, xo, 2, H, mask) + (tl.dot(h, R2, input_precision=PREC) + b2)
            p3 = _row(wx, xo, 3, H, mask) + (tl.dot(h, R3, input_precision=PREC) + b3)
            lb = _logsigmoid(p1) + m
            mn = tl.where(n == 0.0, p0, tl.maximum(p0, lb))
            ig = tl.exp(p0 - mn)
            fg = tl.exp(tl.minimum(lb - mn, 0.0))
            cn = fg * c + ig * _tanh(p2)
            nn = fg * n + ig
            hn = _sigmoid(p3) * cn / tl.maximum(nn, 1.0)
            c = tl.where(alive, cn, c)
            n = tl.where(alive, nn, n)
            m = tl.where(alive, mn, m)
            tl.store(aux + ao, p0, mask=mask)
            tl.store(aux + ao + H, p1, mask=mask)
            tl.store(aux + ao + 2 * H, p2, mask=mask)
            tl.store(aux + ao + 3 * H, p3, mask=mask)
            tl.store(aux + ao + 4 * H, cn, mask=mask)
            tl.store(aux + ao + 5 * H, nn, mask=mask)
            tl.store(aux + ao + 6 * H, mn, mask=mask)
        h = tl.where(alive, hn, h)
        tl.store(y + step * H + ch[None, :], tl.where(alive, hn, 0.0), mask=mask)
    tl.store(hT + st, h, mask=mask)
    if CELL >= 2:
        tl.store(hT + B * H + st, c, mask=mask)
    if CELL == 3:
        tl.store(hT + 2 * B * H + st, n, mask=mask)
        tl.store(hT + 3 * B * H + st, m, mask=mask)


@triton.jit
def _prev(aux, h0, a, leaf, t, ao_prev, st, B, H, mask):
    """Leaf ``leaf`` of the state before step t: aux row ``a`` of step t - 1, or h0 at t = 0."""
    if t == 0:
        v = tl.load(h0 + leaf * B * H + st, mask=mask, other=0.0)
    else:
        v = tl.load(aux + ao_prev + a * H, mask=mask, other=0.0)
    return v


@triton.jit
def _backward_kernel(R, h0, lengths, y, aux, dy, dhT, dwx, dR, dbias, dh0, B, T, N, D,
                     CELL: tl.constexpr, G: tl.constexpr, A: tl.constexpr,
                     BB: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    pb, head = tl.program_id(0), tl.program_id(1)
    rows = pb * BB + tl.arange(0, BB)
    cols = tl.arange(0, BD)
    rmask, cmask = rows < B, cols < D
    mask = rmask[:, None] & cmask[None, :]
    H = N * D
    ch = head * D + cols
    st = rows[:, None] * H + ch[None, :]
    ln = tl.load(lengths + rows, mask=rmask, other=0)
    # R blocks as [j, k] for d(R h) @ R_g; their gradients and the bias's accumulate here
    Q0 = _tile(R, 0, head, N, D, cols, cmask, False)
    a0 = tl.zeros((BD, BD), dtype=tl.float32)
    e0 = tl.zeros((BD,), dtype=tl.float32)
    if G > 1:
        Q1 = _tile(R, 1, head, N, D, cols, cmask, False)
        Q2 = _tile(R, 2, head, N, D, cols, cmask, False)
        a1 = tl.zeros((BD, BD), dtype=tl.float32)
        a2 = tl.zeros((BD, BD), dtype=tl.float32)
        e1 = tl.zeros((BD,), dtype=tl.float32)
        e2 = tl.zeros((BD,), dtype=tl.float32)
    if G > 3:
        Q3 = _tile(R, 3, head, N, D, cols, cmask, False)
        a3 = tl.zeros((BD, BD), dtype=tl.float32)
        e3 = tl.zeros((BD,), dtype=tl.float32)
    gh = tl.load(dhT + st, mask=mask, other=0.0)  # the carried gradients of the state
    if CELL >= 2:
        gc = tl.load(dhT + B * H + st, mask=mask, other=0.0)
    if CELL == 3:
        gn = tl.load(dhT + 2 * B * H + st, mask=mask, other=0.0)
        gm = tl.load(dhT + 3 * B * H + st, mask=mask, other=0.0)
    for i in range(0, T):
        t = T - 1 - i
        alive = (t < ln)[:, None]
        step = rows[:, None] * T + t
        prev = rows[:, None] * T + tl.maximum(t - 1, 0)
        xo = step * (G * H) + ch[None, :]
        ao = step * (A * H) + ch[None, :]
        ao_prev = prev * (A * H) + ch[None, :]
        gh += tl.where(alive, tl.load(dy + step * H + ch[None, :], mask=mask, other=0.0), 0.0)
        if t == 0:
            hp = tl.load(h0 + st, mask=mask, other=0.0)
        else:
            hp = tl.load(y + prev * H + ch[None, :], mask=mask, other=0.0)
        if CELL == 0:
            hn = tl.load(y + step * H + ch[None, :], mask=mask, other=0.0)
            d0 = tl.where(alive, gh * (1.0 - hn * hn), 0.0)
            w0 = d0
            back = tl.dot(d0, Q0, input_precision=PREC)
        elif CELL == 1:  # gru
            r = _row(aux, ao, 0, H, mask)
            z = _row(aux, ao, 1, H, mask)
            nn = _row(aux, ao, 2, H, mask)
            rh = _row(aux, ao, 3, H, mask)
            da = gh * (1.0 - z) * (1.0 - nn * nn)  # through n = tanh(a)
            d0 = tl.where(alive, da * rh * r * (1.0 - r), 0.0)
            d1 = tl.where(alive, gh * (hp - nn) * z * (1.0 - z), 0.0)
            w2 = tl.where(alive, da, 0.0)
            d2 = w2 * r  # R_n h + b_n enters a times r
            w0, w1 = d0, d1
            back = gh * z + (tl.dot(d0, Q0, input_precision=PREC)
                             + tl.dot(d1, Q1, input_precision=PREC)
                             + tl.dot(d2, Q2, input_precision=PREC))
        elif CELL == 2:  # lstm
            ig = _row(aux, ao, 0, H, mask)
            fg = _row(aux, ao, 1, H, mask)
            gg = _row(aux, ao, 2, H, mask)
            og = _row(aux, ao, 3, H, mask)
            cn = _row(aux, ao, 4, H, mask)
            cp = _prev(aux, h0, 4, 1, t, ao_prev, st, B, H, mask)
            tc = _tanh(cn)
            gct = gc + gh * og * (1.0 - tc * tc)
            d0 = tl.where(alive, gct * gg * ig * (1.0 - ig), 0.0)
            d1 = tl.where(alive, gct * cp * fg * (1.0 - fg), 0.0)
            d2 = tl.where(alive, gct * ig * (1.0 - gg * gg), 0.0)
            d3 = tl.where(alive, gh * tc * og * (1.0 - og), 0.0)
            w0, w1, w2, w3 = d0, d1, d2, d3
            gc = tl.where(alive, gct * fg, gc)
            back = (tl.dot(d0, Q0, input_precision=PREC) + tl.dot(d1, Q1, input_precision=PREC)
                    + tl.dot(d2, Q2, input_precision=PREC)
                    + tl.dot(d3, Q3, input_precision=PREC))
        else:  # slstm
            p0 = _row(aux, ao, 0, H, mask)
            p1 = _row(aux, ao, 1, H, mask)
            p2 = _row(aux, ao, 2, H, mask)
            p3 = _row(aux, ao, 3, H, mask)
            cn = _row(aux, ao, 4, H, mask)
            nn = _row(aux, ao, 5, H, mask)
            mn = _row(aux, ao, 6, H, mask)
            cp = _prev(aux, h0, 4, 1, t, ao_prev, st, B, H, mask)
            np_ = _prev(aux, h0, 5, 2, t, ao_prev, st, B, H, mask)
            mp = _prev(aux, h0, 6, 3, t, ao_prev, st, B, H, mask)
            lb = _logsigmoid(p1) + mp
            x = lb - mn
            ig = tl.exp(p0 - mn)
            fg = tl.exp(tl.minimum(x, 0.0))
            tz, so = _tanh(p2), _sigmoid(p3)
            q = tl.maximum(nn, 1.0)
            gct = gc + gh * so / q
            gnt = gn - tl.where(nn >= 1.0, gh * so * cn / (q * q), 0.0)
            g_ig = gct * tz + gnt
            g_x = tl.where(x <= 0.0, (gct * cp + gnt * np_) * fg, 0.0)  # clamp(max=0) passes at 0
            g_mn = gm - g_ig * ig - g_x
            # m_new = i~ on empty memory, else maximum(i~, b) (a tie splits evenly)
            s_a = tl.where(np_ == 0.0, 1.0,
                           tl.where(p0 > lb, 1.0, tl.where(p0 == lb, 0.5, 0.0)))
            s_b = tl.where(np_ == 0.0, 0.0, 1.0 - s_a)
            g_b = g_x + s_b * g_mn
            d0 = tl.where(alive, g_ig * ig + s_a * g_mn, 0.0)
            d1 = tl.where(alive, g_b * _sigmoid(-p1), 0.0)
            d2 = tl.where(alive, gct * ig * (1.0 - tz * tz), 0.0)
            d3 = tl.where(alive, gh * cn / q * so * (1.0 - so), 0.0)
            w0, w1, w2, w3 = d0, d1, d2, d3
            gc = tl.where(alive, gct * fg, gc)
            gn = tl.where(alive, gnt * fg, gn)
            gm = tl.where(alive, g_b, gm)
            back = (tl.dot(d0, Q0, input_precision=PREC) + tl.dot(d1, Q1, input_precision=PREC)
                    + tl.dot(d2, Q2, input_precision=PREC)
                    + tl.dot(d3, Q3, input_precision=PREC))
        gh = tl.where(alive, back, gh)
        # d wx (w*) and d(R h + b) (d*): the same but for GRU's n gate, scaled by r
        tl.store(dwx + xo, w0, mask=mask)
        a0 += tl.dot(tl.trans(d0), hp, input_precision=PREC)
        e0 += tl.sum(d0, axis=0)
        if G > 1:
            tl.store(dwx + xo + H, w1, mask=mask)
            tl.store(dwx + xo + 2 * H, w2, mask=mask)
            a1 += tl.dot(tl.trans(d1), hp, input_precision=PREC)
            a2 += tl.dot(tl.trans(d2), hp, input_precision=PREC)
            e1 += tl.sum(d1, axis=0)
            e2 += tl.sum(d2, axis=0)
        if G > 3:
            tl.store(dwx + xo + 3 * H, w3, mask=mask)
            a3 += tl.dot(tl.trans(d3), hp, input_precision=PREC)
            e3 += tl.sum(d3, axis=0)
    tl.store(dh0 + st, gh, mask=mask)
    if CELL >= 2:
        tl.store(dh0 + B * H + st, gc, mask=mask)
    if CELL == 3:
        tl.store(dh0 + 2 * B * H + st, gn, mask=mask)
        tl.store(dh0 + 3 * B * H + st, gm, mask=mask)
    # this program's partial sums: dR (P, G, N, D, D), dbias (P, G·H)
    square = cmask[:, None] & cmask[None, :]
    jk = cols[:, None] * D + cols[None, :]
    base = (pb * G * N + head) * D * D
    tl.store(dR + base + jk, a0, mask=square)
    tl.store(dbias + pb * G * H + ch, e0, mask=cmask)
    if G > 1:
        tl.store(dR + base + N * D * D + jk, a1, mask=square)
        tl.store(dR + base + 2 * N * D * D + jk, a2, mask=square)
        tl.store(dbias + pb * G * H + H + ch, e1, mask=cmask)
        tl.store(dbias + pb * G * H + 2 * H + ch, e2, mask=cmask)
    if G > 3:
        tl.store(dR + base + 3 * N * D * D + jk, a3, mask=square)
        tl.store(dbias + pb * G * H + 3 * H + ch, e3, mask=cmask)


def _launch(R: torch.Tensor, B: int):
    """Grid, block sizes and warps for R ``(G, N, D, D)`` and B sequences."""
    return (triton.cdiv(B, BLOCK_B), R.shape[1]), launch_sizes(R.shape[2])


def launch_sizes(D: int) -> dict:
    """The kernels' block sizes, precision and warps for heads of D channels."""
    BD = max(16, triton.next_power_of_2(D))
    return dict(BB=BLOCK_B, BD=BD, PREC=PRECISION, num_warps=4 if BD <= 32 else 8)


@torch.library.custom_op("rnnlab::fused_rnn", mutates_args=())
def fused_rnn_op(cell: str, wx: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                 h0: torch.Tensor, lengths: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """wx ``(B, T, G·H)``, R ``(G, N, D, D)``, bias ``(G·H,)``, h0 ``(S, B, H)``, lengths
    ``(B,)`` int64, all contiguous fp32 -> y ``(B, T, H)``, h_T ``(S, B, H)``, aux
    ``(B, T, A, H)`` (what the backward reads)."""
    B, T = wx.shape[:2]
    G, H = CELLS[cell][0], h0.shape[-1]
    y = wx.new_empty(B, T, H)
    hT, aux = torch.empty_like(h0), wx.new_empty(B, T, AUX[cell], H)
    grid, kw = _launch(R, B)
    _forward_kernel[grid](wx, R, bias, h0, lengths, y, hT, aux, B, T, R.shape[1], R.shape[2],
                          CELL=CODES[cell], G=G, A=AUX[cell], **kw)
    return y, hT, aux


@fused_rnn_op.register_fake
def _(cell, wx, R, bias, h0, lengths):
    B, T, H = wx.shape[0], wx.shape[1], h0.shape[-1]
    return wx.new_empty(B, T, H), torch.empty_like(h0), wx.new_empty(B, T, AUX[cell], H)


@torch.library.custom_op("rnnlab::fused_rnn_backward", mutates_args=())
def fused_rnn_backward(cell: str, R: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor,
                       y: torch.Tensor, aux: torch.Tensor, dy: torch.Tensor, dhT: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reverse pass: -> d wx ``(B, T, G·H)``, dR ``(G, N, D, D)``, d bias ``(G·H,)``,
    dh0 ``(S, B, H)``."""
    B, T, H = y.shape
    G = CELLS[cell][0]
    grid, kw = _launch(R, B)
    dwx = y.new_empty(B, T, G * H)
    dR = R.new_zeros((grid[0],) + tuple(R.shape))  # per batch block, summed below
    dbias = R.new_zeros(grid[0], G * H)
    dh0 = torch.empty_like(h0)
    _backward_kernel[grid](R, h0, lengths, y, aux, dy, dhT, dwx, dR, dbias, dh0, B, T,
                           R.shape[1], R.shape[2], CELL=CODES[cell], G=G, A=AUX[cell], **kw)
    return dwx, dR.sum(0), dbias.sum(0), dh0


@fused_rnn_backward.register_fake
def _(cell, R, h0, lengths, y, aux, dy, dhT):
    B, T, H = y.shape
    return (y.new_empty(B, T, CELLS[cell][0] * H), torch.empty_like(R),
            R.new_empty(CELLS[cell][0] * H), torch.empty_like(h0))


def _setup_context(ctx, inputs, output):
    cell, _, R, _, h0, lengths = inputs
    y, _, aux = output
    ctx.cell = cell
    ctx.save_for_backward(R, h0, lengths, y, aux)


def _backward(ctx, dy, dhT, _daux):
    R, h0, lengths, y, aux = ctx.saved_tensors
    dy = torch.zeros_like(y) if dy is None else dy.contiguous()
    dhT = torch.zeros_like(h0) if dhT is None else dhT.contiguous()
    dwx, dR, dbias, dh0 = fused_rnn_backward(ctx.cell, R, h0, lengths, y, aux, dy, dhT)
    return None, dwx, dR, dbias, dh0, None


fused_rnn_op.register_autograd(_backward, setup_context=_setup_context)


def triton_forward(cell: str, wx: torch.Tensor, R: torch.Tensor, bias: torch.Tensor,
                   state: Tuple[torch.Tensor, ...], lengths: torch.Tensor):
    """``fused_rnn``'s contract on the kernels (inputs checked and fp32 already): -> y
    ``(B, T, H)``, final state S x ``(B, H)``."""
    h0 = torch.stack(state).contiguous()  # S x (B, H) -> (S, B, H)
    y, hT, _ = fused_rnn_op(cell, wx.contiguous(), R.contiguous(), bias.contiguous(), h0,
                            lengths.contiguous())
    return y, tuple(hT.unbind(0))
