"""Time-invariant state-space models as one long causal convolution (the S4 papers'
convolutional mode), beside the plain loop reference.

Per batch row and channel h (H channels, state size N per channel)::

    x_t = A x_{t-1} + B u_t,        y_t = Re(C . x_t)

Two forms, told apart by A's rank:

- diagonal: ``A, B, C: (H, N)``, complex (S4D's A_bar, B_bar; DLR's Lambda with B = 1); real
  ones are taken as complex. State ``(B, H, N)`` complex; y is the real part.
- dense: ``A: (H, N, N)``, ``B, C: (H, N)``, all real (LSSL). State ``(B, H, N)`` real.

Fast path: the kernel ``K_s = Re(C A^s B)``, s < T, is built once and applied by an FFT of a
fast (2, 3, 5-smooth) length >= 2T - 1. An initial state adds ``Re(C A^(t+1) x_0)``; the final
state ``x_L = A^L x_0 + sum_{s<L} A^s B u_{L-1-s}`` contracts the time-reversed u with the powers
``A^s B``. No per-step state is formed, and every contraction over s is a batched matmul:

- diagonal: with ``s = qM + r`` (M ~ sqrt(T)), ``A^s = A^(qM) A^r``; the two ``(H, sqrt(T), N)``
  tables come from ``exp(k log A)`` in fp64, and the sums over s factor into bmm's over r and n,
  so not even the ``(H, T, N)`` powers are formed;
- dense: the rows ``(A^s B)^T`` and ``C^T A^s`` by doubling (log T batched matmuls on the
  squares ``A^(2^k)``), ``A^L x_0`` by the binary digits of L.

Gradients by autograd (torch.fft is differentiable) to u, A, B, C and initial_state, complex
leaves included.

Variable lengths: ``lengths (B,)`` ends row b at step ``lengths[b]`` (its final state is x
there; y past it is unspecified: the caller masks it; u past it has no influence), or
``cu_seqlens`` (B == 1, packed sequences, each from its row of initial_state; run as padded rows
with lengths).

Precision: computed in fp32 (fp64 if any input is fp64/complex128), FFT included; y comes back
in u's dtype, the final state in the compute dtype (complex64/complex128 for the diagonal form).
The fp32 FFT keeps ~3e-7 relative error at T = 32768 (against fp64 on the same inputs), so it
stays fp32; only the diagonal power tables (2 sqrt(T) H N numbers) are computed in fp64: from
``exp(k log A)`` in fp32 the phase ``k angle(A)`` loses ~k ulps (1e-4 relative at k = 4096 for
|A| ~ 1). Mind that an fp32 model's output itself moves by ~T ulps when A is rounded to fp32.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .checks import check_tensor
from .delta import _pack_rows
from .varlen import check_cu_seqlens, segments

Tensor = torch.Tensor


def _check_param(name: str, x, shape: tuple, pattern: str, dense: bool, device) -> None:
    """``check_tensor`` for a parameter: complex allowed in the diagonal form only."""
    if dense and isinstance(x, torch.Tensor) and x.is_complex():
        raise TypeError(f"{name}: expected a real floating dtype (dense form), got {x.dtype}")
    check_tensor(name, x, shape, pattern, device, like="u", complex_ok=not dense)


def _check_lengths(lengths, cu, Bsz: int, T: int, device) -> Optional[Tensor]:
    """``lengths`` as a long tensor ``(B,)`` on ``device`` (None stays None)."""
    if lengths is None:
        return None
    if cu is not None:
        raise ValueError("lengths: give either lengths or cu_seqlens, not both")
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths: expected an integer tensor (B,), got {type(lengths).__name__}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if tuple(lengths.shape) != (Bsz,):
        raise ValueError(f"lengths: expected shape (B,) = ({Bsz},), got {tuple(lengths.shape)}")
    if Bsz and (int(lengths.min()) < 0 or int(lengths.max()) > T):
        raise ValueError(f"lengths: expected values in [0, T={T}], got {lengths.tolist()}")
    return lengths.to(device, torch.long)


def _check(u, A, B, C, initial_state, cu_seqlens, lengths):
    """Validate; returns ``(dense, cu, lengths, compute real dtype)``."""
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"u: expected a torch.Tensor (B, T, H), got {type(u).__name__}")
    if not u.is_floating_point() or u.dim() != 3:
        raise (TypeError if not u.is_floating_point() else ValueError)(
            f"u: expected a real floating tensor (B, T, H), got {u.dtype} {tuple(u.shape)}")
    Bsz, T, H = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() not in (2, 3):
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise (ValueError if isinstance(A, torch.Tensor) else TypeError)(
            f"A: expected (H, N) (diagonal) or (H, N, N) (dense) with H={H}, got {got}")
    dense, N = A.dim() == 3, A.shape[-1]
    _check_param("A", A, (H, N, N) if dense else (H, N), "(H, N, N)" if dense else "(H, N)",
                 dense, u.device)
    _check_param("B", B, (H, N), "(H, N)", dense, u.device)
    _check_param("C", C, (H, N), "(H, N)", dense, u.device)
    cu = check_cu_seqlens(cu_seqlens, Bsz, T)
    rows = Bsz if cu is None else cu.numel() - 1
    if initial_state is not None:
        _check_param("initial_state", initial_state, (rows, H, N),
                     "(B, H, N)" if cu is None else "(N_seq, H, N)", dense, u.device)
    lengths = _check_lengths(lengths, cu, Bsz, T, u.device)
    wide = (torch.float64, torch.complex128)
    present = [x for x in (u, A, B, C, initial_state) if x is not None]
    return dense, cu, lengths, (torch.float64 if any(x.dtype in wide for x in present)
                                else torch.float32)


def _prepare(u, A, B, C, initial_state, cu_seqlens, lengths):
    """Checks, then the inputs in the compute dtype (complex for the diagonal form):
    ``(dense, cu, lengths, u, A, B, C, x0 or None)``."""
    dense, cu, lengths, rd = _check(u, A, B, C, initial_state, cu_seqlens, lengths)
    sd = rd if dense else (torch.complex128 if rd == torch.float64 else torch.complex64)
    x0 = None if initial_state is None else initial_state.to(sd)
    u = _zero_padding(u, lengths).to(rd)
    return dense, cu, lengths, u, A.to(sd), B.to(sd), C.to(sd), x0


def _zero_padding(u: Tensor, L: Optional[Tensor]) -> Tensor:
    """``u (B, T, H)`` with the steps past each row's length set to 0. The FFT mixes every
    step into every other, so a NaN there would reach the valid outputs and a huge value would
    swamp them with its rounding error; a select (not a mask product: 0 * NaN is NaN) also
    gives those steps a gradient of exactly 0."""
    if L is None:
        return u
    valid = torch.arange(u.shape[1], device=u.device) < L[:, None]  # (B, T)
    return torch.where(valid[..., None], u, u.new_zeros(()))


def _fast_size(n: int) -> int:
    """The smallest 2, 3, 5-smooth integer >= n (FFT lengths that pocketfft/cuFFT like)."""
    best, p5 = 1 << max(n - 1, 0).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _causal_conv(u: Tensor, K: Tensor) -> Tensor:
    """``y_t = sum_{s<=t} K_s u_{t-s}`` per channel: ``u (B, T, H)``, ``K (H, T)`` -> y
    ``(B, T, H)``."""
    T = u.shape[1]
    n = _fast_size(2 * T - 1)  # no wrap-around reaches the first T outputs
    # along the last dim (time innermost): ~1.5x faster than strided FFTs along dim 1 on CPU
    Uf = torch.fft.rfft(u.transpose(1, 2), n=n)  # (B, H, n // 2 + 1)
    Kf = torch.fft.rfft(K, n=n)  # (H, n // 2 + 1)
    return torch.fft.irfft(Uf * Kf, n=n)[..., :T].transpose(1, 2)  # (B, H, T) -> (B, T, H)


def _cut(x: Tensor) -> float:
    """Magnitudes below this (sqrt of the smallest normal of x's real dtype: 1e-19 in fp32) are
    flushed to 0 in the powers: far below any tolerance next to ``A^0 = 1``, and they would
    otherwise breed subnormal numbers (``0.5^s`` is subnormal in fp32 from s = 127), which make
    CPU matmuls ~10-50x slower."""
    return torch.finfo(x.real.dtype).tiny ** 0.5


def _flush(x: Tensor, small: Optional[Tensor] = None) -> Tensor:
    """``x`` with the entries of magnitude below :func:`_cut` (or where ``small``) set to 0, its
    gradient passed through unchanged: a tiny entry of a matrix power can still have a large
    derivative (HiPPO's structural zeros), so the value is flushed, not the path."""
    small = x.abs() < _cut(x) if small is None else small
    return x - torch.where(small, x, 0).detach()


def _diag_tables(A: Tensor, S: int) -> Tuple[Tensor, Tensor]:
    """``lo = A^r (H, M, N)`` for r < M ~ sqrt(S) and ``hi = A^(qM) (H, Q, N)`` for q < Q,
    ``QM >= S``: ``A^s = hi[s // M] lo[s % M]``.

    Both come from ``exp(k log A)`` in fp64 whatever the compute dtype (see the module notes on
    precision), then are rounded once; the powers are never formed, only contracted."""
    M = math.isqrt(max(S - 1, 0)) + 1  # ceil(sqrt(S))
    Q = -(-S // M)
    A64 = A.to(torch.complex128 if A.device.type != "mps" else A.dtype)  # MPS has no fp64
    tiny = torch.finfo(torch.float64).tiny  # an exact 0 (an underflowed decay) gets a finite log
    logA = torch.log(torch.where(A64 == 0, tiny, A64))  # (H, N)
    k = torch.arange(max(M, Q), device=A.device, dtype=torch.float64)[:, None]  # (k, 1)
    log_cut = math.log(_cut(A))  # of the compute dtype, not fp64

    def power(e):  # exp(e log A), e real: scaling the parts is exact, a complex product is not
        re = e * logA.real[:, None]  # (H, k, N): log |A^e|
        z = torch.exp(torch.complex(re, e * logA.imag[:, None]))
        return _flush(z, re < log_cut)  # (H, k, N)
    return power(k[:M]).to(A.dtype), power(k[:Q] * M).to(A.dtype)  # (H, M, N), (H, Q, N)


def _pairs(z: Tensor) -> Tensor:
    """``(..., N)`` complex -> ``(..., 2N)`` real ``[re, -im]`` pairs: ``Re(z . w)`` is
    ``_pairs(z) . view_as_real(w)``."""
    return torch.stack([z.real, -z.imag], -1).flatten(-2)  # (..., 2N)


def _diag_parts(A, B, C, T: int, x0, L, v):
    """Diagonal form: kernel ``K (H, T)``, the initial state's output ``(B, T, H)`` (None
    without x0) and, given ``v (H, B, T)`` (u reversed per row), the final state ``(B, H, N)``.

    With ``s = qM + r``, ``sum_n w_n A_n^s = sum_n (w_n hi_qn) lo_rn``: one real bmm per
    contraction over n (or over r for the final state), so no ``(H, T, N)`` tensor exists."""
    lo, hi = _diag_tables(A, T if x0 is None else T + 1)
    H, M, N = lo.shape
    Q = hi.shape[1]
    lo_r = torch.view_as_real(lo).flatten(2)  # (H, M, 2N)
    W = (C * B).unsqueeze(0)  # (1, H, N): the kernel's weights
    if x0 is not None:
        W = torch.cat([W, C * x0])  # (1 + B, H, N): and the initial state's, per row
    Z = _pairs(hi.unsqueeze(1) * W.transpose(0, 1).unsqueeze(2))  # (H, 1 [+ B], Q, 2N)
    out = (Z.flatten(1, 2) @ lo_r.mT).reshape(H, W.shape[0], Q * M)  # (H, 1 [+ B], S')
    K = out[:, 0, :T]  # (H, T): Re(sum_n C_n B_n A_n^s)
    y0 = None if x0 is None else out[:, 1:, 1:T + 1].permute(1, 2, 0)  # (B, T, H)
    x = None
    if v is not None:
        x = _diag_final(v, lo, hi, T) * B  # (B, H, N): sum_s v_s A^s B
        if x0 is not None:
            if L is None:
                x = x + hi[:, T // M] * lo[:, T % M] * x0  # (B, H, N): + A^T x0
            else:
                x = x + (hi[:, L // M] * lo[:, L % M]).transpose(0, 1) * x0  # + A^L x0, per row
    return K, y0, x


def _diag_final(v: Tensor, lo: Tensor, hi: Tensor, T: int) -> Tensor:
    """``sum_s v_s A^s`` per row and channel: ``v (H, B, T)`` real, tables ``lo (H, M, N)``,
    ``hi (H, Q, N)`` -> ``(B, H, N)`` complex, by whichever of two contractions moves fewer
    numbers: with ``s = qM + r``, one bmm over r then an elementwise sum over q (a
    ``(H, B, Q, N)`` temporary), or, when ``B Q > T`` (many rows, short T), the powers
    ``A^s = hi[q] lo[r]`` formed a block of q's at a time and contracted by one real matmul each
    (an ``(H, T, N)`` temporary, in blocks). The powers are kept as real and imaginary parts:
    a complex broadcast product's backward multiplies by a lazily conjugated operand, slow on
    CPU."""
    H, M, N = lo.shape
    Q, Bsz = hi.shape[1], v.shape[1]
    v = torch.nn.functional.pad(v, (0, Q * M - T))  # (H, B, S')
    if Bsz * Q <= T:
        part = torch.view_as_complex((v.reshape(H, Bsz * Q, M) @ torch.view_as_real(lo).flatten(2))
                                     .reshape(H, Bsz, Q, N, 2))  # (H, B, Q, N)
        return (part * hi.unsqueeze(1)).sum(2).transpose(0, 1)  # (B, H, N)
    l_re, l_im = lo.real.unsqueeze(1), lo.imag.unsqueeze(1)  # (H, 1, M, N)
    step = max(1, 2 ** 21 // (H * M * N))
    x = None
    for q0 in range(0, Q, step):
        h_re, h_im = (z[:, q0:q0 + step, None] for z in (hi.real, hi.imag))  # (H, q, 1, N)
        P = torch.cat([h_re * l_re - h_im * l_im, h_re * l_im + h_im * l_re], -1)  # (H,q,M,2N)
        part = v[..., q0 * M:(q0 + step) * M] @ P.flatten(1, 2)  # (H, B, 2N): [re, im] halves
        x = part if x is None else x + part
    return torch.complex(x[..., :N], x[..., N:]).transpose(0, 1)  # (B, H, N)


def _doubling(v, squares, S: int, transpose: bool) -> Tensor:
    """Rows ``v A^s`` (``transpose``: ``v (A^s)^T``, i.e. ``(A^s v^T)^T``) for s < S, from
    ``v (H, 1, N)`` and ``squares[k] = A^(2^k)``: each round doubles the rows with one matmul."""
    for Q in squares:
        m = v.shape[1]
        if m >= S:
            break
        step = _flush(v[:, :S - m] @ (Q.mT if transpose else Q))  # (H, min(m, S - m), N)
        v = torch.cat([v, step], 1)  # (H, min(2m, S), N)
    return v


def _dense_parts(A, B, C, T: int, x0, L, v):
    """Dense form: as :func:`_diag_parts`, with the rows ``(A^s B)^T`` and ``C^T A^s`` built
    by doubling on the squares ``A^(2^k)``, and ``A^L x0`` by the binary digits of L."""
    squares = [A]  # A^(2^k) for 2^k <= T
    while 2 ** len(squares) <= T:
        squares.append(_flush(squares[-1] @ squares[-1]))  # (H, N, N)
    G = _doubling(B[:, None], squares, T, transpose=True)  # (H, T, N): (A^s B)^T
    K = (G @ C.unsqueeze(-1))[..., 0]  # (H, T)
    y0 = x = None
    if x0 is not None:
        R = _doubling(C[:, None], squares, T + 1, transpose=False)  # (H, T + 1, N): C^T A^s
        y0 = (R @ x0.permute(1, 2, 0))[:, 1:].permute(2, 1, 0)  # (H, T, B) -> (B, T, H)
    if v is not None:
        x = (v @ G).transpose(0, 1)  # (H, B, N) -> (B, H, N)
        if x0 is not None:
            for k, Q in enumerate(squares):  # A^L x0 by the binary digits of L
                if L is None and not (T >> k) & 1:
                    continue
                Qx = torch.einsum("hij,bhj->bhi", Q, x0)  # (B, H, N)
                x0 = Qx if L is None else torch.where(((L >> k) & 1).bool()[:, None, None],
                                                      Qx, x0)
            x = x + x0
    return K, y0, x


def _reversed(u: Tensor, L) -> Tensor:
    """``v_s = u_{L-1-s}`` for s < L, else 0: ``(B, T, H)``, each row ending at its length."""
    if L is None:
        return u.flip(1)
    s = torch.arange(u.shape[1], device=u.device)
    index = (L[:, None] - 1 - s).clamp(min=0)  # (B, T)
    v = u.gather(1, index[..., None].expand(u.shape))  # (B, T, H)
    return torch.where((s < L[:, None])[..., None], v, v.new_zeros(()))


def _convolve(u, A, B, C, x0, L, dense: bool, want_final: bool):
    """The fast path on prepared tensors: ``y (B, T, H)``, final state ``(B, H, N)`` or None."""
    v = _reversed(u, L).permute(2, 0, 1) if want_final else None  # (H, B, T)
    K, y0, x = (_dense_parts if dense else _diag_parts)(A, B, C, u.shape[1], x0, L, v)
    y = _causal_conv(u, K)  # (B, T, H)
    return (y if y0 is None else y + y0), x


def ssm_convolution(u: Tensor, A: Tensor, B: Tensor, C: Tensor,
                    initial_state: Optional[Tensor] = None, output_final_state: bool = False,
                    cu_seqlens: Optional[Tensor] = None, lengths: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Optional[Tensor]]:
    """Time-invariant SSM ``x_t = A x_{t-1} + B u_t``, ``y_t = Re(C . x_t)`` by FFT convolution.

    u: ``(B, T, H)`` real; A: ``(H, N)`` diagonal (complex) or ``(H, N, N)`` dense (real);
    B, C: ``(H, N)``; initial_state: ``(B, H, N)`` (``(N_seq, H, N)`` with cu_seqlens), zeros if
    None; cu_seqlens: ``(N_seq + 1,)`` packed sequences along T (B == 1); lengths: ``(B,)`` ints
    in ``[0, T]`` (not with cu_seqlens), row b ends at ``lengths[b]`` (y past it unspecified).

    Returns ``y (B, T, H)`` in u's dtype and, if ``output_final_state``, the state after each
    row's last step ``(B or N_seq, H, N)`` in the compute dtype (complex for the diagonal form),
    else None. Gradients flow to u, A, B, C and initial_state."""
    out_dtype = u.dtype if isinstance(u, torch.Tensor) else None
    dense, cu, L, u, A, B, C, x0 = _prepare(u, A, B, C, initial_state, cu_seqlens, lengths)
    if u.shape[1] == 0:
        rows = u.shape[0] if cu is None else cu.numel() - 1
        x = x0 if x0 is not None else B.new_zeros(rows, *B.shape)  # (B, H, N)
        return u.to(out_dtype), (x if output_final_state else None)
    if cu is None:
        y, x = _convolve(u, A, B, C, x0, L, dense, output_final_state)
    else:
        mask, (rows,) = _pack_rows(cu, u)  # (N_seq, L), (N_seq, L, H)
        y, x = _convolve(rows, A, B, C, x0, mask.sum(1), dense, output_final_state)
        y = y[mask].unsqueeze(0)  # (1, T, H)
    return y.to(out_dtype), x


def _reference_run(u, A, B, C, x, L, dense: bool):
    """One step at a time: ``u (b, T, H)``, ``x (b, H, N)`` -> ``y (b, T, H)``, ``x``; with
    ``L (b,)`` a row's state stops changing after its ``L``-th step."""
    ys = []
    for t, u_t in enumerate(u.unbind(1)):  # (b, H)
        Ax = (A @ x.unsqueeze(-1)).squeeze(-1) if dense else A * x  # (b, H, N)
        new = Ax + B * u_t.unsqueeze(-1)  # (b, H, N)
        x = new if L is None else torch.where((t < L)[:, None, None], new, x)
        ys.append((C * new).sum(-1).real)  # (b, H)
    return (torch.stack(ys, 1) if ys else u.new_zeros(u.shape)), x


def ssm_convolution_reference(u: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              initial_state: Optional[Tensor] = None,
                              output_final_state: bool = False,
                              cu_seqlens: Optional[Tensor] = None,
                              lengths: Optional[Tensor] = None
                              ) -> Tuple[Tensor, Optional[Tensor]]:
    """The source of truth: a plain loop over time, the state updated step by step. Same
    signature, shapes and dtypes as :func:`ssm_convolution`; each sequence of ``cu_seqlens``
    runs alone from its row of ``initial_state``."""
    out_dtype = u.dtype if isinstance(u, torch.Tensor) else None
    dense, cu, L, u, A, B, C, x0 = _prepare(u, A, B, C, initial_state, cu_seqlens, lengths)
    rows = u.shape[0] if cu is None else cu.numel() - 1
    x0 = B.new_zeros(rows, *B.shape) if x0 is None else x0  # (B or N_seq, H, N)
    if cu is None:
        y, x = _reference_run(u, A, B, C, x0, L, dense)
    else:
        outs, finals = [], []
        for i, (s, e) in enumerate(segments(cu)):
            y_i, x_i = _reference_run(u[:, s:e], A, B, C, x0[i:i + 1], None, dense)
            outs.append(y_i)
            finals.append(x_i)
        y, x = torch.cat(outs, 1), torch.cat(finals)  # (1, T, H), (N_seq, H, N)
    return y.to(out_dtype), (x if output_final_state else None)
