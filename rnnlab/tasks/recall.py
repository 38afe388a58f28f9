"""Associative recall and retrieval: MQAR, passkey, set disjointness, selective copying.

Each task hides a few tokens in a sequence and asks for them later, so a recurrent model must
decide what to write into a fixed-size state. Targets are token ids in the input vocabulary
(``n_outputs == vocab_size``); only the answer positions are scored.

Where the shortest valid length depends on a field (``pairs``, ``digits``, ``tokens``), the class
``min_length`` is the one of the default fields and each instance overrides it with its own.
"""
from __future__ import annotations

import dataclasses

import torch

from ..checks import check_bool, check_number
from .base import Sample, Task, check_int, register
from .sampling import SymbolTask, blank, compose, distinct, draw, set_min_length, show, span


@register
@dataclasses.dataclass(frozen=True)
class MQAR(Task):
    """Multi-query associative recall (Zoology, Arora et al. 2023, ``multiquery_ar.py``).

    Keys come from ``[1, V/2)`` and values from ``[V/2, V)``, ``pairs`` distinct of each per
    example. The prefix is ``k1 v1 ... kN vN``; the query region after it (length ``L - 2N``)
    holds each key once, at even offsets ``2g`` whose ``N`` slots ``g`` are distinct and drawn
    with ``p(g) ∝ (g + 1)^(a - 1)``, ``a = 0.01`` (most queries sit near the start of the region).
    Other positions are 0, or uniform random tokens with ``random_filler``. The target at a query
    is the value paired with its key; nothing else is scored.

    ``pairs`` is fixed (not scaled with the length): a length below ``4 * pairs`` (the region
    needs ``pairs`` even slots) is refused, so ``min_length == 4 * pairs``.
    """

    vocab: int = 256  # V: keys from [1, V/2), values from [V/2, V)
    pairs: int = 8  # N key-value pairs per example (all queried)
    alpha: float = 0.01  # power-law exponent a of the query offsets, p ∝ i^(a-1)
    random_filler: bool = False  # non-query positions: 0 (False) or uniform random tokens (True)

    name = "mqar"
    train_lengths = (64, 64)
    test_lengths = (64, 128, 256)
    min_length = 32  # 4 * pairs for the default pairs

    def __post_init__(self):
        check_int(self.name, "vocab", self.vocab, 4)
        check_int(self.name, "pairs", self.pairs, 1, self.vocab // 2 - 1)
        check_number(self.name, "alpha", self.alpha, 0, 1, low_open=True)
        check_bool(self.name, "random_filler", self.random_filler)
        set_min_length(self, 4 * self.pairs)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def chance(self) -> float:
        # Not 1 / n_outputs: an answer is a value, one of the V - V/2 tokens of the upper half.
        return 1 / (self.vocab - self.vocab // 2)

    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the context is the ``2 * pairs`` key-value steps; every query follows it."""
        B = inputs.shape[0]
        return torch.full((B,), 2 * self.pairs, dtype=torch.long, device=inputs.device)

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        n, half = self.pairs, self.vocab // 2
        keys = distinct(batch, n, 1, half, gen)  # (B, N)
        values = distinct(batch, n, half, self.vocab, gen)  # (B, N)
        slots = (length - 2 * n) // 2
        weight = torch.arange(1, slots + 1, dtype=torch.float64) ** (self.alpha - 1)
        g = torch.multinomial(weight.expand(batch, slots), n, replacement=False,
                              generator=gen)  # (B, N)
        where = 2 * n + 2 * g  # (B, N) query positions
        filler = draw(batch, length, 0, self.vocab, gen) if self.random_filler \
            else blank(batch, length)
        pairs = [(span(batch, 0, 2 * n, 2), keys), (span(batch, 1, 2 * n, 2), values)]
        return compose(filler, pairs + [(where, keys)], where, values)

    def decode(self, inputs, targets, mask) -> str:
        x, n = inputs.tolist(), self.pairs
        pairs = " ".join(f"{x[2 * i]}:{x[2 * i + 1]}" for i in range(n))
        queries = " ".join(f"@{t}:{x[t]}->{int(targets[t])}"
                           for t in range(len(x)) if bool(mask[t]))
        return f"pairs  : {pairs}\nqueries: {queries}\ninput  : {x}"


@register
@dataclasses.dataclass(frozen=True)
class Passkey(Task):
    """Passkey retrieval on a random-token haystack (after Stuffed Mamba, Chen et al. 2024).

    The text haystack of the reference becomes uniform random filler tokens (no digits). A marker
    token followed by a ``digits``-digit passkey sits at a uniformly random depth; the sequence
    ends with a query marker and the passkey fed back one digit at a time (teacher forcing):
    ``... QUERY d1 ... d(k-1)``, whose ``k`` last positions must predict ``d1 ... dk``. Only
    those are scored, by ``sequence_accuracy``: with teacher forcing, all ``k`` right is exactly
    the reference's greedy exact match. ``min_length == 2 * digits + 1``.

    Tokens: digits ``0..9``, ``10`` = passkey marker, ``11`` = query, ``12..`` = filler.
    """

    digits: int = 5  # k: passkey length in digits
    filler: int = 16  # number of distinct filler tokens in the haystack

    name = "passkey"
    metric = "sequence_accuracy"
    train_lengths = (32, 64)
    test_lengths = (64, 128, 256)
    min_length = 11  # 2 * digits + 1 for the default digits

    MARK, QUERY, FILL = 10, 11, 12

    def __post_init__(self):
        check_int(self.name, "digits", self.digits, 1)
        check_int(self.name, "filler", self.filler, 1)
        set_min_length(self, 2 * self.digits + 1)

    @property
    def vocab_size(self) -> int:
        return self.FILL + self.filler

    @property
    def chance(self) -> float:
        # Not 1 / n_outputs: the metric is sequence accuracy over k digits, each one of 10.
        return 0.1 ** self.digits

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        k = self.digits
        key = draw(batch, k, 0, 10, gen)  # (B, k)
        filler = draw(batch, length, self.FILL, self.vocab_size, gen)
        start = torch.randint(0, length - 2 * k, (batch, 1), generator=gen)  # marker position
        needle = torch.cat([torch.full((batch, 1), self.MARK), key], dim=1)  # (B, k+1)
        prompt = torch.cat([torch.full((batch, 1), self.QUERY), key[:, :-1]], dim=1)  # (B, k)
        tail = span(batch, length - k, length)
        return compose(filler, [(start + torch.arange(k + 1), needle), (tail, prompt)], tail, key)

    def decode(self, inputs, targets, mask) -> str:
        names = {self.MARK: "KEY", self.QUERY: "QUERY"}
        names.update({t: "." for t in range(self.FILL, self.vocab_size)})
        answer = "".join(str(int(t)) for t, m in zip(targets, mask) if bool(m))
        return f"input  : {show(inputs.tolist(), names)}\npasskey: {answer}"


@register
@dataclasses.dataclass(frozen=True)
class SetDisjointness(Task):
    """Set disjointness (JRT, Arora et al. 2024, ``non_autoreg.py``).

    The data vocabulary (ids ``3..V-1``) is split into halves; set A is drawn from the first,
    set B from the second (distinct elements each), then one random element of B is overwritten
    by a random element of A. The input is ``1 A 2 B 3`` with three separator tokens (ids 0, 1, 2)
    and the target at the last position is the one shared token. Each example then relabels the
    data ids by its own random permutation, so which ids form a "half" changes every time (as the
    reference draws its halves per example): with fixed halves the answer is simply B's one
    token from A's half, found without remembering A.

    Set sizes derive from ``length`` (``|A| + |B| = length - 3``): ``|A| = round(ratio *
    (length - 3))`` clamped to ``[1, length - 4]``. ``ratio < 0.5`` puts the smaller set first.
    A length whose sets do not fit the vocabulary halves is refused.

    ``reads = k`` (JRT-Prompt, "read twice" at k = 2): the context ``1 A 2 B`` is read k times
    before the final ``3``: ``1 A 2 B 1 A 2 B 3``. ``length`` stays the length of one read, so
    the sets are those of ``reads=1`` (the same draws) and a sample has ``k (length - 1) + 1``
    steps, the one exception to "exactly ``length`` steps". ``prefix`` (prefix-mode models) is
    the whole context, every step but the last.
    """

    vocab: int = 512  # V: ids 0-2 are separators, the rest is split into two halves
    ratio: float = 0.25  # |A| / (|A| + |B|): the share of the first set
    reads: int = 1  # times the context 1 A 2 B is read before the final 3 (2: JRT-Prompt)

    name = "set_disjointness"
    train_lengths = (16, 64)
    test_lengths = (64, 128, 256)
    min_length = 5

    def __post_init__(self):
        check_int(self.name, "vocab", self.vocab, 7)
        check_number(self.name, "ratio", self.ratio, 0, 1, low_open=True, high_open=True)
        check_int(self.name, "reads", self.reads, 1)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def prefix(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B,)``: the context, every step before the final separator (the answer's)."""
        B, T = inputs.shape[:2]
        return torch.full((B,), T - 1, dtype=torch.long, device=inputs.device)

    @property
    def chance(self) -> float:
        # Not 1 / n_outputs: the answer is a data token, never one of the 3 separators.
        return 1 / (self.vocab - 3)

    def sizes(self, length: int):
        """``(|A|, |B|)`` for a sequence of ``length`` tokens."""
        total = length - 3
        a = min(max(int(self.ratio * total + 0.5), 1), total - 1)
        return a, total - a

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        a, b = self.sizes(length)
        split = 3 + (self.vocab - 3) // 2
        if a > split - 3 or b > self.vocab - split:
            raise ValueError(f"{self.name}: length {length} needs sets of {a} and {b} tokens, "
                             f"more than the vocabulary halves ({split - 3}, "
                             f"{self.vocab - split}); raise vocab")
        first = distinct(batch, a, 3, split, gen)  # (B, a)
        second = distinct(batch, b, split, self.vocab, gen)  # (B, b)
        shared = first.gather(1, torch.randint(0, a, (batch, 1), generator=gen))  # (B, 1)
        second.scatter_(1, torch.randint(0, b, (batch, 1), generator=gen), shared)
        sep = torch.arange(3).expand(batch, 3)
        inputs = torch.cat([sep[:, :1], first, sep[:, 1:2], second, sep[:, 2:]], dim=1)
        perm = torch.rand(batch, self.vocab - 3, generator=gen).argsort(dim=1) + 3  # (B, V-3)
        relabel = torch.cat([sep, perm], dim=1)  # (B, V): separators keep their ids
        inputs = relabel.gather(1, inputs)  # (B, length)
        context = [inputs[:, :-1]] * (self.reads - 1)  # the re-reads of 1 A 2 B
        inputs = torch.cat(context + [inputs], dim=1)  # (B, reads (length - 1) + 1)
        last = span(batch, inputs.shape[1] - 1, inputs.shape[1])  # (B, 1): the answer position
        return compose(inputs, [], last, relabel.gather(1, shared))

    def decode(self, inputs, targets, mask) -> str:
        x = inputs.tolist()[-((len(inputs) - 1) // self.reads + 1):]  # the last read and the 3
        a, _ = self.sizes(len(x))
        reads = f"reads : {self.reads}\n" if self.reads > 1 else ""
        return (f"{reads}A     : {x[1:a + 1]}\nB     : {x[a + 2:-1]}\n"
                f"shared: {int(targets[-1])}")


@register
@dataclasses.dataclass(frozen=True)
class SelectiveCopy(SymbolTask):
    """Selective copying (Mamba, Gu & Dao 2023, Fig. 2).

    ``tokens`` data tokens (uniform over ``symbols`` data symbols, repeats allowed) sit at random
    distinct positions, in order, among blanks in the first ``length - tokens`` positions; the
    last ``tokens`` positions are marker tokens, where the model must output the data tokens in
    order. Only those are scored. ``min_length == 2 * tokens``.

    Tokens: ``0`` = blank, ``1`` = marker, ``2..`` = data symbols.
    """

    tokens: int = 8  # data tokens to copy
    symbols: int = 8  # distinct data symbols

    name = "selective_copy"
    train_lengths = (32, 64)
    test_lengths = (64, 128, 256)
    min_length = 16  # 2 * tokens for the default tokens

    BLANK, MARK = 0, 1

    def __post_init__(self):
        check_int(self.name, "tokens", self.tokens, 1)
        super().__post_init__()
        set_min_length(self, 2 * self.tokens)

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        k = self.tokens
        data = draw(batch, k, 2, self.vocab_size, gen)  # (B, k)
        where = distinct(batch, k, 0, length - k, gen).sort(dim=1).values  # (B, k)
        tail = span(batch, length - k, length)
        return compose(blank(batch, length), [(where, data), (tail, self.MARK)], tail, data)

    def decode(self, inputs, targets, mask) -> str:
        names = {self.BLANK: ".", self.MARK: ">"}
        answer = " ".join(str(int(t)) for t, m in zip(targets, mask) if bool(m))
        return f"input : {show(inputs.tolist(), names)}\noutput: {answer}"
