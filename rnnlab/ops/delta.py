"""The (gated) delta rule, chunked in the WY/UT form, beside its plain loop reference.

Per head, with state ``S_t`` of shape ``(K, V)``::

    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale q_t)

Conventions (fla's layout, two deliberate differences):

- ``q, k: (B, T, H, K)``, ``v: (B, T, H, V)``, ``beta, g: (B, T, H)``, state ``(B, H, K, V)``.
- ``scale=None`` means **1** (q is used as given). fla's ``None`` means ``K ** -0.5``: pass
  ``scale=K ** -0.5`` to match fla.
- ``g`` is a log-decay (usually <= 0; ``None`` means 0, the plain delta rule). Positive ``g``
  is allowed but grows the state and may overflow.
- ``k`` is not normalized here: the caller L2-normalizes it. With ``||k|| = 1`` the
  eigenvalues of ``I - beta k k^T`` are 1 and ``1 - beta``, so ``beta`` in ``[0, 2]`` keeps
  the recurrence stable (``beta > 1`` gives negative eigenvalues).
- Computed in fp32 (fp64 stays fp64). ``o`` comes back in ``q``'s dtype; the final state stays
  in the compute dtype (at least fp32).
- ``cu_seqlens`` (``B == 1``): N packed sequences, each from its row of ``initial_state``
  ``(N, H, K, V)``; the final state has N rows.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .checks import (check_chunk_size, check_matrix_state, check_qkv, check_scale,
                     check_tensor, compute_dtype)
from .varlen import check_cu_seqlens, segments

Tensor = torch.Tensor


def _check_inputs(q, k, v, beta, g, initial_state, cu_seqlens, chunk_size, scale):
    """Validate the arguments; returns ``(B, T, H, K, V, cu, compute_dtype)``."""
    B, T, H, K, V = check_qkv(q, k, v)
    check_tensor("beta", beta, (B, T, H), "(B, T, H)", q.device)
    if g is not None:
        check_tensor("g", g, (B, T, H), "(B, T, H)", q.device)
    cu = check_cu_seqlens(cu_seqlens, B, T)
    rows = B if cu is None else len(cu) - 1
    check_matrix_state(initial_state, rows, H, K, V, cu is not None, q.device)
    check_chunk_size(chunk_size, optional=False)
    check_scale(scale)
    return B, T, H, K, V, cu, compute_dtype(q, beta, g, initial_state)


def _segsum(g: Tensor) -> Tensor:
    """``g (..., C) -> (..., C, C)``: ``sum(g[j+1 : i+1])`` for ``i >= j``, ``-inf`` above.

    Built by a masked cumsum of the g's in the segment, not as a difference of two long
    cumsums (which cancels digits when |gamma| is large); with ``g <= 0`` only values ``<= 0``
    are ever exponentiated, and ``-inf`` above the diagonal exponentiates to an exact 0."""
    C = g.shape[-1]
    x = g.unsqueeze(-1).expand(*g.shape, C)  # (..., C, C): x[i, j] = g_i
    strict = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)
    seg = x.masked_fill(~strict, 0).cumsum(-2)  # (..., C, C)
    return seg.masked_fill(~strict.logical_or(torch.eye(C, dtype=torch.bool, device=g.device)),
                           -math.inf)


def _chunk_operands(q, k, v, beta, g, scale: float):
    """Per-chunk operands of the WY/UT form, all chunks at once.

    ``q, k: (N, BH, C, K)``, ``v: (N, BH, C, V)``, ``beta, g: (N, BH, C)`` (N chunks here).
    Returns ``W (N, BH, C, K)``, ``U (N, BH, C, V)``, ``Kd (N, BH, C, K)``, ``decay (N, BH)``,
    ``Qd (N, BH, C, K)``, ``P (N, BH, C, C)`` such that, with S the state entering a chunk,
    ``V' = U - W S``, ``O = Qd S + P V'`` and ``S <- decay S + Kd^T V'``."""
    V = v.shape[-1]
    seg = _segsum(g)  # (N, BH, C, C): gamma_i - gamma_j below the diagonal, -inf above
    gam = seg.exp()  # (N, BH, C, C): Gamma_ij = exp(gamma_i - gamma_j), 0 above
    gamma = g.cumsum(-1)  # (N, BH, C): decay from the chunk start to step i, in log space
    bk = beta.unsqueeze(-1) * k  # (N, BH, C, K): beta_i k_i
    a = ((bk @ k.transpose(-1, -2)) * gam).tril(-1)  # (N, BH, C, C): StrictTril(b (G . KK^T))
    rhs = torch.cat([beta.unsqueeze(-1) * v, gamma.exp().unsqueeze(-1) * bk], -1)  # (.., V + K)
    # (I + a) X = rhs; unitriangular takes a's (zero) diagonal as ones.
    sol = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)
    U, W = sol.split([V, k.shape[-1]], -1)  # (N, BH, C, V), (N, BH, C, K)
    Kd = k * seg[..., -1, :].exp().unsqueeze(-1)  # (N, BH, C, K): k_j exp(gamma_C - gamma_j)
    decay = gamma[..., -1].exp()  # (N, BH)
    if scale != 1.0:
        q = q * scale
    Qd = q * gamma.exp().unsqueeze(-1)  # (N, BH, C, K)
    P = (q @ k.transpose(-1, -2)) * gam  # (N, BH, C, C), lower triangular
    return W, U, Kd, decay, Qd, P


