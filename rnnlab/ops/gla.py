"""Gated linear attention, chunked (matmul-shaped), beside its plain loop reference.

Per batch row and head, with state ``S_t`` of shape ``(K, V)``::

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T
    o_t = S_t^T (scale q_t)

``g`` is a log-decay in one of two forms, and its rank picks the algorithm:

- ``(B, T, H, K)``: one decay per key channel (GLA). Within a chunk of C steps the decays
  between two steps differ per key, so the (C, C) attention is built from sub-chunks of c
  steps: a block of sub-chunks ``J < I`` is one matmul of ``q_i exp(G_i - r_I)``,
  ``exp(r_I - e_J)`` and ``k_j exp(e_J - G_j)`` (``r_I`` the cumulative log-decay where I
  starts, ``e_J`` where J ends), all exponents ``<= 0``; a diagonal block is an explicit
  ``(c, c, K)`` pairwise product of segment sums.
- ``(B, T, H)``: one scalar decay per head (Mamba-2 SSD, simple GLA, RetNet): the (C, C)
  decay matrix ``exp(segsum(g))`` multiplies ``q k^T`` directly.

Chunks are carried one to the next by a Python loop over ``ceil(T / C)`` chunks. Every log-decay
difference is a direct sum of the g's it spans (never the difference of two long cumsums, which
cancels digits after a step with a large |g|), so with ``g <= 0`` only values ``<= 0`` are
exponentiated: ``g = -1e4`` forgets exactly, with no inf or NaN in outputs or gradients. A step
with ``g = 0`` and ``k = 0`` leaves the state unchanged (padding). Positive ``g`` is allowed but
its exponentials may overflow.

Conventions (fla's layout):

- ``q, k: (B, T, H, K)``, ``v: (B, T, H, V)``, state ``(B, H, K, V)``. ``q`` and ``k`` may be
  non-contiguous (e.g. an ``expand()``-ed view shared by all heads).
- ``scale=None`` means **1** (q is used as given); fla's ``None`` means ``K ** -0.5``.
- Computed in fp32 (fp64 if q, g or initial_state is fp64). ``o`` comes back in ``q``'s dtype;
  the final state stays in the compute dtype.
- ``cu_seqlens`` (``B == 1``): N packed sequences, each from its row of ``initial_state``
  ``(N, H, K, V)``; the final state has N rows.
- ``chunk_size=None``: C = 32 for both forms, c = 8 (fwd+bwd on one CPU thread at
  B8 T1024 H1 K64 V128 and B32 T128 H4 K32 V64 per key, B8 T1024 H2 K16 V64 per head: C = 16
  or 32 within a few percent of each other, 64 slower by 10-30%), lowered for a short sequence
  to the least multiple of c (per key) or the least size (per head) at or above T.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .checks import (check_chunk_size, check_matrix_state, check_qkv, check_scale,
                     check_tensor, compute_dtype)
from .delta import _pack_rows, _segsum, _to_chunks
from .varlen import check_cu_seqlens, segments

Tensor = torch.Tensor

CHUNK = 32  # default C for both forms of g
SUB_CHUNK = 8  # largest sub-chunk c of the per-key form (c divides C)


def _check_inputs(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size):
    """Validate the arguments; returns ``(B, T, H, K, V, cu, compute_dtype)``."""
    B, T, H, K, V = check_qkv(q, k, v)
    if isinstance(g, torch.Tensor) and g.shape not in ((B, T, H, K), (B, T, H)):
        raise ValueError(f"g: expected shape (B, T, H, K) = {(B, T, H, K)} (per key) or "
                         f"(B, T, H) = {(B, T, H)} (per head), got {tuple(g.shape)}")
    check_tensor("g", g, g.shape if isinstance(g, torch.Tensor) else (), "(B, T, H[, K])",
                  q.device)
    cu = check_cu_seqlens(cu_seqlens, B, T)
    rows = B if cu is None else len(cu) - 1
    check_matrix_state(initial_state, rows, H, K, V, cu is not None, q.device)
    check_chunk_size(chunk_size, optional=True)
    check_scale(scale)
    return B, T, H, K, V, cu, compute_dtype(q, g, initial_state)


def _prepare(q, k, v, g, scale, initial_state, cu_seqlens, chunk_size):
    """Checks, then ``(cu, scale, (q, k, v, g), S0, out_dtype)`` in the compute dtype, with
    ``q`` already scaled and S0 ``(B or N, H, K, V)`` zeros when no initial state."""
    B, T, H, K, V, cu, dt = _check_inputs(q, k, v, g, scale, initial_state, cu_seqlens,
                                          chunk_size)
    rows = B if cu is None else len(cu) - 1
    out_dtype = q.dtype
    q, k, v, g = (x.to(dt) for x in (q, k, v, g))
    scale = 1.0 if scale is None else float(scale)
    if scale != 1.0:
        q = q * scale
    S0 = q.new_zeros(rows, H, K, V) if initial_state is None else initial_state.to(dt)
    return cu, (q, k, v, g), S0, out_dtype


def _span_sums(x: Tensor) -> Tensor:
    """``x (..., L, K) -> (..., L, L, K)``: ``sum(x[j+1 : i+1])`` per key for ``i >= j``, 0 for
    ``i < j``. One matmul with a 0/1 matrix: each entry is a sum of exactly the terms it spans
    (no difference of long cumsums), and its backward is a matmul too."""
    L = x.shape[-2]
    t = torch.arange(L, device=x.device)
    span = (t > t[:, None]) & (t <= t[:, None, None])  # (L, L, L): [i, j, t] = j < t <= i
    return (span.reshape(L * L, L).to(x.dtype) @ x).unflatten(-2, (L, L))  # (..., L, L, K)


def _sub_chunk(C: int) -> int:
    """The largest divisor of C that is at most SUB_CHUNK."""
    return next(c for c in range(min(SUB_CHUNK, C), 0, -1) if C % c == 0)


def _key_operands(q: Tensor, k: Tensor, g: Tensor):
    """:func:`_operands` for per-key ``g (N, Z, C, K)``, from sub-chunks of c steps. Every
    log-decay is a sum of g's taken directly: ``a`` from the start of a sub-chunk to i, ``b``
    from j (exclusive) to the end of its sub-chunk, ``seg`` within, ``seg_n`` across whole
    sub-chunks. The attention ``A[i, j] = sum_x q_ix k_jx exp(G_ix - G_jx)`` is an explicit
    pairwise product on diagonal blocks and a matmul per sub-chunk pair ``J < I``."""
    N, Z, C, K = q.shape
    c = _sub_chunk(C)
    n = C // c
    q, k, g = (x.reshape(N, Z, n, c, K) for x in (q, k, g))  # (N, Z, n, c, K)
    seg = _span_sums(g)  # (N, Z, n, c, c, K): G_i - G_j within a sub-chunk (0 for i < j)
    a = g.cumsum(-2)  # (N, Z, n, c, K): G_i - r_I (r_I: G where sub-chunk I starts)
    b = seg[..., -1, :, :]  # (N, Z, n, c, K): e_J - G_j (e_J: G where sub-chunk J ends)
    tot = a[..., -1, :]  # (N, Z, n, K): each sub-chunk's total
    seg_n = _span_sums(tot)  # (N, Z, n, n, K): e_I - e_J
    qa, kb = q * a.exp(), k * b.exp()  # (N, Z, n, c, K)
    blocks = ((seg.exp() * k.unsqueeze(-3)) @ q.unsqueeze(-1)).squeeze(-1)  # (N, Z, n, c, c)
    blocks = torch.where(torch.ones(c, c, dtype=torch.bool, device=q.device).tril(), blocks, 0)
    where = torch.arange(n, device=q.device) * (n + 1)  # flat (I, I) block positions
    if n > 1:
        I, J = torch.tril_indices(n, n, -1, device=q.device)  # P pairs J < I
        between = seg_n[..., I - 1, J, :].exp()  # (N, Z, P, K): exp(r_I - e_J)
        off = (qa[:, :, I] * between.unsqueeze(-2)) @ kb[:, :, J].transpose(-1, -2)
        blocks = torch.cat([blocks, off], 2)  # (N, Z, n + P, c, c)
        where = torch.cat([where, I * n + J])
    A = blocks.new_zeros(N, Z, n * n, c, c).index_copy(2, where, blocks)  # (N, Z, nn, c, c)
    A = A.reshape(N, Z, n, n, c, c).transpose(3, 4).reshape(N, Z, C, C)  # (N, Z, C, C)
    start = F.pad(tot.cumsum(-2)[..., :-1, :], (0, 0, 1, 0))  # (N, Z, n, K): r_I
    Qd = (qa * start.unsqueeze(-2).exp()).reshape(N, Z, C, K)  # q_i exp(G_i)
    Kd = (kb * seg_n[..., -1, :, :].unsqueeze(-2).exp()).reshape(N, Z, C, K)  # k exp(G_C - G_j)
    return Qd, A, Kd, tot.sum(-2).exp().unsqueeze(-1)


def _operands(q: Tensor, k: Tensor, g: Tensor):
    """Per-chunk operands, all chunks at once: ``q, k (N, Z, C, K)``, ``g (N, Z, C, K)`` or
    ``(N, Z, C)``. Returns ``Qd (N, Z, C, K)``, ``A (N, Z, C, C)``, ``Kd (N, Z, C, K)`` and
    ``decay (N, Z, K, 1)`` or ``(N, Z, 1, 1)`` such that, with S the state entering a chunk,
    ``O = Qd S + A V`` and ``S <- decay S + Kd^T V``."""
    if g.dim() == 4:
        return _key_operands(q, k, g)
    seg = _segsum(g)  # (N, Z, C, C): G_i - G_j below the diagonal, -inf above
    gamma = g.cumsum(-1)  # (N, Z, C)
    Qd = q * gamma.exp().unsqueeze(-1)  # (N, Z, C, K)
    A = (q @ k.transpose(-1, -2)) * seg.exp()  # (N, Z, C, C), lower triangular
    Kd = k * seg[..., -1, :].exp().unsqueeze(-1)  # (N, Z, C, K): k_j exp(G_C - G_j)
    return Qd, A, Kd, gamma[..., -1, None, None].exp()


def _chunked(q, k, v, g, S0, C: int):
    """Chunked GLA on compute-dtype tensors ``(B, T, H, ·)``, ``S0 (B, H, K, V)``. Zero padding
    (k = g = 0) leaves the state untouched. Returns ``o (B, T, H, V)``, ``S_T (B, H, K, V)``."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T == 0:
        return v.new_zeros(v.shape), S0
    q, k, v, g = (_to_chunks(x, C) for x in (q, k, v, g))  # (N, Z, C, ...)
    Qd, A, Kd, decay = _operands(q, k, g)
    writes = Kd.transpose(-1, -2) @ v  # (N, Z, K, V): each chunk's own contribution
    S = S0.reshape(B * H, K, V)  # (Z, K, V)
    states = []
    for w, d in zip(writes.unbind(0), decay.unbind(0)):
        states.append(S)
        S = torch.addcmul(w, d, S)  # (Z, K, V): decay S + Kd^T V
    o = Qd @ torch.stack(states) + A @ v  # (N, Z, C, V)
    N = o.shape[0]
    o = o.reshape(N, B, H, C, V).permute(1, 0, 3, 2, 4)  # (B, N, C, H, V)
    o = o.reshape(B, N * C, H, V)[:, :T]  # (B, T, H, V)
    return o, S.reshape(B, H, K, V)


