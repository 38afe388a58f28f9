"""Fused sequential head-wise cells (FlashRNN's design): Elman (tanh), GRU, LSTM and sLSTM with the
input projection ``wx = W x + b`` done outside as one matmul and the whole time loop in one kernel
that keeps each head's recurrent weights and the state on chip.

``fused_rnn(cell, wx, R, bias, state, lengths)`` is the op: on CUDA with triton importable the
Triton kernels (``triton_kernels.py``, custom ops ``torch.ops.rnnlab.fused_rnn``), elsewhere the
plain loop ``fused_rnn_reference`` (``reference.py``). ``backend(device)`` says which;
``supported(cell, head_dim)`` says whether the kernels take a cell of that head width.

How an engine calls it (the cell's own ``project`` gives wx; y is the h sequence, which is every
one of these cells' readout)::

    wx = cell.project(x)                                   # (B, T, G·H)
    # torch-style cells (lstm, gru, rnn_tanh): one dense head
    y, state = fused_rnn(name, wx, cell.weight_hh, cell.bias_hh, as_tuple(h0), lengths)
    # slstm: R is (4, heads, d, d) already and its bias is inside project's wx
    y, state = fused_rnn("slstm", wx, cell.weight_hh, None, h0, lengths)

with ``name`` the registered cell name and a state a tuple in the cell's leaf order ((h,), (h, c)
or (h, c, n, m)). The kernels cover the cells' default options only: not LSTM's ``proj_size`` or
``peephole``, not GRU's ``reset_after=False``, not ``rnn_relu``; the engine checks those (see
``engine_supports`` below) and otherwise keeps its own loop.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional, Tuple

import torch

from .reference import CELLS, fused_rnn_reference

USE_TRITON = True  # CUDA takes the kernels where triton imports; False: the reference loop
MAX_HEAD_DIM = 64  # = triton_kernels.MAX_HEAD_DIM (kept here so no triton import is needed)


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(device="cpu") -> str:
    """The path ``fused_rnn`` takes on ``device``: "triton" (CUDA kernels) or "torch" (the
    reference loop)."""
    if torch.device(device).type == "cuda" and USE_TRITON and _triton_importable():
        return "triton"
    return "torch"


def supported(cell: str, head_dim: int) -> bool:
    """Whether the kernels run ``cell`` (a name of ``CELLS``) with heads of ``head_dim``."""
    return cell in CELLS and 1 <= head_dim <= MAX_HEAD_DIM


def engine_supports(cell) -> Optional[str]:
    """The kernels' cell name for an rnnlab cell object they run exactly, or None: lstm without
    projection or peepholes, gru with ``reset_after``, rnn_tanh, slstm; head width within
    ``MAX_HEAD_DIM``."""
    kind = type(cell).__name__
    name, head_dim = None, cell.hidden_size
    if kind == "LSTM" and not cell.proj_size and cell.weight_peep is None:
        name = "lstm"
    elif kind == "GRU" and cell.reset_after:
        name = "gru"
    elif kind == "Elman" and cell.nonlinearity == "tanh":
        name = "rnn_tanh"
    elif kind == "SLSTM":
        name, head_dim = "slstm", cell.head_dim
    return name if name is not None and supported(name, head_dim) else None


def _check(cell, wx, R, bias, state, lengths):
    """Validate shapes; -> R as (G, N, D, D)."""
    if cell not in CELLS:
        raise ValueError(f"fused_rnn: cell must be one of {sorted(CELLS)}, got {cell!r}")
    G, S = CELLS[cell]
    if wx.dim() != 3:
        raise ValueError(f"fused_rnn: wx must be (B, T, G·H), got shape {tuple(wx.shape)}")
    if len(state) != S:
        raise ValueError(f"fused_rnn: {cell} has {S} state leaves, got {len(state)}")
    B, H = wx.shape[0], state[0].shape[-1]
    if wx.shape[-1] != G * H:
        raise ValueError(f"fused_rnn: wx's last dim must be G·H = {G}·{H} = {G * H} for "
                         f"{cell}, got {wx.shape[-1]}")
    for i, s in enumerate(state):
        if tuple(s.shape) != (B, H):
            raise ValueError(f"fused_rnn: state[{i}] must be (B, H) = ({B}, {H}), got "
                             f"{tuple(s.shape)}")
    if R.dim() == 2:  # torch-style weight_hh (G·H, H): one dense head
        if tuple(R.shape) != (G * H, H):
            raise ValueError(f"fused_rnn: a 2-d R must be (G·H, H) = ({G * H}, {H}), got "
                             f"{tuple(R.shape)}")
        R = R.view(G, 1, H, H)  # (G·H, H) -> (G, 1, H, H)
    if R.dim() != 4 or R.shape[0] != G or R.shape[1] * R.shape[2] != H \
            or R.shape[2] != R.shape[3]:
        raise ValueError(f"fused_rnn: R must be (G, N, D, D) with G = {G} and N·D = H = {H}, "
                         f"got {tuple(R.shape)}")
    if bias is not None and tuple(bias.shape) != (G * H,):
        raise ValueError(f"fused_rnn: bias must be (G·H,) = ({G * H},), got {tuple(bias.shape)}")
    if lengths is not None:
        if tuple(lengths.shape) != (B,) or lengths.dtype.is_floating_point:
            raise ValueError(f"fused_rnn: lengths must be ({B},) integers, got "
                             f"{tuple(lengths.shape)} {lengths.dtype}")
    return R


def fused_rnn(cell: str, wx: torch.Tensor, R: torch.Tensor, bias: Optional[torch.Tensor],
              state: Tuple[torch.Tensor, ...], lengths: Optional[torch.Tensor] = None):
    """Run ``cell`` over time: ``pre_g = wx_g + (R_g h + b_g)`` then the cell's update.

    Args:
        cell: "rnn_tanh", "gru" (gates r, z, n; r multiplies ``R_n h + b_n``), "lstm"
            (i, f, g, o) or "slstm" (i, f, z, o; stabiliser and normaliser as ``cells/slstm``).
        wx: (B, T, G·H) the input part of the pre-activations, gate-major (``cell.project(x)``).
        R: (G, N, D, D) recurrent blocks of N heads (H = N·D), ``pre[g, n, j] += R[g, n, j, k]
            h[n, k]``; or a torch-style ``weight_hh`` (G·H, H), one dense head.
        bias: (G·H,) added to ``R h`` (torch's ``bias_hh``), or None.
        state: the initial state, a tuple of S (B, H) leaves: (h,), (h, c) or (h, c, n, m).
        lengths: (B,) valid steps per sequence, or None; after its end a sequence keeps its
            state and outputs zeros (as rnnlab's sequential engine).
    Returns:
        y (B, T, H) the h of every step, and the final state (a tuple like ``state``), computed
        in fp32 (fp64 on the reference path stays fp64), y in wx's dtype, the state fp32.
    Gradients flow to wx, R, bias and state (the kernels: a fused reverse-time pass).
    """
    R = _check(cell, wx, R, bias, state, lengths)
    B, T = wx.shape[:2]
    if backend(wx.device) != "triton" or wx.dtype == torch.float64 or B == 0:
        y, hT = fused_rnn_reference(cell, wx, R, bias, state, lengths)
        return y.to(wx.dtype), hT
    if not supported(cell, R.shape[-1]):
        raise ValueError(f"fused_rnn: the kernels take heads of at most {MAX_HEAD_DIM} "
                         f"channels (R on chip), got {R.shape[-1]}; call "
                         "fused_rnn_reference or keep the engine's loop")
    return run_kernels(cell, wx, R, bias, state, lengths)


def run_kernels(cell, wx, R, bias, state, lengths=None):
    """The kernels alone (any device where triton runs: CUDA, or CPU under TRITON_INTERPRET=1)
    with ``fused_rnn``'s arguments (checked here too)."""
    from .triton_kernels import triton_forward  # imports triton: only when used
    R = _check(cell, wx, R, bias, state, lengths)
    B, T = wx.shape[:2]
    f32 = torch.float32
    bias = R.new_zeros(wx.shape[-1], dtype=f32) if bias is None else bias.to(f32)
    lengths = (torch.full((B,), T, dtype=torch.int64, device=wx.device) if lengths is None
               else lengths.to(device=wx.device, dtype=torch.int64).clamp(0, T))
    y, hT = triton_forward(cell, wx.to(f32), R.to(f32), bias,
                           tuple(s.to(f32) for s in state), lengths)
    return y.to(wx.dtype), hT
