"""JRT-Prompt ("Just read twice", Arora et al. 2024): repeat the context before the question.

A recurrent model reads its context once, in order, and must decide what to keep in a
fixed-size state before it knows what will be asked. Reading the context twice lets the second
pass keep what the first pass showed to matter (in set disjointness: which set is the small
one). The transform is pure data, so it works for any model:

    x, y, m = task.sample(B, L, gen)                       # (B, L)
    x, y, m = repeat_context(x, context_len(task, L), y, m)   # (B, L + context)

The targets and mask follow their positions: the copies added in front are never scored, so
the loss and the metric see exactly the positions they saw before (shifted right).

``RepeatedContext(task, times)`` wraps a task so that ``sample`` returns the repeated form and
everything else (vocabulary, loss, metric) is the task's own; ``times=1`` is the task itself,
the control arm of a with/without comparison.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def _check_int(arg: str, value, low: int, high: Optional[int] = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low
    if not ok or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"repeat_context: {arg} must be an int {rng}, got {value!r}")


def repeat_context(inputs: torch.Tensor, context_len: int, targets: Optional[torch.Tensor] = None,
                   mask: Optional[torch.Tensor] = None, times: int = 2):
    """The first ``context_len`` steps of every sequence repeated ``times`` times, then the rest.

    Args:
        inputs: ``(B, T)`` tokens or ``(B, T, C)`` reals; steps ``[0, context_len)`` are the
            context, steps ``[context_len, T)`` the question (queries).
        context_len: ``N`` in ``[0, T]`` (0 or ``times=1`` leaves the sequences unchanged).
        targets, mask: optional ``(B, T, ...)`` / ``(B, T)``; each gets ``(times - 1) * N``
            leading steps, zero targets and ``False`` mask, so every scored position keeps its
            target and nothing in the added copies is scored.
        times: how many times the context is read (2 = JRT-Prompt).

    Returns ``inputs`` of ``(B, T + (times - 1) * N, ...)``, or the tuple ``(inputs, targets,
    mask)`` (entries given as None stay None) when ``targets`` or ``mask`` is given.
    """
    if not torch.is_tensor(inputs) or inputs.dim() < 2:
        got = tuple(inputs.shape) if torch.is_tensor(inputs) else type(inputs).__name__
        raise ValueError(f"repeat_context: inputs must be a tensor (B, T, ...), got {got}")
    B, T = inputs.shape[:2]
    _check_int("context_len", context_len, 0, T)
    _check_int("times", times, 1)
    for arg, t in (("targets", targets), ("mask", mask)):
        if t is not None and (not torch.is_tensor(t) or tuple(t.shape[:2]) != (B, T)):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"repeat_context: {arg} must be a tensor ({B}, {T}, ...) like "
                             f"inputs, got {got}")
    context = inputs[:, :context_len]  # (B, N, ...)
    out = torch.cat([context] * (times - 1) + [inputs], dim=1)  # (B, T + (times-1) N, ...)
    if targets is None and mask is None:
        return out
    extra = (times - 1) * context_len

    def shift(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if t is None:
            return None
        lead = t.new_zeros((B, extra) + tuple(t.shape[2:]))  # zeros / False
        return torch.cat([lead, t], dim=1)  # (B, T + extra, ...)

    return out, shift(targets), shift(mask)


def context_len(task, length: int) -> int:
    """The context of a ``length``-step sample of ``task``: for ``mqar``, the key-value prefix
    (``2 * pairs``); for ``set_disjointness``, everything before the final separator (``1 A 2
    B``, ``length - 1``)."""
    name = getattr(task, "name", None)
    if name == "mqar":
        return 2 * task.pairs
    if name == "set_disjointness":
        return length - 1
    raise ValueError(f"context_len: task must be 'mqar' or 'set_disjointness' (tasks whose "
                     f"context precedes the question), got {name!r}")


def original_length(task, repeated: int, times: int) -> int:
    """The length L of the sample whose context read ``times`` times gives ``repeated`` steps:
    ``repeated = L + (times - 1) * context_len(task, L)``."""
    if task.name == "set_disjointness":  # context L - 1: repeated = times (L - 1) + 1
        return (repeated - 1) // times + 1
    return repeated - (times - 1) * context_len(task, task.min_length)  # mqar: a fixed context


class RepeatedContext:
    """``task`` with its context read ``times`` times: ``sample(batch, length, generator)``
    returns ``repeat_context`` of the task's sample (``length`` is the original length; the
    sequences are ``length + (times - 1) * context_len(task, length)`` long). Every other
    attribute (``vocab_size``, ``loss``, ``score``, ``train_lengths``, ...) is the task's."""

    def __init__(self, task, times: int = 2):
        context_len(task, task.min_length)  # refuses a task without a context/question split
        _check_int("times", times, 1)
        self.task, self.times = task, times

    def __getattr__(self, name: str):
        if name in ("task", "times"):  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.task, name)

    def sample(self, batch: int, length: int,
               generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, mask = self.task.sample(batch, length, generator)
        return repeat_context(x, context_len(self.task, length), y, mask, self.times)

    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the task's own context prefix and every copy of the context before it (a
        prefix-mode model reads all the copies both ways, not the first one alone)."""
        T = inputs.shape[1]
        length = original_length(self.task, T, self.times)
        extra = (self.times - 1) * context_len(self.task, length)
        return self.task.prefix(inputs[:, extra:]) + extra

    def describe(self) -> str:
        return f"{self.task.describe()} read {self.times}x"
