"""rnnlab's own exceptions."""
from __future__ import annotations

from typing import List


class ConvergenceError(RuntimeError):
    """A parallel solve (Newton) did not converge, or met NaN/inf. ``history`` holds the residual
    after each iteration, so the caller can see whether it stalled or diverged."""

    def __init__(self, message: str, history: List[float]):
        super().__init__(f"{message}; residual history: "
                         f"{', '.join(f'{r:.3g}' for r in history) or 'none'}")
        self.history = list(history)
