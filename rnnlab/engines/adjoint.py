"""The Newton engine's solution as an autograd function (backward by the adjoint at the fixed
point, never through the iterations), and the pool of full-length buffers it reuses."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..ops.block import column_adjoint_scan_


class Solution(torch.autograd.Function):
    """The solved states as a function of (u, h0, the cell's tensors). Forward returns, per
    state leaf, every step's state ``(B, T, S_l)`` and the last one ``(B, S_l)``, made from the
    last linearization (no extra pass) and handed in through ``solved.outputs``; separate last
    states keep autograd from filling a full-length zero gradient for them, and a leaf nobody
    reads (ParaLSTM's c) gets no gradient at all. Backward, at the fixed point (implicit-function
    theorem; exact BPTT): the adjoint ``lambda_t = g_t + A_{t+1}^T lambda_{t+1}`` by one reverse
    sweep over the Jacobian chunks kept from that linearization, then one batched VJP of the
    step pulls lambda back to u and the parameters; the sweep's last carry, A_0^T lambda_0, is
    the gradient to h0. The solution and its Jacobians are saved tensors: autograd frees them
    after the backward (or keeps them for another, with ``retain_graph``)."""

    @staticmethod
    def forward(ctx, solved, u, start, *tensors):
        ctx.solved, ctx.n_tensors = solved, len(tensors)
        ctx.save_for_backward(u, *tensors, solved.hbuf, *solved.A)
        outputs, solved.hbuf, solved.A, solved.outputs = solved.outputs, None, None, None
        ctx.set_materialize_grads(False)
        return tuple(t.view_as(t) for t in outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *outs):  # L x (B, T, S_l) for every step, then L x (B, S_l) for the last
        s, saved = ctx.solved, ctx.saved_tensors
        u, tensors = saved[0], saved[1:1 + ctx.n_tensors]
        hbuf, chunks = saved[1 + ctx.n_tensors], saved[2 + ctx.n_tensors:]
        B, T, S = s.shape
        g = gather_grads(s.buffers.take((B, T, S), hbuf), outs, s.split)
        lam = s.buffers.take((B, T, S), g)
        carry = g.new_zeros(B, S)  # A_{t1}^T lambda_{t1}, sent back from the next chunk
        for A, (t0, _) in zip(reversed(chunks), reversed(s.bounds)):
            column_adjoint_scan_(lam, A, g, s.src, carry, t0)
        grads = s.vjp(s.step, s.names, u.detach(), hbuf, s.alive, lam.view(B * T, S),
                      tuple(t.detach() for t in tensors))
        grad_start = carry  # A_0^T lambda_0: the adjoint's last carry is dL/dh0
        s.buffers.give(g)
        if not any(gr is not None and gr.untyped_storage().data_ptr()
                   == lam.untyped_storage().data_ptr() for gr in grads):
            s.buffers.give(lam)  # (unless a gradient is lam itself, as for a pass-through)
        return (None, grads[0], grad_start, *grads[1:])


def gather_grads(g: torch.Tensor, grads, split) -> torch.Tensor:
    """The gradient of every step's flat state into g ``(B, T, S)``: leaf l's slice from its
    every-step gradient (zeros where it has none), plus its last state's gradient at T-1."""
    L, off = len(split), 0
    for steps, last, n in zip(grads[:L], grads[L:], split):
        part = g[..., off:off + n]  # (B, T, S_l)
        if steps is None:
            part.zero_()
        else:
            part.copy_(steps.reshape(part.shape))
        if last is not None:
            part[:, -1] += last.reshape(part.shape[0], n)
        off += n
    return g


class Solved:
    """What the backward needs from a solve besides its saved tensors."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


class Buffers:
    """Reuse of the solver's internal full-length buffers (iterates, adjoint) across calls: a
    fresh allocation this large is mapped and page-faulted anew by the allocator at every call,
    which can cost as much as a Newton pass. Keeps at most two free buffers for each of the
    last three shapes; nothing handed out here is ever returned to the caller."""

    def __init__(self):
        self._free: dict = {}

    def take(self, shape, like: torch.Tensor) -> torch.Tensor:
        free = self._free.pop((tuple(shape), like.dtype, like.device), [])
        t = free.pop() if free else like.new_empty(shape)
        if free:
            self._free[(tuple(shape), like.dtype, like.device)] = free
        return t

    def give(self, t: torch.Tensor) -> None:
        key = (tuple(t.shape), t.dtype, t.device)
        free = self._free.pop(key, [])
        if len(free) < 2:
            free.append(t)
        self._free[key] = free  # most recent last
        while len(self._free) > 3:
            del self._free[next(iter(self._free))]
