"""Parallel inclusive prefix scan of an associative (not necessarily commutative) combine.

``combine(earlier, later)`` takes two tuples of tensors laid out like ``elems`` (the time dim in
the same place, any length along it) and returns their composition as a tuple of the same
layout; it must broadcast over every leading dim, time included. Ready-made monoids live in
:mod:`rnnlab.ops.monoids`.

The fast path is the work-efficient odd/even recursion (Blelloch's up/down sweep written
recursively): combine neighbouring pairs, scan the half-length sequence of pairs, then fill in
the even positions. That is about 2T combines (O(T) work) in 2·log2(T) dependent levels, each
level a handful of whole-tensor ops, so autograd through it is cheap. Hillis–Steele would take
T·log2(T) combines in log2(T) levels: half the depth, but the extra work costs more than it saves
when a combine is a matrix product (mLSTM, general affine).
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple, Union

import torch

from ..checks import check_int

Elems = Tuple[torch.Tensor, ...]


def _take(elems: Elems, dims: Sequence[int], start: int, stop=None, step: int = 1) -> Elems:
    """Slice every tensor along its own time dim: ``(..., T, ...) -> (..., T', ...)``."""
    return tuple(x[(slice(None),) * d + (slice(start, stop, step),)] for x, d in zip(elems, dims))


def _cat(parts: List[Elems], dims: Sequence[int]) -> Elems:
    return tuple(torch.cat(xs, dim=d) for xs, d in zip(zip(*parts), dims))


def _interleave(even: Elems, odd: Elems, dims: Sequence[int]) -> Elems:
    """``e0, o0, e1, o1, ...``; ``even`` has as many elements as ``odd`` or one more."""
    n_odd = odd[0].shape[dims[0]]
    out = []
    for e, o, d in zip(even, odd, dims):
        # (..., n, ...) x 2 -> (..., n, 2, ...) -> (..., 2n, ...)
        pairs = torch.stack((e.narrow(d, 0, n_odd), o), dim=d + 1).flatten(d, d + 1)
        out.append(torch.cat((pairs, e.narrow(d, n_odd, 1)), dim=d)
                   if e.shape[d] > n_odd else pairs)
    return tuple(out)


def _odd_even_scan(combine, elems: Elems, dims: Sequence[int]) -> Elems:
    """Inclusive scan by odd/even recursion; each of elems is ``(..., T, ...)`` along its dim."""
    steps = elems[0].shape[dims[0]]
    if steps < 2:
        return elems
    # prefix[2k+1] = scan over the pairs (x0∘x1, x2∘x3, ...): T // 2 of them
    pairs = combine(_take(elems, dims, 0, steps - 1, 2), _take(elems, dims, 1, None, 2))
    odd = _odd_even_scan(combine, pairs, dims)
    # prefix[2k] = prefix[2k-1] ∘ x[2k] for k >= 1: (T - 1) // 2 of them, after prefix[0] = x0
    n_rest = (steps - 1) // 2
    even = _take(elems, dims, 0, 1)
    if n_rest:
        rest = combine(_take(odd, dims, 0, n_rest), _take(elems, dims, 2, None, 2))
        even = _cat([even, rest], dims)
    return _interleave(even, odd, dims)


def _prepare(combine, elems, dim: int):
    """Validate; returns (tuple combine, elems tuple, per-tensor dims, whether to unwrap)."""
    if not callable(combine):
        raise TypeError(f"combine: expected a callable combine(earlier, later), got "
                        f"{type(combine).__name__}")
    single = isinstance(elems, torch.Tensor)
    elems = (elems,) if single else elems
    if not isinstance(elems, (tuple, list)) or not elems or \
            not all(isinstance(x, torch.Tensor) for x in elems):
        raise TypeError(f"elems: expected a tensor or a non-empty tuple of tensors (B, T, ...), "
                        f"got {type(elems).__name__}"
                        + (f" of {[type(x).__name__ for x in elems]}" if elems else ""))
    check_int(None, "dim", dim)
    dims = []
    for i, x in enumerate(elems):
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim: expected a dim in [{-x.dim()}, {x.dim() - 1}] for elems[{i}] "
                             f"of shape {tuple(x.shape)}, got {dim}")
        dims.append(dim % x.dim())
    lengths = [x.shape[d] for x, d in zip(elems, dims)]
    if len(set(lengths)) > 1:
        raise ValueError(f"elems: expected the same length along dim={dim}, got lengths "
                         f"{lengths} for shapes {[tuple(x.shape) for x in elems]}")
    return _checked(combine, len(elems), single), tuple(elems), dims, single


def _checked(combine, count: int, single: bool):
    """Wrap ``combine`` so it always maps tuples to tuples and says so when it does not."""
    def tuple_combine(a: Elems, b: Elems) -> Elems:
        out = combine(a[0], b[0]) if single else combine(a, b)
        out = (out,) if single else out
        if not isinstance(out, (tuple, list)) or len(out) != count or \
                not all(isinstance(x, torch.Tensor) for x in out):
            raise TypeError(f"combine: expected it to return {count} tensor(s) like elems, got "
                            f"{type(out).__name__}")
        return tuple(out)
    return tuple_combine


def associative_scan(combine: Callable, elems: Union[torch.Tensor, Sequence[torch.Tensor]],
                     dim: int = 1, reverse: bool = False):
    """Inclusive prefix scan: ``out[t] = elems[0] ∘ elems[1] ∘ ... ∘ elems[t]``.

    Args:
        combine: ``combine(earlier, later) -> composed``, associative; for a single tensor
            ``elems`` it maps tensors to a tensor, otherwise tuples to a tuple.
        elems: a tensor or tuple of tensors, each ``(B, T, ...)`` (trailing shapes may differ,
            e.g. ``(B, T, H)`` and ``(B, T, H, K, V)``) with the same T along ``dim``.
        dim: the time dim, resolved per tensor (negative counts from each tensor's end).
        reverse: scan from the end: ``out[t] = elems[T-1] ∘ ... ∘ elems[t]``, that is
            flip, scan, flip back (as ``jax.lax.associative_scan``); the later-in-time element
            is the earlier operand.

    Returns:
        The scanned elements, laid out like ``elems`` (``(B, T, ...)`` each). Differentiable by
        autograd: O(T) combines in O(log T) levels.
    """
    combine, elems, dims, single = _prepare(combine, elems, dim)
    if reverse:
        elems = tuple(x.flip(d) for x, d in zip(elems, dims))
    out = _odd_even_scan(combine, elems, dims)
    if reverse:
        out = tuple(x.flip(d) for x, d in zip(out, dims))
    return out[0] if single else out


def associative_scan_reference(combine: Callable,
                               elems: Union[torch.Tensor, Sequence[torch.Tensor]],
                               dim: int = 1, reverse: bool = False):
    """Plain loop over time with the same contract as :func:`associative_scan` (the reference).

    Each step combines the running total (time length 1) with the next element (time length 1).
    """
    combine, elems, dims, single = _prepare(combine, elems, dim)
    steps = elems[0].shape[dims[0]]
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    acc, outs = None, []
    for t in order:
        x = _take(elems, dims, t, t + 1)  # (..., 1, ...)
        acc = x if acc is None else combine(acc, x)
        outs.append(acc)
    if reverse:
        outs.reverse()
    if not outs:
        return elems[0] if single else elems
    out = _cat(outs, dims)  # T x (..., 1, ...) -> (..., T, ...)
    return out[0] if single else out
