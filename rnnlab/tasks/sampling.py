"""Sampling helpers shared by the task families; chiefly the skeleton of the recall and copy
tasks (``recall.py``, ``copying.py``).

Each of those tasks draws the tokens to remember (``draw``, ``distinct``), writes them and its
marker tokens into a filler sequence, and asks for some of them back at answer positions, the
only scored ones. ``compose`` does the writing and builds the targets and the mask from
``(positions, tokens)`` pairs; positions are ``(B, k)`` long tensors, ``span`` gives the same run
of positions in every row. The random draws stay in each task's ``_sample``, in its own order,
so a seed's data does not depend on how the skeleton writes it.

``SymbolTask`` is the shared base of the tasks whose alphabet is ``symbols`` data symbols plus
two special tokens and whose answers are data symbols (copy, reverse, selective copy).
``last_position`` is the mask of the tasks with one answer, after the last token (listops,
mod_arith, parity).
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional, Tuple, Union

import torch

from .base import Sample, Task, check_int

Write = Tuple[torch.Tensor, Union[torch.Tensor, int]]  # (positions (B, k), tokens (B, k) or one)


def draw(batch: int, n: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch, n)`` long, uniform in ``[low, high)``, repeats allowed."""
    return torch.randint(low, high, (batch, n), generator=gen)


def distinct(batch: int, n: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """``(batch, n)`` long: per row ``n`` distinct values from ``[low, high)``, in random order."""
    return torch.rand(batch, high - low, generator=gen).argsort(dim=1)[:, :n] + low


def span(batch: int, start: int, stop: int, step: int = 1) -> torch.Tensor:
    """``(batch, k)`` long: the positions ``start, start + step, ... < stop`` in every row."""
    return torch.arange(start, stop, step).expand(batch, -1)


def compose(filler: torch.Tensor, writes: Iterable[Write], where: torch.Tensor,
            answers: torch.Tensor) -> Sample:
    """``(inputs, targets, mask)`` of a recall or copy task.

    ``filler (B, T)`` long becomes the inputs (in place): each ``(positions (B, k), tokens)`` of
    ``writes`` is written into it in turn, ``tokens`` a ``(B, k)`` tensor or one token for all.
    The targets hold ``answers (B, k)`` at ``where (B, k)`` and 0 elsewhere; the mask scores
    ``where`` only.
    """
    for positions, tokens in writes:
        filler.scatter_(1, positions, tokens)
    targets = torch.zeros_like(filler).scatter_(1, where, answers)  # (B, T)
    mask = torch.zeros(filler.shape, dtype=torch.bool).scatter_(1, where, True)  # (B, T)
    return filler, targets, mask


def feed_back(inputs: torch.Tensor, answer: torch.Tensor, first: int,
              scored: Optional[torch.Tensor] = None) -> Sample:
    """Teacher forcing: ``answer (B, n)`` is predicted at steps ``first .. first + n - 1``, and
    the step after each prediction reads the symbol it predicted: ``inputs[:, first + 1:first +
    n + 1] = answer`` (in place; the last one where it fits). ``first`` is the step that
    predicts the first symbol (a delimiter's). The mask scores those n steps, or where
    ``scored (B, n)`` bool says."""
    B, T = inputs.shape
    n = answer.shape[1]
    inputs[:, first + 1:first + n + 1] = answer[:, :T - first - 1]
    targets = torch.zeros_like(inputs)
    targets[:, first:first + n] = answer
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, first:first + n] = True if scored is None else scored
    return inputs, targets, mask


def last_position(batch: int, length: int) -> torch.Tensor:
    """``(batch, length)`` bool mask that scores the last position only."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, -1] = True
    return mask


def blank(batch: int, length: int) -> torch.Tensor:
    """``(batch, length)`` long zeros: the filler of the tasks whose token 0 is the blank."""
    return torch.zeros(batch, length, dtype=torch.long)


def set_min_length(task: Task, value: int) -> None:
    """Give ``task`` its own ``min_length`` where the shortest valid length depends on a field
    (the class attribute holds the one of the default fields)."""
    object.__setattr__(task, "min_length", value)  # frozen dataclass: an instance override


def show(tokens: Iterable[int], names: Mapping[int, str]) -> str:
    """Tokens as text, the special ones by their ``names`` (``{0: "."}``)."""
    return " ".join(names.get(t, str(t)) for t in tokens)


@dataclasses.dataclass(frozen=True)
class SymbolTask(Task):
    """Base of the tasks over ``symbols`` data symbols plus two special tokens (a blank and a
    marker or delimiter) whose answers are always data symbols. A subclass declares the
    ``symbols`` field itself (so its own fields keep their order)."""

    def __post_init__(self):
        check_int(self.name, "symbols", self.symbols, 1)

    @property
    def vocab_size(self) -> int:
        return self.symbols + 2

    @property
    def chance(self) -> float:
        # Not 1 / n_outputs: an answer is one of the data symbols, never a special token.
        return 1 / self.symbols
