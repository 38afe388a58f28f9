"""DLR atomic tasks 1 (Shift) and 10 (ContextShift): real-valued regression scored by R².

From Gupta, Mehta & Berant, "Simplifying and Understanding State Space Models with Diagonal
Linear RNNs" (arXiv 2212.00768, ``src/dataloaders/sequence1d.py``). Inputs ``(B, T, 3)``: a
signal ``x`` (randn, scaled so ``max |x| = 1`` per sequence) and the positional channels
``cos(2πt/L)``, ``sin(2πt/L)``. Every position is scored (the reference reads the model's last
``l_out`` positions, here ``l_out = L``). Shift needs only fixed kernels; ContextShift needs a
delay read from the input, which the paper finds DLR cannot learn.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .base import Sample, Task, check_int, register


def _signal(batch: int, length: int, gen: torch.Generator, skip: int = 0) -> torch.Tensor:
    """``(B, T)`` randn scaled so each sequence's largest magnitude past ``skip`` steps is 1."""
    x = torch.randn(batch, length, generator=gen)
    return x / x[:, skip:].abs().amax(dim=1, keepdim=True)


def _with_positions(x: torch.Tensor) -> torch.Tensor:
    """``x (B, T)`` -> ``(B, T, 3)``: the signal, cos and sin of ``2πt/L``."""
    batch, length = x.shape
    angle = 2 * math.pi * torch.arange(length, dtype=x.dtype) / length  # (T,)
    pos = torch.stack([angle.cos(), angle.sin()], dim=1).expand(batch, length, 2)
    return torch.cat([x.unsqueeze(2), pos], dim=2)  # (B, T, 3)


def _shifted(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``y[b, t, h] = x[b, t - shift[b, h]]``, zero where ``t < shift``. ``x (B, T)``,
    ``shift (B, H)`` long, returns ``(B, T, H)``."""
    length = x.shape[1]
    src = torch.arange(length).view(1, length, 1) - shift.unsqueeze(1)  # (B, T, H)
    y = x.unsqueeze(2).expand(-1, -1, shift.shape[1]).gather(1, src.clamp(min=0))
    return torch.where(src >= 0, y, torch.zeros_like(y))


def _table(inputs, targets, rows: int = 12) -> str:
    lines = ["   t       x       y"]
    for t in range(min(rows, len(inputs))):
        ys = " ".join(f"{v:+.3f}" for v in targets[t].tolist())
        lines.append(f"{t:4d}  {float(inputs[t, 0]):+.3f}  {ys}")
    if len(inputs) > rows:
        lines.append(f"   ... ({len(inputs)} steps)")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class _DLRTask(Task):
    """Base of the DLR tasks: the signal and positional channels in, scored by R² everywhere."""

    kind = "real"
    metric = "r2"
    train_lengths = (64, 64)
    # Tested at the train length only: the task is defined relative to L (Shift's delays are
    # h·L/H, ContextShift's positional channels have period L), so a longer test is another
    # task, and the paper trains and tests each L on its own.
    test_lengths = (64,)

    @property
    def vocab_size(self) -> int:
        return 3  # the signal, cos and sin channels


@register
@dataclasses.dataclass(frozen=True)
class DLRShift(_DLRTask):
    """DLR task 1, Shift: ``outputs`` channels ``y_h(t) = x(t - s_h)`` with ``s_h = h·L // H``
    for ``h = 0..H-1`` (zeros before the start). The reference uses ``H = 8``."""

    outputs: int = 4  # H shifted copies, delays 0, L/H, ..., (H-1)L/H

    name = "dlr_shift"

    def __post_init__(self):
        check_int(self.name, "outputs", self.outputs, 1)

    @property
    def n_outputs(self) -> int:
        return self.outputs

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        x = _signal(batch, length, gen)  # (B, T)
        shift = (torch.arange(self.outputs) * length // self.outputs).expand(batch, -1)  # (B, H)
        targets = _shifted(x, shift)  # (B, T, H)
        mask = torch.ones(batch, length, dtype=torch.bool)
        return _with_positions(x), targets, mask

    def decode(self, inputs, targets, mask) -> str:
        length = len(inputs)
        shifts = [h * length // self.outputs for h in range(self.outputs)]
        return f"shifts: {shifts}\n" + _table(inputs, targets)


@register
@dataclasses.dataclass(frozen=True)
class DLRContextShift(_DLRTask):
    """DLR task 10, ContextShift: a shift ``s ~ U{0..L-3}`` per sequence is written into the
    signal's first two steps as ``x_0 = cos(2πs/L)``, ``x_1 = sin(2πs/L)`` (the rest is scaled
    to ``max |x| = 1`` on its own, so the bound holds); the target is the
    signal delayed by it, ``y_t = x_{t-s}`` (zeros before the start; the two code steps are part
    of the signal and shift like the rest)."""

    name = "dlr_context_shift"
    min_length = 3

    @property
    def n_outputs(self) -> int:
        return 1

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        x = _signal(batch, length, gen, skip=2)  # (B, T); steps 0, 1 hold the code
        shift = torch.randint(0, length - 2, (batch, 1), generator=gen)  # (B, 1)
        angle = 2 * math.pi * shift[:, 0].to(x.dtype) / length
        x[:, 0], x[:, 1] = angle.cos(), angle.sin()
        mask = torch.ones(batch, length, dtype=torch.bool)
        return _with_positions(x), _shifted(x, shift), mask

    def decode(self, inputs, targets, mask) -> str:
        length = len(inputs)
        angle = math.atan2(float(inputs[1, 0]), float(inputs[0, 0])) % (2 * math.pi)
        shift = round(angle * length / (2 * math.pi)) % length
        return f"shift: {shift}\n" + _table(inputs, targets)
