"""Argument checks shared by the chunked ops (delta rule, gated linear attention, mLSTM): each
raises a TypeError/ValueError that names the argument, the expected shape or range, and what was
given."""
from __future__ import annotations

from typing import Tuple

import torch

from ..checks import check_int, check_number


def check_tensor(name: str, x, shape: tuple, pattern: str, device, like: str = "q",
                 complex_ok: bool = False) -> None:
    """TypeError/ValueError naming ``name`` unless ``x`` is a float (or, with ``complex_ok``,
    complex) tensor of ``shape`` on ``device`` (that of the input named ``like``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {pattern}, got {type(x).__name__}")
    if not (x.is_floating_point() or (complex_ok and x.is_complex())):
        kind = "a floating or complex dtype" if complex_ok else "a floating dtype"
        raise TypeError(f"{name}: expected {kind}, got {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {pattern} = {tuple(shape)}, "
                         f"got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name}: expected device {device} (that of {like}), got {x.device}")


def check_qkv(q, k, v) -> Tuple[int, int, int, int, int]:
    """q, k ``(B, T, H, K)`` and v ``(B, T, H, V)``, float, on one device, of one dtype;
    returns ``(B, T, H, K, V)``."""
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        got = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise (ValueError if isinstance(q, torch.Tensor) else TypeError)(
            f"q: expected a tensor of shape (B, T, H, K), got {got}")
    B, T, H, K = q.shape
    if not isinstance(v, torch.Tensor) or v.dim() != 4:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise (ValueError if isinstance(v, torch.Tensor) else TypeError)(
            f"v: expected a tensor of shape (B, T, H, V) = ({B}, {T}, {H}, V), got {got}")
    V = v.shape[-1]
    check_tensor("q", q, (B, T, H, K), "(B, T, H, K)", q.device)
    check_tensor("k", k, (B, T, H, K), "(B, T, H, K)", q.device)
    check_tensor("v", v, (B, T, H, V), "(B, T, H, V)", q.device)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected the dtype of q ({q.dtype}), got k {k.dtype}, "
                        f"v {v.dtype}")
    return B, T, H, K, V


def check_matrix_state(initial_state, rows: int, H: int, K: int, V: int, packed: bool,
                       device) -> None:
    """An optional initial state ``(B, H, K, V)``, or ``(N, H, K, V)`` for N packed sequences."""
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (rows, H, K, V),
                     "(N, H, K, V)" if packed else "(B, H, K, V)", device)


def compute_dtype(*tensors) -> torch.dtype:
    """fp64 when any given tensor is fp64, else fp32 (None entries are skipped)."""
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


def check_chunk_size(chunk_size, optional: bool) -> None:
    """An int >= 1 (or None where ``optional``: the op then chooses); a wrong type raises
    OptionTypeError (a TypeError), a value below 1 ValueError."""
    check_int(None, "chunk_size", chunk_size, low=1, optional=optional)


def check_scale(scale) -> None:
    """A finite number, or None (the op's default)."""
    check_number(None, "scale", scale, optional=True)
