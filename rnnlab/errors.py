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


class OptionTypeError(TypeError, ValueError):
    """An argument or option of the wrong type (``allow_neg_eigval="false"``): a TypeError, as
    torch.nn raises for a wrongly typed size or flag, and a ValueError, as every rnnlab user error
    is (so ``except ValueError`` and the CLI's one-line errors still catch it)."""


class DirectoryLocked(ValueError):
    """Another process writes the output directory asked for (one writer per directory)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be used. ``corrupt`` is True when the file is damaged or not an
    rnnlab checkpoint of this model (a run may restart from scratch), False when it is intact
    but does not fit the run asked for (e.g. its step is past the step budget)."""

    def __init__(self, message: str, corrupt: bool):
        super().__init__(message)
        self.corrupt = corrupt
