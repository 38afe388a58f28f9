"""Triton kernels for fused Newton sweeps on cells with a diagonal step Jacobian (ParaGRU,
IndRNN) and on ParaLSTM's Block(2) (state [h, c], a 2 x 2 Jacobian per channel: its own pair of
kernels, the scan over 2 x 2 affine maps, the adjoint over their transposes): one Newton
iteration (linearization, the scan of the update, the new iterate) in one launch per chunk of
time, and the adjoint backward likewise.

One program owns one sequence and a block of ``BLOCK`` features and walks the chunk's time in
tiles of ``TILE`` steps (the diagonal scan kernels' layout, ``ops/diagonal/triton_kernels.py``,
with time tiled): a tile's f and Jacobian A are computed for all its steps at once (they read
only the current iterate), its update ``delta_t = A_t delta_{t-1} + (f_t - h_t)`` by
``tl.associative_scan`` along time, the carry ``delta`` passed from tile to tile in registers and
from chunk to chunk through a ``(B, H)`` buffer. A sweep reads u and the iterate once and writes
f, the next iterate and per-(sequence, step) partial sums of squares for the residual ratio
(the sum over feature blocks and the max over steps happen on the host, one sync per iteration,
as the engine). The first sweep can build the initial guess ``f(0, u_t)`` itself (``INIT``).

The adjoint kernel walks the chunk backwards in tiles: ``lam_t = g_t + A_{t+1} lam_{t+1}`` by a
scan over the tile read in reverse order (A_{t+1} recomputed from u_{t+1} and h*_t: nothing of
the forward is stored but the solution), then the step's VJP at the solution in the same tile:
``du_t = lam_t df_t/du_t`` stored, ``dparams`` summed over the tile into registers (one row per
program, summed over programs on the host) and ``dh0 = A_0 lam_0``.

Registered as custom ops (``torch.ops.rnnlab.newton_fused_sweep``, ``..._adjoint`` and the whole
solve ``..._solve`` with autograd: backward by the adjoint) with fake implementations, so
``torch.compile`` traces through them. Under ``TRITON_INTERPRET=1`` (set before triton is
imported) the kernels run on CPU tensors: that is how the CPU suite checks them.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..triton_math import sigmoid as _sigmoid
from ..triton_math import tanh as _tanh
from .reference import CELLS, solve_loop

# The kernels' recurrent-parameter argument is named ``weights``, not ``params``: triton 3.6's
# generated argument binder keeps a local dict named ``params`` that shadows an argument of that
# name ("failed to specialize argument of type: dict" at the first launch on a GPU).
TILE = 32  # steps per tile: a tile's f and A are computed at once, then scanned along time
BLOCK = 32  # features per program
CODES = {"paragru": 0, "indrnn_relu": 1, "indrnn_tanh": 2}  # paralstm: its own kernels
INITS = {"given": 0, "zeros": 1, "step": 2}


@triton.jit
def _combine(a1, b1, a2, b2):  # x -> a1 x + b1, then a2 x + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _cell(h, u0, u1, u2, p0, p1, p2, CELL: tl.constexpr):
    """The step at h: f, its diagonal Jacobian A, df/du per gate (d0..d2) and df/dparam per
    parameter row (e0..e2); unused ones are zeros (the compiler drops what a kernel ignores)."""
    zero = tl.zeros_like(h)
    if CELL == 0:  # ParaGRU, cells/paragru.py
        z = _sigmoid(p0 * h + u0)
        r = _sigmoid(p1 * h + u1)
        hh = _tanh(p2 * (h * r) + u2)
        gap = hh - h
        f = h + z * gap
        d0 = gap * z * (1.0 - z)  # through z
        d2 = z * (1.0 - hh * hh)  # through h^'s pre-activation
        d1 = d2 * p2 * h * r * (1.0 - r)  # through r
        A = (1.0 - z) + d0 * p0 + d2 * p2 * r + d1 * p1
        e0, e1, e2 = d0 * h, d1 * h, d2 * h * r
    elif CELL == 1:  # IndRNN, relu (derivative 0 at 0, as torch's)
        pre = u0 + p0 * h
        f = tl.maximum(pre, 0.0)
        d0 = tl.where(pre > 0, 1.0, 0.0)
        A, d1, d2, e0, e1, e2 = d0 * p0, zero, zero, d0 * h, zero, zero
    else:  # IndRNN, tanh
        f = _tanh(u0 + p0 * h)
        d0 = 1.0 - f * f
        A, d1, d2, e0, e1, e2 = d0 * p0, zero, zero, d0 * h, zero, zero
    return f, A, d0, d1, d2, e0, e1, e2


@triton.jit
def _gates(u, off, mask, H, G: tl.constexpr):
    """The G gate inputs at ``off`` (row base + column) of u ``(B, T, G*H)``; absent ones 0."""
    u0 = tl.load(u + off, mask=mask, other=0.0)
    u1, u2 = tl.zeros_like(u0), tl.zeros_like(u0)
    if G > 1:
        u1 = tl.load(u + off + H, mask=mask, other=0.0)
        u2 = tl.load(u + off + 2 * H, mask=mask, other=0.0)
    return u0, u1, u2


@triton.jit
def _params(weights, cols, mask, H, P: tl.constexpr):
    p0 = tl.load(weights + cols, mask=mask, other=0.0)[None, :]
    p1, p2 = tl.zeros_like(p0), tl.zeros_like(p0)
    if P > 1:
        p1 = tl.load(weights + H + cols, mask=mask, other=0.0)[None, :]
        p2 = tl.load(weights + 2 * H + cols, mask=mask, other=0.0)[None, :]
    return p0, p1, p2


@triton.jit
def _last(x, TILE: tl.constexpr):
    """Row TILE - 1 of a (TILE, BLOCK) tile -> (BLOCK,)."""
    return tl.sum(tl.where(tl.arange(0, TILE)[:, None] == TILE - 1, x, 0.0), axis=0)


@triton.jit
def _sweep_kernel(u, h0, cur, weights, lengths, nxt, f_out, sq, carry, B, T, H, t_begin, t_end,
                  damping, CELL: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                  INIT: tl.constexpr, TILE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk = tl.program_id(0), tl.program_id(1)
    NB = tl.num_programs(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < H
    p0, p1, p2 = _params(weights, cols, cmask, H, P)
    x0 = tl.load(h0 + b * H + cols, mask=cmask, other=0.0)[None, :]
    n = tl.load(lengths + b)
    delta = tl.load(carry + b * H + cols, mask=cmask, other=0.0)  # the update at t_begin - 1
    for s in range(t_begin, t_end, TILE):
        rows = s + tl.arange(0, TILE)
        r2 = rows[:, None]
        m = (r2 < t_end) & cmask[None, :]
        hoff = (b * T + r2) * H + cols[None, :]  # (TILE, BLOCK) offsets into (B, T, H)
        uoff = (b * T + r2) * (G * H) + cols[None, :]
        u0, u1, u2 = _gates(u, uoff, m, H, G)
        if INIT == 0:  # the iterate as given
            hc = tl.load(cur + hoff, mask=m, other=0.0)
            hp = tl.load(cur + hoff - H, mask=m & (r2 > 0), other=0.0)
        elif INIT == 1:  # zeros
            hc, hp = tl.zeros_like(u0), tl.zeros_like(u0)
            tl.store(cur + hoff, hc, mask=m)
        else:  # f(0, u_t): ParaRNN's guess, made here and kept as the iterate
            zero = tl.zeros_like(u0)
            hc, _, _, _, _, _, _, _ = _cell(zero, u0, u1, u2, p0, p1, p2, CELL)
            v0, v1, v2 = _gates(u, uoff - G * H, m & (r2 > 0), H, G)
            hp, _, _, _, _, _, _, _ = _cell(zero, v0, v1, v2, p0, p1, p2, CELL)
            tl.store(cur + hoff, hc, mask=m)
        hp = tl.where(r2 == 0, x0, hp)
        f, A, _, _, _, _, _, _ = _cell(hp, u0, u1, u2, p0, p1, p2, CELL)
        alive = r2 < n  # padded steps are the identity
        f = tl.where(alive, f, hp)
        A = tl.where(alive, A, 1.0)
        tl.store(f_out + hoff, f, mask=m)
        res = tl.where(m, f - hc, 0.0)
        num = tl.sum(res * res + tl.where(m, A, 0.0) * 0.0, axis=1)  # NaN where A is not finite
        den = tl.sum(tl.where(m, hc * hc, 0.0), axis=1)
        qoff = (blk * B + b) * T + rows
        tl.store(sq + qoff, num, mask=rows < t_end)
        tl.store(sq + NB * B * T + qoff, den, mask=rows < t_end)
        a_run, d_run = tl.associative_scan((tl.where(m, A, 1.0), res), 0, _combine)
        d = a_run * delta[None, :] + d_run
        tl.store(nxt + hoff, hc + damping * d, mask=m)
        delta = _last(d, TILE)  # masked rows (A = 1, res = 0) pass the last real one on
    tl.store(carry + b * H + cols, delta, mask=cmask)


@triton.jit
def _adjoint_kernel(u, h0, hsol, weights, lengths, g, du, dparams, dh0, carry, B, T, H,
                    t_begin, t_end, CELL: tl.constexpr, G: tl.constexpr, P: tl.constexpr,
                    TILE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk = tl.program_id(0), tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < H
    p0, p1, p2 = _params(weights, cols, cmask, H, P)
    x0 = tl.load(h0 + b * H + cols, mask=cmask, other=0.0)[None, :]
    n = tl.load(lengths + b)
    lam = tl.load(carry + b * H + cols, mask=cmask, other=0.0)  # lam at t_end
    acc0 = tl.load(dparams + (b * P) * H + cols, mask=cmask, other=0.0)
    acc1, acc2 = tl.zeros_like(acc0), tl.zeros_like(acc0)
    if P > 1:
        acc1 = tl.load(dparams + (b * P + 1) * H + cols, mask=cmask, other=0.0)
        acc2 = tl.load(dparams + (b * P + 2) * H + cols, mask=cmask, other=0.0)
    dx0 = tl.load(dh0 + b * H + cols, mask=cmask, other=0.0)
    for k in range(0, t_end - t_begin, TILE):
        rows = t_end - 1 - k - tl.arange(0, TILE)  # the tile in reverse time order
        r2 = rows[:, None]
        m = (r2 >= t_begin) & cmask[None, :]
        hoff = (b * T + r2) * H + cols[None, :]
        uoff = (b * T + r2) * (G * H) + cols[None, :]
        # A_{t+1} = J(u_{t+1}, h*_t), the coefficient of lam_{t+1} in lam_t; 0 past T - 1
        mn = m & (r2 + 1 < T)
        v0, v1, v2 = _gates(u, uoff + G * H, mn, H, G)
        hn = tl.load(hsol + hoff, mask=mn, other=0.0)
        _, An, _, _, _, _, _, _ = _cell(hn, v0, v1, v2, p0, p1, p2, CELL)
        An = tl.where(r2 + 1 < n, An, 1.0)
        An = tl.where(mn, An, 0.0)
        gt = tl.load(g + hoff, mask=m, other=0.0)
        a_run, l_run = tl.associative_scan((tl.where(m, An, 1.0), gt), 0, _combine)
        lt = a_run * lam[None, :] + l_run
        # the step's VJP at the solution: h_{t-1} and u_t
        u0, u1, u2 = _gates(u, uoff, m, H, G)
        hp = tl.load(hsol + hoff - H, mask=m & (r2 > 0), other=0.0)
        hp = tl.where(r2 == 0, x0, hp)
        _, A, d0, d1, d2, e0, e1, e2 = _cell(hp, u0, u1, u2, p0, p1, p2, CELL)
        alive = r2 < n
        w = tl.where(m & alive, lt, 0.0)
        tl.store(du + uoff, w * d0, mask=m)
        if G > 1:
            tl.store(du + uoff + H, w * d1, mask=m)
            tl.store(du + uoff + 2 * H, w * d2, mask=m)
        acc0 += tl.sum(w * e0, axis=0)
        if P > 1:
            acc1 += tl.sum(w * e1, axis=0)
            acc2 += tl.sum(w * e2, axis=0)
        A = tl.where(alive, A, 1.0)
        dx0 += tl.sum(tl.where((r2 == 0) & m, A * lt, 0.0), axis=0)  # A_0 lam_0
        lam = _last(lt, TILE)  # masked rows (A = 1, g = 0) pass the earliest real one on
    tl.store(carry + b * H + cols, lam, mask=cmask)
    tl.store(dparams + (b * P) * H + cols, acc0, mask=cmask)
    if P > 1:
        tl.store(dparams + (b * P + 1) * H + cols, acc1, mask=cmask)
        tl.store(dparams + (b * P + 2) * H + cols, acc2, mask=cmask)
    tl.store(dh0 + b * H + cols, dx0, mask=cmask)


# ---- Block(2): ParaLSTM, state [h, c], a 2 x 2 Jacobian per channel ---------------------------

@triton.jit
def _combine2(a1, b1, c1, d1, x1, y1, a2, b2, c2, d2, x2, y2):
    """Affine maps v -> M v + w with M = [[a, b], [c, d]], w = (x, y): the first, then the
    second: (M2 M1, M2 w1 + w2)."""
    return (a2 * a1 + b2 * c1, a2 * b1 + b2 * d1, c2 * a1 + d2 * c1, c2 * b1 + d2 * d1,
            a2 * x1 + b2 * y1 + x2, c2 * x1 + d2 * y1 + y2)


@triton.jit
def _lstm(h, c, uf, uc, uo, af, ac, ao, cf, co):  # 11 values, unpacked (no tuple slicing in jit)
    """ParaLSTM's step (cells/paralstm.py) at (h, c): h', c', the Jacobian [[dh'/dh, dh'/dc],
    [dc'/dh, dc'/dc]], and what the VJP needs (f, c~, o, tanh(c'))."""
    f = _sigmoid(af * h + cf * c + uf)
    ct = _tanh(ac * h + uc)
    cn = ct + f * (c - ct)
    o = _sigmoid(ao * h + co * cn + uo)
    th = _tanh(cn)
    df = f * (1.0 - f) * (c - ct)  # d c' / d (f's pre-activation)
    jch = (1.0 - ct * ct) * ac * (1.0 - f) + df * af
    jcc = f + df * cf
    do = o * (1.0 - o) * th  # d h' / d (o's pre-activation)
    through = do * co + o * (1.0 - th * th)  # d h' / d c'
    return o * th, cn, do * ao + through * jch, through * jcc, jch, jcc, f, ct, th, do, through


@triton.jit
def _lstm_params(weights, cols, mask, H):
    af = tl.load(weights + cols, mask=mask, other=0.0)[None, :]
    ac = tl.load(weights + H + cols, mask=mask, other=0.0)[None, :]
    ao = tl.load(weights + 2 * H + cols, mask=mask, other=0.0)[None, :]
    cf = tl.load(weights + 3 * H + cols, mask=mask, other=0.0)[None, :]
    co = tl.load(weights + 4 * H + cols, mask=mask, other=0.0)[None, :]
    return af, ac, ao, cf, co


@triton.jit
def _sweep2_kernel(u, h0, cur, weights, lengths, nxt, f_out, sq, carry, B, T, H, t_begin, t_end,
                   damping, INIT: tl.constexpr, TILE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk = tl.program_id(0), tl.program_id(1)
    NB = tl.num_programs(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < H
    af, ac, ao, cf, co = _lstm_params(weights, cols, cmask, H)
    x0 = tl.load(h0 + b * 2 * H + cols, mask=cmask, other=0.0)[None, :]
    y0 = tl.load(h0 + b * 2 * H + H + cols, mask=cmask, other=0.0)[None, :]
    n = tl.load(lengths + b)
    dh = tl.load(carry + b * 2 * H + cols, mask=cmask, other=0.0)  # the update at t_begin - 1
    dc = tl.load(carry + b * 2 * H + H + cols, mask=cmask, other=0.0)
    for s in range(t_begin, t_end, TILE):
        rows = s + tl.arange(0, TILE)
        r2 = rows[:, None]
        m = (r2 < t_end) & cmask[None, :]
        hoff = (b * T + r2) * (2 * H) + cols[None, :]  # leaf h; leaf c at + H
        uoff = (b * T + r2) * (3 * H) + cols[None, :]
        uf = tl.load(u + uoff, mask=m, other=0.0)
        uc = tl.load(u + uoff + H, mask=m, other=0.0)
        uo = tl.load(u + uoff + 2 * H, mask=m, other=0.0)
        if INIT == 0:
            hc = tl.load(cur + hoff, mask=m, other=0.0)
            cc = tl.load(cur + hoff + H, mask=m, other=0.0)
            first = m & (r2 > 0)
            hp = tl.load(cur + hoff - 2 * H, mask=first, other=0.0)
            cp = tl.load(cur + hoff - H, mask=first, other=0.0)
        elif INIT == 1:
            hc, cc, hp, cp = (tl.zeros_like(uf), tl.zeros_like(uf), tl.zeros_like(uf),
                              tl.zeros_like(uf))
            tl.store(cur + hoff, hc, mask=m)
            tl.store(cur + hoff + H, cc, mask=m)
        else:  # f(0, u_t), and f(0, u_{t-1}) as the previous state
            zero = tl.zeros_like(uf)
            hc, cc, _, _, _, _, _, _, _, _, _ = _lstm(zero, zero, uf, uc, uo, af, ac, ao, cf, co)
            pm = m & (r2 > 0)
            vf = tl.load(u + uoff - 3 * H, mask=pm, other=0.0)
            vc = tl.load(u + uoff - 2 * H, mask=pm, other=0.0)
            vo = tl.load(u + uoff - H, mask=pm, other=0.0)
            hp, cp, _, _, _, _, _, _, _, _, _ = _lstm(zero, zero, vf, vc, vo, af, ac, ao, cf, co)
            tl.store(cur + hoff, hc, mask=m)
            tl.store(cur + hoff + H, cc, mask=m)
        hp = tl.where(r2 == 0, x0, hp)
        cp = tl.where(r2 == 0, y0, cp)
        fh, fc, jhh, jhc, jch, jcc, _, _, _, _, _ = _lstm(hp, cp, uf, uc, uo, af, ac, ao, cf, co)
        alive = (r2 < n) & m  # padded steps (and masked lanes) are the identity
        fh = tl.where(alive, fh, hp)
        fc = tl.where(alive, fc, cp)
        jhh, jhc = tl.where(alive, jhh, 1.0), tl.where(alive, jhc, 0.0)
        jch, jcc = tl.where(alive, jch, 0.0), tl.where(alive, jcc, 1.0)
        tl.store(f_out + hoff, fh, mask=m)
        tl.store(f_out + hoff + H, fc, mask=m)
        rh = tl.where(m, fh - hc, 0.0)
        rc = tl.where(m, fc - cc, 0.0)
        bad = (jhh + jhc + jch + jcc) * 0.0  # NaN where the Jacobian is not finite
        qoff = (blk * B + b) * T + rows
        live = rows < t_end
        tl.store(sq + qoff, tl.sum(rh * rh + bad, axis=1), mask=live)
        tl.store(sq + NB * B * T + qoff, tl.sum(tl.where(m, hc * hc, 0.0), axis=1), mask=live)
        tl.store(sq + 2 * NB * B * T + qoff, tl.sum(rc * rc + bad, axis=1), mask=live)
        tl.store(sq + 3 * NB * B * T + qoff, tl.sum(tl.where(m, cc * cc, 0.0), axis=1),
                 mask=live)
        ma, mb, mc, md, wx, wy = tl.associative_scan((jhh, jhc, jch, jcc, rh, rc), 0, _combine2)
        nh = ma * dh[None, :] + mb * dc[None, :] + wx
        nc = mc * dh[None, :] + md * dc[None, :] + wy
        tl.store(nxt + hoff, hc + damping * nh, mask=m)
        tl.store(nxt + hoff + H, cc + damping * nc, mask=m)
        dh, dc = _last(nh, TILE), _last(nc, TILE)
    tl.store(carry + b * 2 * H + cols, dh, mask=cmask)
    tl.store(carry + b * 2 * H + H + cols, dc, mask=cmask)


@triton.jit
def _adjoint2_kernel(u, h0, hsol, weights, lengths, g, du, dparams, dh0, carry, B, T, H,
                     t_begin, t_end, TILE: tl.constexpr, BLOCK: tl.constexpr):
    b, blk = tl.program_id(0), tl.program_id(1)
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < H
    af, ac, ao, cf, co = _lstm_params(weights, cols, cmask, H)
    x0 = tl.load(h0 + b * 2 * H + cols, mask=cmask, other=0.0)[None, :]
    y0 = tl.load(h0 + b * 2 * H + H + cols, mask=cmask, other=0.0)[None, :]
    n = tl.load(lengths + b)
    lh = tl.load(carry + b * 2 * H + cols, mask=cmask, other=0.0)  # lam at t_end
    lc = tl.load(carry + b * 2 * H + H + cols, mask=cmask, other=0.0)
    prow = dparams + b * 5 * H + cols
    e_af = tl.load(prow, mask=cmask, other=0.0)
    e_ac = tl.load(prow + H, mask=cmask, other=0.0)
    e_ao = tl.load(prow + 2 * H, mask=cmask, other=0.0)
    e_cf = tl.load(prow + 3 * H, mask=cmask, other=0.0)
    e_co = tl.load(prow + 4 * H, mask=cmask, other=0.0)
    gx0 = tl.load(dh0 + b * 2 * H + cols, mask=cmask, other=0.0)
    gy0 = tl.load(dh0 + b * 2 * H + H + cols, mask=cmask, other=0.0)
    for k in range(0, t_end - t_begin, TILE):
        rows = t_end - 1 - k - tl.arange(0, TILE)  # the tile in reverse time order
        r2 = rows[:, None]
        m = (r2 >= t_begin) & cmask[None, :]
        hoff = (b * T + r2) * (2 * H) + cols[None, :]
        uoff = (b * T + r2) * (3 * H) + cols[None, :]
        # A_{t+1}^T at (u_{t+1}, h*_t): the coefficient of lam_{t+1} in lam_t; 0 past T - 1
        mn = m & (r2 + 1 < T)
        vf = tl.load(u + uoff + 3 * H, mask=mn, other=0.0)
        vc = tl.load(u + uoff + 4 * H, mask=mn, other=0.0)
        vo = tl.load(u + uoff + 5 * H, mask=mn, other=0.0)
        hn = tl.load(hsol + hoff, mask=mn, other=0.0)
        cn = tl.load(hsol + hoff + H, mask=mn, other=0.0)
        _, _, jhh, jhc, jch, jcc, _, _, _, _, _ = _lstm(hn, cn, vf, vc, vo, af, ac, ao, cf, co)
        nxt_alive = r2 + 1 < n
        jhh, jhc = tl.where(nxt_alive, jhh, 1.0), tl.where(nxt_alive, jhc, 0.0)
        jch, jcc = tl.where(nxt_alive, jch, 0.0), tl.where(nxt_alive, jcc, 1.0)
        jhh, jhc = tl.where(mn, jhh, 0.0), tl.where(mn, jhc, 0.0)
        jch, jcc = tl.where(mn, jch, 0.0), tl.where(mn, jcc, 0.0)
        inval = (r2 < t_begin) | (cols[None, :] >= H)  # masked rows: the identity map
        jhh, jcc = tl.where(inval, 1.0, jhh), tl.where(inval, 1.0, jcc)
        gh = tl.load(g + hoff, mask=m, other=0.0)
        gc = tl.load(g + hoff + H, mask=m, other=0.0)
        # lam_t = g_t + A_{t+1}^T lam_{t+1}: M = A^T = [[jhh, jch], [jhc, jcc]]
        ma, mb, mc, md, wx, wy = tl.associative_scan((jhh, jch, jhc, jcc, gh, gc), 0, _combine2)
        th_ = ma * lh[None, :] + mb * lc[None, :] + wx  # lam, leaf h
        tc_ = mc * lh[None, :] + md * lc[None, :] + wy  # lam, leaf c
        # the step's VJP at the solution: (h*_{t-1}, c*_{t-1}) and u_t
        uf = tl.load(u + uoff, mask=m, other=0.0)
        uc = tl.load(u + uoff + H, mask=m, other=0.0)
        uo = tl.load(u + uoff + 2 * H, mask=m, other=0.0)
        first = m & (r2 > 0)
        hp = tl.where(r2 == 0, x0, tl.load(hsol + hoff - 2 * H, mask=first, other=0.0))
        cp = tl.where(r2 == 0, y0, tl.load(hsol + hoff - H, mask=first, other=0.0))
        _, cnew, jhh, jhc, jch, jcc, f, ct, _, do, through = _lstm(hp, cp, uf, uc, uo, af, ac,
                                                                    ao, cf, co)
        alive = m & (r2 < n)
        wh = tl.where(alive, th_, 0.0)
        g_c = tl.where(alive, tc_ + th_ * through, 0.0)  # through c'
        g_o = wh * do
        g_f = g_c * f * (1.0 - f) * (cp - ct)
        g_t = g_c * (1.0 - f) * (1.0 - ct * ct)
        tl.store(du + uoff, g_f, mask=m)
        tl.store(du + uoff + H, g_t, mask=m)
        tl.store(du + uoff + 2 * H, g_o, mask=m)
        e_af += tl.sum(g_f * hp, axis=0)
        e_ac += tl.sum(g_t * hp, axis=0)
        e_ao += tl.sum(g_o * hp, axis=0)
        e_cf += tl.sum(g_f * cp, axis=0)
        e_co += tl.sum(g_o * cnew, axis=0)
        jhh, jhc = tl.where(alive, jhh, 1.0), tl.where(alive, jhc, 0.0)
        jch, jcc = tl.where(alive, jch, 0.0), tl.where(alive, jcc, 1.0)
        at0 = (r2 == 0) & m  # A_0^T lam_0
        gx0 += tl.sum(tl.where(at0, jhh * th_ + jch * tc_, 0.0), axis=0)
        gy0 += tl.sum(tl.where(at0, jhc * th_ + jcc * tc_, 0.0), axis=0)
        lh, lc = _last(th_, TILE), _last(tc_, TILE)
    tl.store(carry + b * 2 * H + cols, lh, mask=cmask)
    tl.store(carry + b * 2 * H + H + cols, lc, mask=cmask)
    tl.store(prow, e_af, mask=cmask)
    tl.store(prow + H, e_ac, mask=cmask)
    tl.store(prow + 2 * H, e_ao, mask=cmask)
    tl.store(prow + 3 * H, e_cf, mask=cmask)
    tl.store(prow + 4 * H, e_co, mask=cmask)
    tl.store(dh0 + b * 2 * H + cols, gx0, mask=cmask)
    tl.store(dh0 + b * 2 * H + H + cols, gy0, mask=cmask)


def _chunks(T: int, chunk: int):
    step = T if chunk <= 0 else chunk
    return [(t0, min(t0 + step, T)) for t0 in range(0, T, step)]


def _grid(B: int, H: int):
    return (B, triton.cdiv(H, BLOCK))


@torch.library.custom_op("rnnlab::newton_fused_sweep", mutates_args=())
def newton_sweep(cell: str, u: torch.Tensor, h0: torch.Tensor, cur: torch.Tensor,
                 params: torch.Tensor, lengths: torch.Tensor, damping: float, init: str,
                 chunk: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Newton iteration: u ``(B, T, G*H)``, h0 ``(B, H)``, cur ``(B, T, H)`` (read when
    init == "given", else ignored), params ``(P, H)``, lengths ``(B,)`` int64, all contiguous
    and one float dtype -> nxt, f ``(B, T, H)``, ratio ``(B, T)``, and the guess made from
    init ("zeros" or "step": the iterate this sweep linearized; an empty ``(0,)`` when
    init == "given", since an op cannot return its input). One launch per ``chunk`` steps
    (<= 0: one launch)."""
    B, T = u.shape[:2]
    G, P, L = CELLS[cell]
    H = h0.shape[-1] // L
    it = cur if init == "given" else torch.empty_like(cur)
    nxt, f = torch.empty_like(cur), torch.empty_like(cur)
    grid = _grid(B, H)
    sq = u.new_empty(2 * L, grid[1], B, T)  # per leaf: sums of (f - h)^2 and h^2
    carry = h0.new_zeros(B, L * H)
    for t0, t1 in _chunks(T, chunk):
        args = (u, h0, it, params, lengths, nxt, f, sq, carry, B, T, H, t0, t1, damping)
        if L == 2:
            _sweep2_kernel[grid](*args, INIT=INITS[init], TILE=TILE, BLOCK=BLOCK)
        else:
            _sweep_kernel[grid](*args, CELL=CODES[cell], G=G, P=P, INIT=INITS[init], TILE=TILE,
                                BLOCK=BLOCK)
    norms = sq.sum(1).sqrt().unflatten(0, (L, 2))  # (2L, NB, B, T) -> (L, 2, B, T)
    ratio = (norms[:, 0] / (norms[:, 1] + 1e-6)).amax(0)  # the largest leaf's; NaN wins
    return nxt, f, ratio, cur.new_empty(0) if init == "given" else it


@newton_sweep.register_fake
def _(cell, u, h0, cur, params, lengths, damping, init, chunk):
    return (torch.empty_like(cur), torch.empty_like(cur), cur.new_empty(cur.shape[:2]),
            cur.new_empty(0) if init == "given" else torch.empty_like(cur))


@torch.library.custom_op("rnnlab::newton_fused_adjoint", mutates_args=())
def newton_adjoint(cell: str, u: torch.Tensor, h0: torch.Tensor, hsol: torch.Tensor,
                   params: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor, chunk: int
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward of z = the step at the solution ``hsol (B, T, H)``: g = dL/dz ``(B, T, H)``
    -> du ``(B, T, G*H)``, dh0 ``(B, H)``, dparams ``(P, H)``; one launch per chunk, last
    chunk first."""
    B, T = hsol.shape[:2]
    G, P, L = CELLS[cell]
    H = h0.shape[-1] // L
    du = torch.empty_like(u)
    dparams = params.new_zeros(B, P, H)  # one row per sequence, summed below
    dh0, carry = torch.zeros_like(h0), torch.zeros_like(h0)
    for t0, t1 in reversed(_chunks(T, chunk)):
        args = (u, h0, hsol, params, lengths, g, du, dparams, dh0, carry, B, T, H, t0, t1)
        if L == 2:
            _adjoint2_kernel[_grid(B, H)](*args, TILE=TILE, BLOCK=BLOCK)
        else:
            _adjoint_kernel[_grid(B, H)](*args, CELL=CODES[cell], G=G, P=P, TILE=TILE,
                                         BLOCK=BLOCK)
    return du, dh0, dparams.sum(0)


@newton_adjoint.register_fake
def _(cell, u, h0, hsol, params, lengths, g, chunk):
    return torch.empty_like(u), torch.empty_like(h0), torch.empty_like(params)


@torch.library.custom_op("rnnlab::newton_fused_solve", mutates_args=())
def newton_solve(cell: str, u: torch.Tensor, h0: torch.Tensor, params: torch.Tensor,
                 lengths: torch.Tensor, tol: float, max_iters: int, damping: float, init: str,
                 chunk: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Newton by fused sweeps to ``tol`` (the engine's rule) -> z ``(B, T, H)`` (the step at
    the solution: the output), the solution iterate ``(B, T, H)`` (not differentiable; the
    backward reads it) and info ``(max_iters + 2,)`` float64 on the CPU: the number of sweeps,
    then each sweep's largest ratio (NaN padding). Backward: ``newton_fused_adjoint``."""
    B, T, S = u.shape[0], u.shape[1], h0.shape[-1]

    def sweep(cur):
        if cur is None:  # the first sweep makes the guess and returns it
            return newton_sweep(cell, u, h0, u.new_empty(B, T, S), params, lengths, damping,
                                init, chunk)
        return (*newton_sweep(cell, u, h0, cur, params, lengths, damping, "given", chunk)[:3],
                cur)

    hsol, z, history = solve_loop(sweep, None, max_iters, tol)
    info = torch.full((max_iters + 2,), float("nan"), dtype=torch.float64)
    info[0] = len(history)
    info[1:1 + len(history)] = torch.tensor(history, dtype=torch.float64)
    return z, hsol, info


@newton_solve.register_fake
def _(cell, u, h0, params, lengths, tol, max_iters, damping, init, chunk):
    H = h0.shape[-1]
    z = u.new_empty(u.shape[0], u.shape[1], H)
    return z, torch.empty_like(z), torch.empty(max_iters + 2, dtype=torch.float64, device="cpu")


def _setup_context(ctx, inputs, output):
    cell, u, h0, params, lengths = inputs[:5]
    ctx.cell, ctx.chunk = cell, inputs[-1]
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(u, h0, params, lengths, output[1])


def _backward(ctx, dz, _dhsol, _dinfo):
    u, h0, params, lengths, hsol = ctx.saved_tensors
    dz = torch.zeros_like(hsol) if dz is None else dz.contiguous()
    du, dh0, dparams = newton_adjoint(ctx.cell, u, h0, hsol, params, lengths, dz, ctx.chunk)
    return None, du, dh0, dparams, None, None, None, None, None, None


newton_solve.register_autograd(_backward, setup_context=_setup_context)
