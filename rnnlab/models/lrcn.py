"""LRCN (Donahue et al. 2015): a CNN reads each frame, a recurrent cell reads the frame features.

``TimeDistributed(module)`` applies a per-frame module to every frame of a clip by folding time
into the batch. ``LRCN`` = ``TimeDistributed(FrameEncoder)`` → ``rnnlab.Recurrent(cell)`` (any
registered cell, any engine) → a linear head, pooled over time: ``"last"`` (the state after the
last frame decides) or ``"mean"`` (the per-step logits averaged, the paper's choice for
activity recognition; the head is linear, so this equals the head on the mean output).
``per_step`` gives the logits after every frame (per-step decoding), and ``step(frame, state)``
streams a clip frame by frame with the same results as one run.

``FrameAverage`` is the order-blind baseline: the same encoder, frame features averaged over
time, the same head, no recurrence.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..checks import check_choice, check_int
from ..nn.recurrent import Recurrent

POOLINGS = ("last", "mean")


class TimeDistributed(nn.Module):
    """``module`` on every time step: ``(B, T, *rest) -> (B, T, *module_out)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"TimeDistributed: x must be (B, T, ...) with at least 3 dims, "
                             f"got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        y = self.module(x.reshape(b * t, *x.shape[2:]))  # (B*T, *rest): frames as one batch
        return y.reshape(b, t, *y.shape[1:])  # (B, T, *out)


class FrameEncoder(nn.Module):
    """A small CNN, ``(N, S, S) -> (N, d)``: two conv + pool stages then a linear map. The map
    reads the flattened feature grid, so where the digit is stays in the features (the
    direction task needs it)."""

    def __init__(self, canvas: int, d: int, channels: int = 16):
        super().__init__()
        check_int("FrameEncoder", "canvas", canvas, 4)
        check_int("FrameEncoder", "d", d, 1)
        check_int("FrameEncoder", "channels", channels, 1)
        self.canvas = canvas
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        side = canvas // 4
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(2 * channels * side * side, d),
                                  nn.ReLU())

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 3 or frames.shape[1:] != (self.canvas, self.canvas):
            raise ValueError(f"FrameEncoder: frames must be (N, {self.canvas}, {self.canvas}), "
                             f"got shape {tuple(frames.shape)}")
        return self.proj(self.conv(frames[:, None]))  # (N, 1, S, S) -> (N, d)


def _check_clips(owner: str, clips: torch.Tensor, canvas: int) -> None:
    if not isinstance(clips, torch.Tensor) or clips.dim() != 4 \
            or clips.shape[2:] != (canvas, canvas):
        shape = tuple(clips.shape) if isinstance(clips, torch.Tensor) else type(clips).__name__
        raise ValueError(f"{owner}: clips must be (B, T, {canvas}, {canvas}), got {shape}")


class LRCN(nn.Module):
    """``logits = model(clips)``: ``clips (B, T, S, S) -> (B, n_classes)``.

    Args:
        cell: registered cell name (``rnnlab.cells.available()``), e.g. ``"lstm"``, ``"mamba"``.
        canvas: frame side ``S``; n_classes: outputs; d_model: frame-feature and state width.
        pooling: ``"last"`` or ``"mean"`` (over the per-step logits).
        engine: the ``Recurrent`` engine; ``cell_kwargs`` go to the cell.
    """

    def __init__(self, cell: str, canvas: int, n_classes: int, d_model: int = 32,
                 pooling: str = "last", channels: int = 16, engine: str = "auto",
                 **cell_kwargs):
        super().__init__()
        check_int("LRCN", "n_classes", n_classes, 1)
        check_choice("LRCN", "pooling", pooling, POOLINGS)
        self.canvas, self.pooling = canvas, pooling
        self.encoder = TimeDistributed(FrameEncoder(canvas, d_model, channels))
        self.rnn = Recurrent(cell, engine, input_size=d_model, hidden_size=d_model,
                             **cell_kwargs)
        self.head = nn.Linear(self.rnn.output_size, n_classes)

    def per_step(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits after every frame: ``(B, T, n_classes)``."""
        _check_clips("LRCN", clips, self.canvas)
        y, _ = self.rnn(self.encoder(clips))  # (B, T, d) -> (B, T, H)
        return self.head(y)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        logits = self.per_step(clips)  # (B, T, C)
        return logits[:, -1] if self.pooling == "last" else logits.mean(1)

    def initial_state(self, batch: int, device=None):
        return self.rnn.initial_state(batch, device)

    def step(self, frame: torch.Tensor, state) -> Tuple[torch.Tensor, object]:
        """One frame ``(B, S, S)``: ``(logits (B, n_classes), state)``, the per-step logits."""
        if not isinstance(frame, torch.Tensor) or frame.dim() != 3 \
                or frame.shape[1:] != (self.canvas, self.canvas):
            shape = tuple(frame.shape) if isinstance(frame, torch.Tensor) else type(frame).__name__
            raise ValueError(f"LRCN.step: frame must be (B, {self.canvas}, {self.canvas}), "
                             f"got {shape}")
        y, state = self.rnn.step(self.encoder(frame[:, None]), state)  # (B, 1, S, S) -> (B, 1, H)
        return self.head(y[:, 0]), state


class FrameAverage(nn.Module):
    """The baseline: ``clips (B, T, S, S) -> (B, n_classes)`` from the frame features averaged
    over time (blind to frame order)."""

    def __init__(self, canvas: int, n_classes: int, d_model: int = 32, channels: int = 16):
        super().__init__()
        check_int("FrameAverage", "n_classes", n_classes, 1)
        self.canvas = canvas
        self.encoder = TimeDistributed(FrameEncoder(canvas, d_model, channels))
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        _check_clips("FrameAverage", clips, self.canvas)
        return self.head(self.encoder(clips).mean(1))  # (B, T, d) -> (B, d) -> (B, C)
