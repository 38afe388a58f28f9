"""The training loop of the small recipes (``rnnlab train lion``, ``lrcn``): a fixed number of
steps, AdamW's step through ``tools.schedule.optimizer_step`` (clip 1.0), cosine decay from the
peak to ``floor`` of it with no warm-up, and a clear error when the loss stops being finite."""
from __future__ import annotations

import time
from typing import Callable, List, Tuple

import torch

from ..tools.schedule import optimizer_step, warmup_cosine


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, lr: float,
                next_loss: Callable[[], torch.Tensor], what: str,
                floor: float = 0.05) -> Tuple[List[float], float]:
    """``steps`` optimizer steps on ``next_loss()`` (the next batch's loss) -> (every step's
    loss, seconds)."""
    start, losses = time.perf_counter(), []
    model.train()
    for step in range(steps):
        loss = next_loss()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{what}: the loss became {loss.item()}")
        optimizer_step(model, opt, loss, warmup_cosine(lr, step / steps, warmup=0.0, floor=floor))
        losses.append(loss.item())
    return losses, time.perf_counter() - start