def default_chunk_size(T: int, per_key: bool) -> int:
    """C for ``chunk_size=None``: CHUNK, or for a short sequence the least multiple of
    SUB_CHUNK (per-key g) or the least size (per-head g) at or above T."""
    if per_key:
        return min(CHUNK, SUB_CHUNK * max(1, -(-T // SUB_CHUNK)))
    return min(CHUNK, max(T, 1))


USE_TRITON = True  # CUDA takes the Triton kernels where triton imports; False: the torch path


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(device="cpu") -> str:
    """The path ``gated_linear_attention`` takes on ``device``: "triton" (CUDA kernels) or
    "torch" (the chunked loop below)."""
    if torch.device(device).type == "cuda" and USE_TRITON and _triton_importable():
        return "triton"
    return "torch"


def _triton_takes(q, chunk_size) -> bool:
    """Whether the Triton kernels run this call: the triton backend, T > 0, and a chunk size
    they take (None, or a power of two >= 16); bad inputs go on to the torch path's checks."""
    if not isinstance(q, Tensor) or q.dim() < 2 or backend(q.device) != "triton" \
            or q.shape[1] == 0:
        return False
    return chunk_size is None or (isinstance(chunk_size, int) and chunk_size >= 16
                                  and chunk_size & (chunk_size - 1) == 0)


def gated_linear_attention(q: Tensor, k: Tensor, v: Tensor, g: Tensor,
                           scale: Optional[float] = None, initial_state: Optional[Tensor] = None,
                           output_final_state: bool = False,
                           cu_seqlens: Optional[Tensor] = None, chunk_size: Optional[int] = None
                           ) -> Tuple[Tensor, Optional[Tensor]]:
    """Gated linear attention, chunkwise: a loop over ``ceil(T / C)`` chunks.

    q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``; g: log-decay ``(B, T, H, K)`` (per key) or
    ``(B, T, H)`` (per head); scale: None means 1; initial_state: ``(B, H, K, V)``, or
    ``(N, H, K, V)`` with ``cu_seqlens`` (N + 1,) and B == 1; chunk_size: C, any positive int,
    None for :func:`default_chunk_size`.

    Returns ``o (B, T, H, V)`` in q's dtype and, if ``output_final_state``, the final state
    ``(B or N, H, K, V)`` in the compute dtype (fp32, or fp64), else None. Autograd flows
    through all inputs and ``initial_state``.

    On CUDA, where triton imports (``backend``), the Triton kernels of ``gla_triton.py`` run it
    (a ``chunk_size`` that is not a power of two >= 16 keeps the torch path)."""
    if _triton_takes(q, chunk_size):
        from .gla_triton import gated_linear_attention_triton  # imports triton: only when used
        return gated_linear_attention_triton(q, k, v, g, scale, initial_state, output_final_state,
                                             cu_seqlens, chunk_size)
    cu, (q, k, v, g), S0, out_dtype = _prepare(q, k, v, g, scale, initial_state, cu_seqlens,
                                               chunk_size)
    if cu is None:
        C = chunk_size or default_chunk_size(q.shape[1], g.dim() == 4)
        o, S = _chunked(q, k, v, g, S0, C)
    else:
        mask, packed = _pack_rows(cu, q, k, v, g)  # (N, L), (N, L, H, ...)
        C = chunk_size or default_chunk_size(mask.shape[1], g.dim() == 4)
        o, S = _chunked(*packed, S0, C)  # (N, L, H, V)
        o = o[mask].unsqueeze(0)  # (1, T, H, V)
    return o.to(out_dtype), (S if output_final_state else None)


def _reference_run(q, k, v, g, S):
    """One step at a time: ``q, k (b, L, H, K)``, ``v (b, L, H, V)``, ``g (b, L, H[, K])``,
    ``S (b, H, K, V)`` -> ``o (b, L, H, V)``, ``S``. Steps are taken by ``unbind``."""
    outs = []
    for qt, kt, vt, gt in zip(*(x.unbind(1) for x in (q, k, v, g))):
        a = gt.exp().unsqueeze(-1)  # (b, H, K, 1) per key
        a = a if gt.dim() == 3 else a.unsqueeze(-1)  # (b, H, 1, 1) per head
        S = a * S + kt.unsqueeze(-1) * vt.unsqueeze(-2)  # (b, H, K, V)
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S))  # (b, H, V)
    if not outs:
        return v.new_zeros(v.shape), S
    return torch.stack(outs, 1), S  # (b, L, H, V)


def gated_linear_attention_reference(q: Tensor, k: Tensor, v: Tensor, g: Tensor,
                                     scale: Optional[float] = None,
                                     initial_state: Optional[Tensor] = None,
                                     output_final_state: bool = False,
                                     cu_seqlens: Optional[Tensor] = None,
                                     chunk_size: Optional[int] = None
                                     ) -> Tuple[Tensor, Optional[Tensor]]:
    """The source of truth: a plain loop over time. Same signature, shapes and dtypes as
    :func:`gated_linear_attention` (``chunk_size`` is checked, then unused); each sequence of
    ``cu_seqlens`` is run on its own from its row of ``initial_state``."""
    cu, (q, k, v, g), S0, out_dtype = _prepare(q, k, v, g, scale, initial_state, cu_seqlens,
                                               chunk_size)
    if cu is None:
        o, S = _reference_run(q, k, v, g, S0)
    else:
        outs, finals = [], []
        for i, (s, e) in enumerate(segments(cu)):
            part = (x[:, s:e] for x in (q, k, v, g))  # (1, l_i, H, ...)
            o_i, S_i = _reference_run(*part, S0[i:i + 1])
            outs.append(o_i)
            finals.append(S_i)
        o, S = torch.cat(outs, 1), torch.cat(finals)  # (1, T, H, V), (N, H, K, V)
    return o.to(out_dtype), (S if output_final_state else None)
