"""The Newton engine's solution as an autograd function (backward by the adjoint at the fixed
point, never through the iterations), and the pool of full-length buffers it reuses."""
from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from ..ops.block import column_adjoint_scan_
from .linearize import state_vjp


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
        if s.quasi:
            grad_start = quasi_adjoint(s, u.detach(), hbuf, chunks, g, lam,
                                       tuple(t.detach() for t in tensors))
        else:
            grad_start = adjoint_sweep(lam, chunks, g, s)  # A_0^T lambda_0 = dL/dh0
        grads = s.vjp(s.step, s.names, u.detach(), hbuf, s.alive, lam.view(B * T, S),
                      tuple(t.detach() for t in tensors))
        s.buffers.give(g)
        if not any(gr is not None and gr.untyped_storage().data_ptr()
                   == lam.untyped_storage().data_ptr() for gr in grads):
            s.buffers.give(lam)  # (unless a gradient is lam itself, as for a pass-through)
        return (None, grads[0], grad_start, *grads[1:])


def adjoint_sweep(lam: torch.Tensor, chunks, g: torch.Tensor, s) -> torch.Tensor:
    """``lam_t = g_t + A_{t+1}^T lam_{t+1}`` into lam ``(B, T, S)`` by one reverse sweep over
    the Jacobian chunks; -> the last carry ``A_0^T lam_0`` ``(B, S)``."""
    carry = g.new_zeros(g.shape[0], g.shape[2])  # A_{t1}^T lam_{t1}, from the next chunk
    for A, (t0, _) in zip(reversed(chunks), reversed(s.bounds)):
        column_adjoint_scan_(lam, A, g, s.src, carry, t0)
    return carry


def quasi_adjoint(s, u: torch.Tensor, hbuf: torch.Tensor, chunks, g: torch.Tensor,
                  lam: torch.Tensor, tensors) -> torch.Tensor:
    """The exact adjoint ``lam_t = g_t + J_{t+1}^T lam_{t+1}`` when only the kept part A of
    each J was stored (quasi-Newton): the same iteration as the forward, transposed. The
    residual ``rho_t = g_t + J_{t+1}^T lam_{t+1} - lam_t`` is exact (one batched VJP of the
    step, ``state_vjp``), the correction solves ``delta_t = rho_t + A_{t+1}^T delta_{t+1}`` by
    the cheap sweep; stop when ``max_t ||rho_t|| <= tol (||lam_t|| + 1e-6 max_t ||lam_t||)``.
    Not converged in ``max_iters``: one exact sequential sweep of per-step VJPs (warned).
    ``tensors``: the cell's tensors of the forward (``s.names``). Writes lam ``(B, T, S)``;
    -> ``J_0^T lam_0`` ``(B, S)``, the gradient to h0."""
    B, T, S = s.shape
    prev, rows = hbuf[:T], lam.view(B * T, S)
    delta = s.buffers.take((B, T, S), g)
    adjoint_sweep(lam, chunks, g, s)  # the first iterate: the quasi solve from lam = 0
    history = []
    for _ in range(s.max_iters):
        back = s.state_vjp(s.step, s.names, u, prev, s.alive, rows, tensors)  # (T, B, S)
        rho = delta
        torch.sub(g, lam, out=rho)
        rho[:, :-1] += back[1:].transpose(0, 1)  # (T-1, B, S) -> (B, T-1, S)
        size = lam.norm(dim=-1)  # (B, T)
        ratio = rho.norm(dim=-1) / (size + 1e-6 * size.amax() + 1e-30)
        history.append(float(ratio.amax()))
        if history[-1] <= s.tol:
            s.buffers.give(delta)
            s.stats["adjoint_iterations"], s.stats["adjoint_history"] = len(history), history
            return back[0]
        adjoint_sweep(rho, chunks, rho, s)  # rho <- delta (each step reads g_t before it writes)
        lam += rho
    s.buffers.give(delta)
    s.stats["adjoint_iterations"], s.stats["adjoint_history"] = None, history
    warnings.warn(f"Newton(quasi=True): the adjoint did not reach tol={s.tol:g} in "
                  f"{s.max_iters} iterations (last residual {history[-1]:.2e}); finishing the "
                  f"backward with a sequential sweep", RuntimeWarning, stacklevel=3)
    return _sequential_adjoint(s, u, prev, g, lam, tensors)


def _sequential_adjoint(s, u, prev, g, lam, tensors) -> torch.Tensor:
    """``lam_t = g_t + J_{t+1}^T lam_{t+1}`` backwards in time, one VJP of the step per t."""
    q = g.new_zeros(g.shape[0], g.shape[2])
    for t in range(g.shape[1] - 1, -1, -1):
        torch.add(g[:, t], q, out=lam[:, t])
        alive = None if s.alive is None else s.alive[:, t:t + 1]
        q = state_vjp(s.step, s.names, u[:, t:t + 1], prev[t:t + 1], alive, lam[:, t],
                      tensors)[0]
    return q


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
