"""Learning-rate schedule and the optimizer step shared by the arena and the trainers.

The learning rate of a step is a function of the step and the step budget only (``lr_at``),
never of the time elapsed: a run stopped and resumed, or run again with the same seed, takes
bit-identical steps. A time budget may stop a run early; it does not bend the schedule."""
from __future__ import annotations

import math

import torch


def warmup_cosine(lr: float, progress: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """``lr`` at ``progress`` in [0, 1]: linear warm-up over the first ``warmup`` fraction, then
    cosine decay to ``floor * lr``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return lr * (progress + 1e-3) / warmup
    rest = (progress - warmup) / max(1e-9, 1 - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * rest)))


def lr_at(lr: float, step: int, steps: int) -> float:
    """The learning rate of step ``step`` (counted from 0) of ``steps``: ``warmup_cosine``."""
    return warmup_cosine(lr, step / steps)


def optimizer_step(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   lr: float, clip: float = 1.0) -> None:
    """Set ``lr``, backpropagate ``loss``, clip the gradient norm to ``clip``, step."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
