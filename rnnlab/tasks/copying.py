"""Copying: reproduce a string after a delay (copy-memory) or in reverse order (reverse).

Targets are token ids in the input vocabulary (``n_outputs == vocab_size``); only the output
slots are scored. Tokens: ``0`` = blank, ``1..symbols`` = symbols, ``symbols + 1`` = delimiter.
"""
from __future__ import annotations

import dataclasses

import torch

from .base import Sample, Task, check_int, register


def _show(tokens, blank: int, delim: int) -> str:
    names = {blank: ".", delim: "|"}
    return " ".join(names.get(t, str(t)) for t in tokens)


@register
@dataclasses.dataclass(frozen=True)
class Copy(Task):
    """Copy-memory (Arjovsky, Shah & Bengio, ICML'16).

    ``tokens`` random symbols (uniform over ``symbols``), then blanks, then a delimiter, then
    ``tokens`` blanks during which the model must output the symbols in order. ``length`` is the
    whole sequence (the reference's ``T + 20`` for ``tokens = 10``), so the delay grows with it;
    only the last ``tokens`` positions are scored (the reference also scores the blanks, whose
    target is blank). ``min_length == 2 * tokens + 1``.
    """

    tokens: int = 10  # symbols to remember
    symbols: int = 8  # distinct symbols

    name = "copy"
    train_lengths = (32, 64)
    test_lengths = (64, 128, 256)
    min_length = 21  # 2 * tokens + 1 for the default tokens

    def __post_init__(self):
        check_int(self.name, "tokens", self.tokens, 1)
        check_int(self.name, "symbols", self.symbols, 1)
        object.__setattr__(self, "min_length", 2 * self.tokens + 1)  # instance override

    @property
    def vocab_size(self) -> int:
        return self.symbols + 2

    @property
    def chance(self) -> float:
        return 1 / self.symbols

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        k = self.tokens
        data = torch.randint(1, self.symbols + 1, (batch, k), generator=gen)  # (B, k)
        inputs = torch.zeros(batch, length, dtype=torch.long)
        inputs[:, :k] = data
        inputs[:, length - k - 1] = self.symbols + 1
        targets = torch.zeros(batch, length, dtype=torch.long)
        targets[:, length - k:] = data
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, length - k:] = True
        return inputs, targets, mask

    def decode(self, inputs, targets, mask) -> str:
        out = [str(int(t)) if bool(m) else "." for t, m in zip(targets, mask)]
        return (f"input : {_show(inputs.tolist(), 0, self.symbols + 1)}\n"
                f"output: {' '.join(out)}")


@register
@dataclasses.dataclass(frozen=True)
class Reverse(Task):
    """Reverse a string (the tensor2tensor algorithmic task used by the Universal Transformer).

    A random string of ``n = (length - 1) // 2`` symbols (uniform over ``symbols``; decimal
    digits by default, as in the reference), a delimiter, then ``n`` blank output slots that must
    hold the string reversed. An even ``length`` leaves one trailing blank, unscored. The output
    slots are not teacher-forced (they read blanks); only they are scored.
    """

    symbols: int = 10  # distinct symbols

    name = "reverse"
    train_lengths = (3, 64)
    test_lengths = (64, 128, 256)
    min_length = 3

    def __post_init__(self):
        check_int(self.name, "symbols", self.symbols, 1)

    @property
    def vocab_size(self) -> int:
        return self.symbols + 2

    @property
    def chance(self) -> float:
        return 1 / self.symbols

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        n = (length - 1) // 2
        data = torch.randint(1, self.symbols + 1, (batch, n), generator=gen)  # (B, n)
        inputs = torch.zeros(batch, length, dtype=torch.long)
        inputs[:, :n] = data
        inputs[:, n] = self.symbols + 1
        targets = torch.zeros(batch, length, dtype=torch.long)
        targets[:, n + 1:2 * n + 1] = data.flip(1)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, n + 1:2 * n + 1] = True
        return inputs, targets, mask

    def decode(self, inputs, targets, mask) -> str:
        out = [str(int(t)) if bool(m) else "." for t, m in zip(targets, mask)]
        return (f"input : {_show(inputs.tolist(), 0, self.symbols + 1)}\n"
                f"output: {' '.join(out)}")
