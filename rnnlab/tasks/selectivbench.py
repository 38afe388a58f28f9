"""SelectivBench: track the hidden state of a random automaton through ambiguous symbols, gaps,
noise and distractors (Bouhadjar et al., arXiv 2601.12598; symseqbench/selectivbench).

The grammar is a random probabilistic automaton. Symbol 0 is the end ``#``; each of ``letters``
letters has ``instances`` hidden instances (states). From every hidden state and for every
letter, one random instance of that letter becomes a successor with probability ``edge_prob``,
and ``#`` with probability ``edge_prob / instances`` (so strings are long); the next state is
uniform over the successors. ``#`` leads to ``starts`` start states (distinct letters, so the
first symbol of a string fixes its state). A grammar is redrawn until every state reaches ``#``.
Since a state has at most one successor per symbol, the previous state and the current symbol
fix the current state: online state tracking from ambiguous observations.

Deviations from the reference (token inputs, so the base class's cross-entropy applies):
- Frames are token ids, not one-hot vectors: a symbol frame is its symbol id, a gap frame is
  ``BLANK``. Additive noise has no token analogue; ``noise`` instead replaces each gap frame by a
  ``NOISE`` token with that probability (symbol frames stay clean, as the reference's one-hot
  argmax does under its U(0, 0.2) noise). It only acts when there are gap frames.
- Gap frame counts are drawn directly, ``U{gap_min..gap_max}`` per element (the reference's
  ``ceil(d / 0.1)``). With probability ``distractors`` an element's gap frames show random
  symbols forbidden after its state (the reference's ``grammar_gap``, without the 50-element
  clean warm-up).
- The metric is per-frame accuracy over the scored frames instead of the argmax of the softmax
  summed over each element's window. ``supervise="all"`` scores every frame (the reference's
  loss); ``"symbols"`` only symbol frames.
- The stream is the random walk itself (strings joined by ``#``), cut at ``length`` frames.

Classes: 0 = ``#``, ``1 + a * instances + i`` = instance ``i`` of letter ``a``. Tokens: 0 = ``#``,
``1 + a`` = letter ``a``, ``letters + 1`` = BLANK, ``letters + 2`` = NOISE.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import torch

from ..checks import check_number
from .base import Sample, Task, check_choice, check_int, register


class Grammar(NamedTuple):
    """A drawn automaton over ``S = 1 + letters * instances`` states (0 = ``#``)."""

    adj: torch.Tensor  # (S, S) bool: adj[s, t] when t may follow s
    symbol: torch.Tensor  # (S,) long: the symbol a state emits
    succ: torch.Tensor  # (S, letters + 1) long: successors of each state first, then padding
    degree: torch.Tensor  # (S,) long: number of successors
    starts: torch.Tensor  # (starts,) long: the states that follow ``#``
    forbidden: torch.Tensor  # (S, letters + 1) long: symbols that cannot follow, then padding
    n_forbidden: torch.Tensor  # (S,) long


def _reaches_end(adj: torch.Tensor) -> torch.Tensor:
    """``(S,)`` bool: which states have a path to state 0 (``#``)."""
    reach = torch.zeros(adj.shape[0], dtype=torch.bool)
    reach[0] = True
    while True:
        grown = reach | (adj & reach).any(dim=1)
        if bool((grown == reach).all()):
            return reach
        reach = grown


def _draw_edges(letters: int, instances: int, starts: int, edge_prob: float,
                gen: torch.Generator):
    """One candidate automaton: ``(adj (S, S) bool, starts (starts,) long)``."""
    n = 1 + letters * instances
    first = 1 + torch.arange(letters) * instances  # (A,) state of instance 0 of each letter
    pick = first + torch.randint(0, instances, (n, letters), generator=gen)  # (S, A)
    keep = torch.rand(n, letters, generator=gen) < edge_prob
    end = torch.rand(n, generator=gen) < edge_prob / instances
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj.scatter_(1, pick, keep)
    adj[:, 0] = end
    start_letters = torch.randperm(letters, generator=gen)[:starts]
    start = first[start_letters] + torch.randint(0, instances, (starts,), generator=gen)
    adj[0] = False
    adj[0, start] = True
    return adj, start


def _padded_rows(flags: torch.Tensor):
    """Indices of the True entries of each row first (padded), and their count per row."""
    order = flags.to(torch.int8).argsort(dim=1, descending=True, stable=True)
    return order, flags.sum(dim=1)


@functools.lru_cache(maxsize=32)
def build_grammar(letters: int, instances: int, starts: int, edge_prob: float,
                  seed: int) -> Grammar:
    """The automaton drawn from ``seed`` (redrawn until every state reaches ``#``). Cached:
    the returned tensors are shared, never modify them."""
    gen = torch.Generator().manual_seed(seed)
    symbol = torch.cat([torch.zeros(1, dtype=torch.long),
                        torch.arange(1, letters + 1).repeat_interleave(instances)])  # (S,)
    for _ in range(10000):
        adj, start = _draw_edges(letters, instances, starts, edge_prob, gen)
        if bool(_reaches_end(adj).all()):
            break
    else:
        raise ValueError(f"selectivbench: no grammar with letters={letters}, "
                         f"instances={instances}, edge_prob={edge_prob} in 10000 draws where "
                         f"every state reaches '#'; raise edge_prob")
    succ, degree = _padded_rows(adj)
    emits = torch.nn.functional.one_hot(symbol, letters + 1).to(torch.float32)  # (S, A+1)
    allowed = (adj.to(torch.float32) @ emits) > 0  # (S, A+1): symbols that may follow
    forbidden, n_forbidden = _padded_rows(~allowed)
    return Grammar(adj, symbol, succ[:, :letters + 1], degree, start,
                   forbidden[:, :letters + 1], n_forbidden)


def _letter(a: int, letters: int) -> str:
    return chr(ord("a") + a) if letters <= 26 else f"L{a}"


@register
@dataclasses.dataclass(frozen=True)
class SelectivBench(Task):
    """Online hidden-state tracking on a random automaton fixed by ``grammar_seed``; the target of
    every frame is the hidden state of the current element (see the module docstring)."""

    letters: int = 8  # A: letters of the alphabet (symbols are '#' and the letters)
    instances: int = 8  # D: hidden instances (states) per letter
    grammar_seed: int = 0  # seed of the automaton; samples come from the sample generator
    starts: int = 4  # start states (distinct letters) that follow '#'; at most `letters`
    edge_prob: float = 0.4  # chance of an edge per (state, letter); '#' gets edge_prob/D
    gap_min: int = 0  # fewest gap frames after each symbol frame
    gap_max: int = 0  # most gap frames after each symbol frame (count ~ U{gap_min..gap_max})
    noise: float = 0.0  # chance that a gap frame shows NOISE instead of BLANK
    distractors: float = 0.0  # chance that an element's gap frames show forbidden symbols
    supervise: str = "all"  # "all" (every frame) or "symbols" (symbol frames only)

    name = "selectivbench"
    train_lengths = (64, 64)
    test_lengths = (64, 128, 256)

    def __post_init__(self):
        check_int(self.name, "letters", self.letters, 1)
        check_int(self.name, "instances", self.instances, 1)
        check_int(self.name, "grammar_seed", self.grammar_seed, 0)
        check_int(self.name, "starts", self.starts, 1)
        check_int(self.name, "gap_min", self.gap_min, 0)
        check_int(self.name, "gap_max", self.gap_max, self.gap_min)
        check_number(self.name, "edge_prob", self.edge_prob, 0, 1, low_open=True)
        check_number(self.name, "noise", self.noise, 0, 1)
        check_number(self.name, "distractors", self.distractors, 0, 1)
        check_choice(self.name, "supervise", self.supervise, ("all", "symbols"))

    @property
    def vocab_size(self) -> int:
        return self.letters + 3

    @property
    def n_outputs(self) -> int:
        return 1 + self.letters * self.instances

    @property
    def blank(self) -> int:
        return self.letters + 1

    @property
    def noise_token(self) -> int:
        return self.letters + 2

    def grammar(self) -> Grammar:
        """This task's automaton (drawn once per parameter set, then cached)."""
        starts = min(self.starts, self.letters)
        return build_grammar(self.letters, self.instances, starts, float(self.edge_prob),
                             self.grammar_seed)

    def _walk(self, batch: int, n: int, gen: torch.Generator) -> torch.Tensor:
        """``(B, n)`` long: states of a random walk that starts at a start state."""
        g = self.grammar()
        first = torch.randint(0, len(g.starts), (batch,), generator=gen)
        u = torch.rand(batch, n, generator=gen)
        states = torch.empty(batch, n, dtype=torch.long)
        states[:, 0] = g.starts[first]
        for e in range(1, n):
            prev = states[:, e - 1]
            deg = g.degree[prev]
            pick = torch.minimum((u[:, e] * deg).long(), deg - 1)
            states[:, e] = g.succ[prev, pick]
        return states

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        g = self.grammar()
        n = -(-length // (1 + self.gap_min))  # elements enough to fill `length` frames
        states = self._walk(batch, n, gen)  # (B, E)
        gaps = torch.randint(self.gap_min, self.gap_max + 1, (batch, n), generator=gen)
        ends = (1 + gaps).cumsum(dim=1)  # (B, E) frame after each element's last frame
        frames = torch.arange(length).expand(batch, length)
        elem = torch.searchsorted(ends, frames.contiguous(), right=True)  # (B, T)
        is_symbol = frames == (ends - 1 - gaps).gather(1, elem)
        targets = states.gather(1, elem)  # (B, T)
        gap = torch.where(torch.rand(batch, length, generator=gen) < self.noise,
                          self.noise_token, self.blank)
        distract = (torch.rand(batch, n, generator=gen) < self.distractors).gather(1, elem)
        n_bad = g.n_forbidden[targets]
        distract &= n_bad > 0
        pick = torch.minimum((torch.rand(batch, length, generator=gen) * n_bad).long(),
                             (n_bad - 1).clamp(min=0))
        gap = torch.where(distract, g.forbidden[targets, pick], gap)
        inputs = torch.where(is_symbol, g.symbol[targets], gap)
        mask = is_symbol if self.supervise == "symbols" else torch.ones_like(is_symbol)
        return inputs, targets, mask

    def decode(self, inputs, targets, mask) -> str:
        names = {0: "#", self.blank: ".", self.noise_token: "~"}
        names.update({1 + a: _letter(a, self.letters) for a in range(self.letters)})
        x = [names[t] for t in inputs.tolist()]
        y = ["#" if s == 0 else _letter((s - 1) // self.instances, self.letters)
             + str((s - 1) % self.instances) for s in targets.tolist()]
        y = [s if bool(m) else "_" for s, m in zip(y, mask)]
        width = max(len(s) for s in x + y) + 1
        return (f"input : {''.join(s.rjust(width) for s in x)}\n"
                f"state : {''.join(s.rjust(width) for s in y)}")
