"""Running parity: read bits, predict after each one whether the count of ones so far is odd.

The simplest state-tracking task: a 2-state automaton. Nonlinear RNNs (GRU, LSTM) learn it and
keep it at lengths far beyond training; linear RNNs with non-negative eigenvalues cannot.
"""
from __future__ import annotations

from typing import Tuple

import torch

VOCAB = 2  # input tokens: bits 0 and 1
CLASSES = 2  # targets: even, odd


def sample(batch: int, length: int, generator: torch.Generator
           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(inputs, targets, mask)``, each ``(B, T)``: bits, running parity, all positions scored."""
    if batch < 1 or length < 1:
        raise ValueError(f"parity.sample: batch and length must be >= 1, got {batch}, {length}")
    bits = torch.randint(0, 2, (batch, length), generator=generator)
    parity = bits.cumsum(dim=1) % 2
    return bits, parity, torch.ones(batch, length, dtype=torch.bool)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of scored positions where ``argmax(logits)`` equals the target."""
    hit = (logits.argmax(-1) == targets) & mask
    return hit.sum().item() / mask.sum().item()
