"""Algorithmic tasks: ListOps (Long Range Arena) and MinMax RNC latching.

- ``listops``: nested MIN / MAX / MED / SM lists over digits (Nangia & Bowman 2018; LRA, Tay et
  al. 2021; the DLR repo's copy of the generator); one answer at the end, 10 classes.
- ``addition``: two little-endian decimal numbers, then their sum (tensor2tensor; the Universal
  Transformer's algorithmic table).
- ``latching``: remember the first token for the whole sequence (Ronca 2026, MinMax RNC
  benchmarks): the aperiodic memory control of the state-tracking suite.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import List, Tuple

import numpy as np
import torch

from ..checks import check_bool
from .base import Sample, Task, check_int, check_tokens, register
from .sampling import feed_back, last_position

# --- listops --------------------------------------------------------------------------------
MIN, MAX, MED, SM, LEFT, RIGHT, LIST_PAD = 10, 11, 12, 13, 14, 15, 16
_LIST_TEXT = [str(d) for d in range(10)] + ["MIN", "MAX", "MED", "SM", "[", "]", "_"]
_P_DIGIT = 0.5  # chance that an argument is a digit when a digit still fits


def apply_op(op: int, args: List[int]) -> int:
    """One ListOps operator on its argument values: MED of an even count is the floor of the
    mean of the two middle values (LRA's ``int(np.median(.))``); SM is the sum mod 10."""
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == SM:
        return sum(args) % 10
    if op == MED:
        ranked, mid = sorted(args), len(args) // 2
        return ranked[mid] if len(args) % 2 else (ranked[mid - 1] + ranked[mid]) // 2
    raise ValueError(f"listops: op must be a token in [{MIN}, {SM}], got {op!r}")


def listops_value(tokens: List[int]) -> int:
    """Value of one ListOps token sequence (pads ignored), by a stack of open lists."""
    stack: List[List[int]] = []
    for tok in tokens:
        if tok == LEFT:
            stack.append([])
        elif tok == RIGHT:
            op, *args = stack.pop()
            value = apply_op(op, args)
            if not stack:
                return value
            stack[-1].append(value)
        elif tok != LIST_PAD:
            stack[-1].append(tok)
    raise ValueError("listops: tokens hold no complete expression")


@functools.lru_cache(maxsize=64)
def _fit_tables(max_args: int, max_depth: int, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """Which exact sizes are reachable, up to ``limit`` tokens.

    ``tree[k, n]``: a tree of ``n`` tokens whose lists nest at most ``k`` deep exists (k = 0:
    a digit). ``split[k, j, n]``: ``n`` tokens split into ``j`` trees of depth budget ``k``.
    """
    tree = np.zeros((max_depth + 1, limit + 1), dtype=bool)
    split = np.zeros((max_depth + 1, max_args + 1, limit + 1), dtype=bool)
    tree[:, 1] = True
    for k in range(max_depth + 1):
        if k > 0:  # a list: "[", op, 2..max_args arguments of budget k-1, "]"
            inner = split[k - 1, 2:].any(axis=0)
            tree[k, 3:] |= inner[:-3]
        split[k, 0, 0] = True
        for j in range(1, max_args + 1):
            sums = np.convolve(split[k, j - 1].astype(np.int64), tree[k].astype(np.int64))
            split[k, j] = sums[:limit + 1] > 0
    return tree, split


class _Uniform:
    """Uniform [0, 1) numbers drawn in blocks from a torch generator (no global RNG)."""

    def __init__(self, gen: torch.Generator, block: int):
        self.gen, self.block, self.buf, self.pos = gen, block, [], 0

    def __call__(self) -> float:
        if self.pos == len(self.buf):
            self.buf = torch.rand(self.block, generator=self.gen, dtype=torch.float64).tolist()
            self.pos = 0
        self.pos += 1
        return self.buf[self.pos - 1]

    def integer(self, low: int, high: int) -> int:
        """Uniform in [low, high]."""
        return low + min(int(self() * (high - low + 1)), high - low)


def _arg_sizes(size: int, budget: int, rand: _Uniform, tables) -> List[int]:
    """Sizes of the arguments of a list of ``size`` tokens with depth ``budget``, shuffled."""
    tree, split = tables
    free = size - 3
    counts = [j for j in range(2, split.shape[1]) if split[budget - 1, j, free]]
    j = counts[rand.integer(0, len(counts) - 1)]
    sizes = []
    for rest in range(j - 1, 0, -1):  # ``rest`` arguments left after this one
        if split[budget - 1, rest, free - 1] and rand() < _P_DIGIT:
            part = 1
        else:
            fits = np.flatnonzero(tree[budget - 1, :free + 1]
                                  & split[budget - 1, rest, free::-1][:free + 1])
            part = int(fits[rand.integer(0, len(fits) - 1)])
        sizes.append(part)
        free -= part
    sizes.append(free)
    order = sorted(range(j), key=lambda _: rand())
    return [sizes[i] for i in order]


def _tree(size: int, budget: int, rand: _Uniform, tables, out: List[int]) -> None:
    """Append to ``out`` a random expression of exactly ``size`` tokens, lists nested at most
    ``budget`` deep."""
    if size == 1:
        out.append(rand.integer(0, 9))
        return
    out += [LEFT, rand.integer(MIN, SM)]
    for part in _arg_sizes(size, budget, rand, tables):
        _tree(part, budget - 1, rand, tables, out)
    out.append(RIGHT)


@register
@dataclasses.dataclass(frozen=True)
class ListOps(Task):
    """ListOps (LRA): ``[ MAX 2 9 [ MIN 4 7 ] 0 ]`` → 9, one answer after the last token.

    MIN, MAX, MED (median; an even count takes the floor of the mean of the two middle values)
    and SM (sum mod 10) over digits.

    Tokens: digits 0–9, MIN MAX MED SM, ``[``, ``]``, pad (vocab 17). Every list has 2 to
    ``max_args`` arguments and lists nest at most ``max_depth`` deep; the expression is a list.
    The sample has exactly ``length`` tokens: the expression fills them all when a tree of that
    size exists (with the defaults, every size from 5 to 1093), otherwise it takes the largest
    size that fits and pads at the start. Trees are drawn top-down with exact sizes: a uniform
    feasible argument count, then each argument a digit with probability 0.5 where that still
    fits, else of a uniform feasible size; arguments are shuffled. The answer (10
    classes) is scored at the last position only.
    """

    max_args: int = 5  # arguments per list, at most (at least 2)
    max_depth: int = 4  # nesting depth of lists, at most

    name = "listops"
    train_lengths = (16, 64)
    test_lengths = (64, 128, 256, 512)
    min_length = 5

    def __post_init__(self):
        check_int(self.name, "max_args", self.max_args, 2, 64)
        check_int(self.name, "max_depth", self.max_depth, 1, 64)

    @property
    def vocab_size(self) -> int:
        return 17

    @property
    def n_outputs(self) -> int:
        return 10

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, T)``: each row's value at the last position, 0 elsewhere."""
        check_tokens(self, inputs)
        targets = torch.zeros_like(inputs)
        targets[:, -1] = torch.tensor([listops_value(row) for row in inputs.tolist()])
        return targets

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        limit = max(256, 1 << (length - 1).bit_length())  # few cached table sizes
        tables = _fit_tables(self.max_args, self.max_depth, limit)
        size = int(np.flatnonzero(tables[0][self.max_depth, :length + 1])[-1])
        rand = _Uniform(gen, block=8 * length)
        rows = []
        for _ in range(batch):
            expr = [LIST_PAD] * (length - size)
            _tree(size, self.max_depth, rand, tables, expr)
            rows.append(expr)
        inputs = torch.tensor(rows, dtype=torch.long)  # (B, T)
        return inputs, self.label(inputs), last_position(batch, length)

    def decode(self, inputs, targets, mask) -> str:
        text = " ".join(_LIST_TEXT[t] for t in inputs.tolist() if t != LIST_PAD)
        return f"{text} → {int(targets[-1])}"


# --- latching -------------------------------------------------------------------------------
@register
@dataclasses.dataclass(frozen=True)
class Latching(Task):
    """Latching (MinMax RNC benchmarks, Ronca 2026): output the first token at every step.

    The first token is uniform over the first ``n_mem`` symbols, the rest uniform over all
    ``vocab`` symbols; the target at every step is the first token. The classes are the
    ``n_mem`` memory symbols (the target is always one of them); every position is scored,
    the first included.
    """

    n_mem: int = 4  # symbols the first token is drawn from (and classes)
    vocab: int = 20  # input symbols (>= n_mem)

    name = "latching"
    train_lengths = (16, 64)
    test_lengths = (64, 256, 1024)

    def __post_init__(self):
        check_int(self.name, "n_mem", self.n_mem, 2)
        check_int(self.name, "vocab", self.vocab, self.n_mem)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def n_outputs(self) -> int:
        return self.n_mem

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, T)``: the first token, repeated."""
        check_tokens(self, inputs)
        return inputs[:, :1].expand_as(inputs).clone()

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        first = torch.randint(0, self.n_mem, (batch, 1), generator=gen)
        rest = torch.randint(0, self.vocab, (batch, length - 1), generator=gen)
        inputs = torch.cat([first, rest], dim=1)  # (B, T)
        mask = torch.ones(batch, length, dtype=torch.bool)
        return inputs, self.label(inputs), mask

    def decode(self, inputs, targets, mask) -> str:
        return (f"input : {' '.join(map(str, inputs.tolist()))}\n"
                f"target: {int(targets[0])} at every step")


# --- addition -------------------------------------------------------------------------------
PLUS, EQUALS, END = 10, 11, 12  # digits are tokens 0..9; END is also the blank of the outputs


@register
@dataclasses.dataclass(frozen=True)
class Addition(Task):
    """Decimal addition (tensor2tensor's ``algorithmic_addition_decimal40``, the Universal
    Transformer's "addition"): two little-endian numbers, then their little-endian sum.

    A sample of ``length`` L holds ``m = (L - 3) // 2`` digits in all: ``a`` of ``l1 ~ U{1..m-1}``
    digits, ``+``, ``b`` of ``l2 = m - l1`` digits, ``=``, then ``m + 1`` output steps. Every
    digit is uniform, except that a number's most significant digit is not 0 unless it has one
    digit (the reference's rule). The answer is the sum's digits and then END (the reference's
    EOS), and only it is scored: ``accuracy`` per digit, and ``sequence_accuracy`` (the whole
    sum right) beside it. ``teacher_forcing=True`` (default, as the reference's decoder): ``=``
    predicts the first digit and each output step reads the answer's previous symbol; ``False``:
    the output steps read END and each predicts its own symbol. Lengths follow the reference:
    at most 40 input tokens in training (L <= 81), 400 in test.
    """

    teacher_forcing: bool = True  # output steps read the answer so far (else END)

    name = "addition"
    train_lengths = (7, 81)
    test_lengths = (81, 201, 401, 801)
    min_length = 7  # two one-digit numbers
    extra_metrics = ("sequence_accuracy",)

    def __post_init__(self):
        check_bool(self.name, "teacher_forcing", self.teacher_forcing)

    @property
    def vocab_size(self) -> int:
        return 13  # digits, +, =, END

    @property
    def chance(self) -> float:
        return 1 / 11  # an answer is a digit or END

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        m = (length - 3) // 2
        l1 = torch.randint(1, m, (batch, 1), generator=gen)  # (B, 1); l2 = m - l1 >= 1
        digits = torch.randint(0, 10, (batch, m), generator=gen)  # a's digits, then b's
        lead = torch.randint(1, 10, (batch, 2), generator=gen)  # nonzero leading digits
        pos = torch.arange(m).expand(batch, -1)  # (B, m)
        a_top, b_top = (l1 > 1) & (pos == l1 - 1), (m - l1 > 1) & (pos == m - 1)
        digits = torch.where(a_top, lead[:, :1], torch.where(b_top, lead[:, 1:], digits))
        a = torch.where(pos < l1, digits, 0)  # (B, m): a little-endian, zero-padded
        b = torch.where(pos < m - l1, digits.gather(1, (pos + l1).clamp(max=m - 1)), 0)
        total, size = self._add(a, b)  # (B, m) little-endian, (B, 1) digits of the sum
        inputs = torch.full((batch, length), END, dtype=torch.long)
        step = torch.arange(m + 1)  # a's digits, "+" at step l1, then b's digits
        inputs[:, :m + 1] = digits.gather(1, (step - (step > l1).long()).clamp(max=m - 1))
        inputs.scatter_(1, l1, PLUS)  # step p > l1 shows digit p - 1; "+" overwrites step l1
        inputs[:, m + 1] = EQUALS
        out = torch.arange(m + 1).expand(batch, -1)  # (B, m + 1) output steps
        answer = torch.where(out < size, torch.cat([total, total[:, :1]], 1), END)
        if self.teacher_forcing:  # "=" predicts the first digit, each digit read the next
            return feed_back(inputs, answer, m + 1, out <= size)
        targets = torch.full_like(inputs, END)
        targets[:, m + 2:2 * m + 3] = answer
        mask = torch.zeros(batch, length, dtype=torch.bool)
        mask[:, m + 2:2 * m + 3] = out <= size
        return inputs, targets, mask

    @staticmethod
    def _add(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Little-endian ``a + b`` (both ``(B, m)`` digits, the sum fits in m) by carries, and
        each sum's digit count ``(B, 1)`` (at least 1: the sum 0 is the digit 0)."""
        total, carry = torch.zeros_like(a), torch.zeros_like(a[:, 0])
        for i in range(a.shape[1]):
            s = a[:, i] + b[:, i] + carry
            total[:, i], carry = s % 10, s // 10
        nonzero = (total != 0).long() * torch.arange(1, a.shape[1] + 1)  # (B, m)
        return total, nonzero.amax(1, keepdim=True).clamp(min=1)

    def decode(self, inputs, targets, mask) -> str:
        text = {PLUS: "+", EQUALS: "=", END: "."}
        shown = [text.get(int(t), str(int(t))) if bool(k) else "_"
                 for t, k in zip(targets, mask)]
        return (f"input : {' '.join(text.get(t, str(t)) for t in inputs.tolist())}\n"
                f"target: {' '.join(shown)}  (little-endian)")