def _chunk_scan(W, U, Kd, decay, S):
    """Carry the state ``S (BH, K, V)`` across the N chunks; returns the states entering each
    chunk ``(N, BH, K, V)``, the corrected values ``V' (N, BH, C, V)`` and the final state.
    Chunks are taken by ``unbind`` (one stacking backward), not by indexing (a full-size zero
    gradient per chunk)."""
    states, news = [], []
    for w, u, kd, d in zip(W.unbind(0), U.unbind(0), Kd.unbind(0), decay.unbind(0)):
        states.append(S)
        vn = torch.baddbmm(u, w, S, alpha=-1)  # (BH, C, V)
        news.append(vn)
        S = torch.baddbmm(S * d[:, None, None], kd.transpose(1, 2), vn)  # (BH, K, V)
    if not states:
        return W.new_zeros(0, *S.shape), U.new_zeros(U.shape), S
    return torch.stack(states), torch.stack(news), S


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """``(B, T, H, ...) -> (N, B*H, C, ...)`` with T zero-padded to ``N * C``."""
    B, T, H = x.shape[:3]
    N = -(-T // C)
    tail = x.shape[3:]
    if N * C != T:
        x = torch.nn.functional.pad(x, [0, 0] * len(tail) + [0, 0, 0, N * C - T])  # (B, NC, H, ..)
    x = x.reshape(B, N, C, H, *tail)  # (B, N, C, H, ...)
    x = x.permute(1, 0, 3, 2, *range(4, x.dim()))  # (N, B, H, C, ...)
    return x.reshape(N, B * H, C, *tail)  # (N, BH, C, ...)


def _chunked(q, k, v, beta, g, S0, C: int, scale: float):
    """Chunked delta rule on compute-dtype tensors ``(B, T, H, ·)``, ``S0 (B, H, K, V)``.
    Zero padding (k = beta = g = 0) leaves the state untouched. Returns ``o (B, T, H, V)``
    and ``S_T (B, H, K, V)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    q, k, v, beta, g = (_to_chunks(x, C) for x in (q, k, v, beta, g))  # (N, BH, C, ...)
    W, U, Kd, decay, Qd, P = _chunk_operands(q, k, v, beta, g, scale)
    states, news, S = _chunk_scan(W, U, Kd, decay, S0.reshape(B * H, K, V))
    o = Qd @ states + P @ news  # (N, BH, C, V)
    N = o.shape[0]
    o = o.reshape(N, B, H, C, V).permute(1, 0, 3, 2, 4)  # (B, N, C, H, V)
    o = o.reshape(B, N * C, H, V)[:, :T]  # (B, T, H, V)
    return o, S.reshape(B, H, K, V)


def _pack_rows(cu: Tensor, *xs: Tensor):
    """Packed ``(1, T, H, ...)`` tensors -> one zero-padded row per sequence ``(N, L, H, ...)``
    (L the longest length), and the ``(N, L)`` mask of real steps."""
    bounds = segments(cu)
    lengths = torch.tensor([e - s for s, e in bounds], dtype=torch.long)
    L = int(lengths.max())
    steps = torch.arange(L)
    mask = steps[None] < lengths[:, None]  # (N, L)
    index = (cu[:-1, None] + steps[None]).clamp(max=max(xs[0].shape[1] - 1, 0))  # (N, L)
    device = xs[0].device
    mask, index = mask.to(device), index.to(device)
    rows = []
    for x in xs:
        r = x[0][index]  # (N, L, H, ...)
        keep = mask.reshape(*mask.shape, *[1] * (r.dim() - 2))
        rows.append(torch.where(keep, r, r.new_zeros(())))
    return mask, rows


def _prepare(q, k, v, beta, g, initial_state, cu_seqlens, chunk_size, scale):
    """Checks, then the inputs in the compute dtype: ``(cu, scale, (q, k, v, beta, g), S0,
    out_dtype)`` with g zeros when None, S0 ``(B or N, H, K, V)`` zeros when no initial state,
    and out_dtype q's own dtype."""
    B, T, H, K, V, cu, dt = _check_inputs(q, k, v, beta, g, initial_state, cu_seqlens,
                                          chunk_size, scale)
    rows = B if cu is None else len(cu) - 1
    g = beta.new_zeros(()).expand(B, T, H) if g is None else g
    out_dtype = q.dtype
    q, k, v, beta, g = (x.to(dt) for x in (q, k, v, beta, g))
    S0 = q.new_zeros(rows, H, K, V) if initial_state is None else initial_state.to(dt)
    return cu, 1.0 if scale is None else float(scale), (q, k, v, beta, g), S0, out_dtype


def delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Optional[Tensor] = None,
               initial_state: Optional[Tensor] = None, output_final_state: bool = False,
               cu_seqlens: Optional[Tensor] = None, chunk_size: int = 64,
               scale: Optional[float] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """Gated delta rule, chunkwise (WY/UT form): a loop over ``ceil(T / C)`` chunks.

    q, k: ``(B, T, H, K)`` (k L2-normalized by the caller); v: ``(B, T, H, V)``;
    beta: ``(B, T, H)`` (in ``[0, 2]``); g: ``(B, T, H)`` log-decay or None (0);
    initial_state: ``(B, H, K, V)`` or ``(N, H, K, V)`` with ``cu_seqlens`` (N + 1,), B == 1;
    chunk_size: C, any positive int (T need not be a multiple); scale: None means 1.

    Returns ``o (B, T, H, V)`` in q's dtype and, if ``output_final_state``, the final state
    ``(B or N, H, K, V)`` in the compute dtype (fp32, or fp64 for fp64 inputs), else None.
    Autograd flows through all inputs and ``initial_state``."""
    cu, scale, (q, k, v, beta, g), S0, out_dtype = _prepare(
        q, k, v, beta, g, initial_state, cu_seqlens, chunk_size, scale)
    if cu is None:
        o, S = _chunked(q, k, v, beta, g, S0, chunk_size, scale)
    else:
        mask, packed = _pack_rows(cu, q, k, v, beta, g)  # (N, L), (N, L, H, ...)
        o, S = _chunked(*packed, S0, chunk_size, scale)  # (N, L, H, V)
        o = o[mask].unsqueeze(0)  # (1, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def _reference_run(q, k, v, beta, g, S, scale: float):
    """One step at a time: ``q, k (b, L, H, K)``, ``v (b, L, H, V)``, ``beta, g (b, L, H)``,
    ``S (b, H, K, V)`` -> ``o (b, L, H, V)``, ``S``. Steps are taken by ``unbind`` (indexing
    would cost a full-size zero gradient per step in the backward)."""
    outs = []
    for qt, kt, vt, bt, gt in zip(*(x.unbind(1) for x in (q, k, v, beta, g))):
        S = gt.exp()[..., None, None] * S  # (b, H, K, V): exp(g_t) S_{t-1}
        kS = torch.einsum("bhk,bhkv->bhv", kt, S)  # (b, H, V)
        # exp(g)(I - b k k^T) S + b k v^T  ==  exp(g) S + k (b (v - k^T exp(g) S))^T
        S = S + kt.unsqueeze(-1) * (bt.unsqueeze(-1) * (vt - kS)).unsqueeze(-2)
        outs.append(torch.einsum("bhk,bhkv->bhv", scale * qt, S))  # (b, H, V)
    if not outs:
        return v.new_zeros(v.shape), S
    return torch.stack(outs, 1), S  # (b, L, H, V)


def delta_rule_reference(q: Tensor, k: Tensor, v: Tensor, beta: Tensor,
                         g: Optional[Tensor] = None, initial_state: Optional[Tensor] = None,
                         output_final_state: bool = False, cu_seqlens: Optional[Tensor] = None,
                         chunk_size: int = 64, scale: Optional[float] = None
                         ) -> Tuple[Tensor, Optional[Tensor]]:
    """The source of truth: a plain loop over time. Same signature, shapes and dtypes as
    :func:`delta_rule` (``chunk_size`` is checked, then unused); each sequence of
    ``cu_seqlens`` is run on its own from its row of ``initial_state``."""
    cu, scale, (q, k, v, beta, g), S0, out_dtype = _prepare(
        q, k, v, beta, g, initial_state, cu_seqlens, chunk_size, scale)
    if cu is None:
        o, S = _reference_run(q, k, v, beta, g, S0, scale)
    else:
        outs, finals = [], []
        for i, (s, e) in enumerate(segments(cu)):
            part = (x[:, s:e] for x in (q, k, v, beta, g))  # (1, l_i, H, ...)
            o_i, S_i = _reference_run(*part, S0[i:i + 1], scale)
            outs.append(o_i)
            finals.append(S_i)
        o, S = torch.cat(outs, 1), torch.cat(finals)  # (1, T, H, V), (N, H, K, V)
    return o.to(out_dtype), (S if output_final_state else None)
