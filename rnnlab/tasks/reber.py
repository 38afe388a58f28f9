"""Reber grammar strings, valid or not: the task of Darji's sparsity study ("Investigating
Sparsity in Recurrent Neural Networks", arXiv 2407.20601), after Reber (1967) and the embedded
form of Hochreiter & Schmidhuber's LSTM paper (1997).

The Reber automaton (each state's two ways out equally likely, as the usual generators draw)::

    0 -B-> 1;  1 -T-> 2, -P-> 3;  2 -S-> 2, -X-> 4;  3 -T-> 3, -V-> 5;
    4 -X-> 3, -S-> 6;  5 -P-> 4, -V-> 6;  6 -E-> end

The embedded grammar wraps a Reber string as ``B T <reber> T E`` or ``B P <reber> P E``: the
second symbol must come back as the second-to-last, a dependency across the whole inner string.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Dict, Hashable, List, Tuple

import torch

from ..checks import check_bool
from .base import Sample, Task, register

SYMBOLS = "BTPSXVE"
PAD = len(SYMBOLS)  # token 7 fills the positions after the string's end
_INNER = {0: "B1", 1: "T2P3", 2: "S2X4", 3: "T3V5", 4: "X3S6", 5: "P4V6", 6: "E7", 7: ""}

Automaton = Dict[Hashable, Dict[str, Hashable]]


def _edges(text: str) -> Dict[str, int]:
    return {text[i]: int(text[i + 1]) for i in range(0, len(text), 2)}


def automaton(embedded: bool = True) -> Tuple[Automaton, Hashable, Hashable]:
    """``(delta, start, accept)``: ``delta[state][symbol] -> state`` (a missing symbol rejects);
    the accepting state has no way out."""
    inner = {s: _edges(t) for s, t in _INNER.items()}
    if not embedded:
        return inner, 0, 7
    delta: Automaton = {"start": {"B": "open"}, "open": {"T": ("T", 0), "P": ("P", 0)}}
    for branch in "TP":
        for s, out in inner.items():
            delta[(branch, s)] = {c: (branch, t) for c, t in out.items()}
        delta[(branch, 7)] = {branch: ("close", branch)}  # the inner string ended: echo branch
        delta[("close", branch)] = {"E": "end"}
    delta["end"] = {}
    return delta, "start", "end"


def accepts(text: str, embedded: bool = True) -> bool:
    """Whether ``text`` (letters of ``SYMBOLS``) is a string of the grammar."""
    delta, state, accept = automaton(embedded)
    for c in text:
        if c not in delta[state]:
            return False
        state = delta[state][c]
    return state == accept


def generate(rng: random.Random, embedded: bool = True, max_length: int = 10 ** 9) -> str:
    """A random string of the grammar no longer than ``max_length`` (a walk from the start,
    each way out equally likely; a walk that grows too long is drawn again)."""
    delta, start, accept = automaton(embedded)
    while True:
        state, out = start, []
        while state != accept and len(out) < max_length:
            c = rng.choice(sorted(delta[state]))
            out.append(c)
            state = delta[state][c]
        if state == accept:
            return "".join(out)


def corrupt(text: str, rng: random.Random, embedded: bool = True) -> str:
    """``text`` with one symbol replaced by a different one of ``SYMBOLS`` so that the result is
    not in the language (checked with the automaton; a change that stays valid is redrawn)."""
    while True:
        i = rng.randrange(len(text))
        c = rng.choice([s for s in SYMBOLS if s != text[i]])
        bad = text[:i] + c + text[i + 1:]
        if not accepts(bad, embedded):
            return bad


@register
@dataclasses.dataclass(frozen=True)
class Reber(Task):
    """Is the string a (embedded) Reber string? One answer, at the string's last symbol.

    Tokens 0..6 are ``B T P S X V E``, token 7 pads after the string's end. Each example is a
    grammar string of at most ``length`` symbols (walks that grow longer are drawn again);
    exactly half of a batch (the extra one valid for an odd batch, in random order) is then
    corrupted in one symbol so that the automaton rejects it. A corrupted string keeps its
    length, so the length says nothing about the class. The target is 1 (valid) or 0 at the
    last symbol, the only scored position; a causal model has read the whole string there.
    """

    embedded: bool = True  # B T <reber> T E / B P <reber> P E; False: the plain grammar

    name = "reber"
    train_lengths = (20, 32)
    test_lengths = (32, 64)
    min_length = 9  # the shortest embedded string, B T B T X S E T E

    def __post_init__(self):
        check_bool(self.name, "embedded", self.embedded)
        if not self.embedded:
            object.__setattr__(self, "min_length", 5)  # B T X S E

    @property
    def vocab_size(self) -> int:
        return len(SYMBOLS) + 1

    @property
    def n_outputs(self) -> int:
        return 2

    def strings(self, batch: int, length: int, gen: torch.Generator) -> Tuple[List[str], List[int]]:
        """``(strings, labels)``: the batch's strings (as letters) and 1 valid / 0 invalid."""
        rng = random.Random(int(torch.randint(0, 2 ** 62, (1,), generator=gen)))
        labels = (torch.randperm(batch, generator=gen) % 2 == 0).long().tolist()
        texts = [generate(rng, self.embedded, length) for _ in range(batch)]
        texts = [t if y else corrupt(t, rng, self.embedded) for t, y in zip(texts, labels)]
        return texts, labels

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        texts, labels = self.strings(batch, length, gen)
        inputs = torch.full((batch, length), PAD, dtype=torch.long)
        targets = torch.zeros(batch, length, dtype=torch.long)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        for b, (text, label) in enumerate(zip(texts, labels)):
            inputs[b, :len(text)] = torch.tensor([SYMBOLS.index(c) for c in text])
            targets[b, len(text) - 1] = label
            mask[b, len(text) - 1] = True
        return inputs, targets, mask

    def decode(self, inputs, targets, mask) -> str:
        text = "".join(SYMBOLS[t] for t in inputs.tolist() if t != PAD)
        label = "valid" if int(targets[mask][0]) else "invalid"
        return f"string: {text}\nlabel : {label}"
