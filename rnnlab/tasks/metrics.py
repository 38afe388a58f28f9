"""Task metrics on model outputs ``(B, T, O)``, targets and a scoring mask ``(B, T)``.

- ``accuracy``: argmax hits, averaged within each example, then over examples (Zoology's MQAR
  convention; equal to the plain mean when every example scores the same number of positions).
- ``scaled_accuracy``: ``(accuracy - chance) / (1 - chance)``: 1 perfect, 0 chance (Grazzi et al.).
- ``sequence_accuracy``: fraction of examples whose every scored position is right.
- ``r2``: ``1 - MSE / Var(y)`` over the scored positions (DLR's real-valued tasks).
"""
from __future__ import annotations

import torch

METRICS = ("accuracy", "scaled_accuracy", "sequence_accuracy", "r2")


def _scored_examples(mask: torch.Tensor) -> torch.Tensor:
    keep = mask.any(dim=1)  # (B,)
    if not bool(keep.any()):
        raise ValueError("metric: mask scores no position")
    return keep


def accuracy(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    keep = _scored_examples(mask)
    hit = ((outputs.argmax(-1) == targets) & mask).sum(1).double()  # (B,)
    per_example = hit[keep] / mask[keep].sum(1)
    return per_example.mean().item()


def sequence_accuracy(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    keep = _scored_examples(mask)
    wrong = ((outputs.argmax(-1) != targets) & mask).any(dim=1)  # (B,)
    return (~wrong[keep]).double().mean().item()


def r2(outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    y = targets[mask].double()  # (n, O)
    pred = outputs[mask].double()
    var = (y - y.mean(0)).pow(2).mean()
    mse = (pred - y).pow(2).mean()
    if var == 0:
        return 1.0 if mse == 0 else 0.0
    return (1 - mse / var).item()


def compute(name: str, outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
            chance: float = 0.0) -> float:
    """The metric ``name`` (one of ``METRICS``)."""
    if outputs.shape[:2] != targets.shape[:2] or mask.shape != targets.shape[:2]:
        raise ValueError(f"metric {name}: outputs {tuple(outputs.shape)}, targets "
                         f"{tuple(targets.shape)} and mask {tuple(mask.shape)} must share (B, T)")
    if name == "accuracy":
        return accuracy(outputs, targets, mask)
    if name == "scaled_accuracy":
        return (accuracy(outputs, targets, mask) - chance) / (1 - chance)
    if name == "sequence_accuracy":
        return sequence_accuracy(outputs, targets, mask)
    if name == "r2":
        return r2(outputs, targets, mask)
    raise ValueError(f"metric: name must be one of {METRICS}, got {name!r}")
