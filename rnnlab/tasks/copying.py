"""Copying: reproduce a string after a delay (copy-memory), at once (identity) or in reverse order
(reverse).

Targets are token ids in the input vocabulary (``n_outputs == vocab_size``); only the output
slots are scored. Tokens: ``0`` = blank, ``1..symbols`` = symbols, ``symbols + 1`` = delimiter.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import torch

from ..checks import check_bool
from .base import Sample, check_int, register
from .sampling import SymbolTask, blank, compose, draw, feed_back, set_min_length, show, span


@dataclasses.dataclass(frozen=True)
class _StringTask(SymbolTask):
    """Base of copy and reverse: a string of data symbols at the start, a delimiter, then output
    slots that must hold the string (``_answer`` of it), the only scored positions."""

    def _layout(self, length: int) -> Tuple[int, int, int]:
        """``(n, delimiter, out)``: the string's length, the delimiter's position and the first
        output slot's, for a sequence of ``length`` steps."""
        raise NotImplementedError

    def _answer(self, data: torch.Tensor) -> torch.Tensor:
        return data

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        n, delimiter, out = self._layout(length)
        data = draw(batch, n, 1, self.symbols + 1, gen)  # (B, n)
        delimit = (span(batch, delimiter, delimiter + 1), self.symbols + 1)
        writes = [(span(batch, 0, n), data), delimit]
        return compose(blank(batch, length), writes, span(batch, out, out + n), self._answer(data))

    def decode(self, inputs, targets, mask) -> str:
        out = [str(int(t)) if bool(m) else "." for t, m in zip(targets, mask)]
        names = {0: ".", self.symbols + 1: "|"}
        return f"input : {show(inputs.tolist(), names)}\noutput: {' '.join(out)}"


@register
@dataclasses.dataclass(frozen=True)
class Copy(_StringTask):
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
        super().__post_init__()
        set_min_length(self, 2 * self.tokens + 1)

    def _layout(self, length: int) -> Tuple[int, int, int]:
        k = self.tokens  # the delimiter just before the last k steps, the output slots
        return k, length - k - 1, length - k


@dataclasses.dataclass(frozen=True)
class _DecimalString(_StringTask):
    """The tensor2tensor algorithmic layout (``algorithmic_identity_decimal40`` and
    ``algorithmic_reverse_decimal40``, the Universal Transformer's copy and reverse): a random
    string of ``n = (length - 1) // 2`` symbols (uniform over ``symbols``; decimal digits by
    default), a delimiter, then ``n`` output steps. Lengths follow the reference: strings of 1
    to 40 symbols in training (``length`` 3..81), of up to 400 in test (``length`` 801).

    ``teacher_forcing=True`` (default, as the reference's decoder and its metrics): the
    delimiter predicts the first answer symbol and each output step reads the answer's
    previous symbol and predicts the next, so a sequence is all right exactly when greedy
    decoding would write it. ``False``: the output steps read blanks and each predicts its own
    symbol, with nothing fed back. Only the ``n`` answer predictions are scored; an even
    ``length`` leaves one trailing step unscored."""

    symbols: int = 10  # distinct symbols
    teacher_forcing: bool = True  # output steps read the answer so far (else blanks)

    train_lengths = (3, 81)
    test_lengths = (81, 201, 401, 801)
    min_length = 3
    extra_metrics = ("sequence_accuracy",)  # the UT paper's char and sequence accuracy

    def __post_init__(self):
        check_bool(self.name, "teacher_forcing", self.teacher_forcing)
        super().__post_init__()

    def _layout(self, length: int) -> Tuple[int, int, int]:
        n = (length - 1) // 2  # the delimiter right after the string, the output slots next
        return n, n, n + 1

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        inputs, targets, mask = super()._sample(batch, length, gen)
        if not self.teacher_forcing:
            return inputs, targets, mask
        n, delimiter, out = self._layout(length)
        return feed_back(inputs, targets[:, out:out + n], delimiter)


@register
@dataclasses.dataclass(frozen=True)
class Identity(_DecimalString):
    """Copy a string (tensor2tensor's ``algorithmic_identity``, the Universal Transformer's
    "copy"): the output slots hold the string in order. Layout and lengths: ``_DecimalString``.
    Not the copy-memory task (``copy``), whose string has a fixed size and a growing delay."""

    name = "identity"


@register
@dataclasses.dataclass(frozen=True)
class Reverse(_DecimalString):
    """Reverse a string (tensor2tensor's ``algorithmic_reverse``, used by the Universal
    Transformer): the output slots hold the string reversed. Layout and lengths:
    ``_DecimalString``."""

    name = "reverse"

    def _answer(self, data: torch.Tensor) -> torch.Tensor:
        return data.flip(1)
