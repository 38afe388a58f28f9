"""State tracking beyond parity: modular arithmetic, group word problems, iterated matrix signs.

- ``mod_arith``: Grazzi et al. (ICLR'25), arithmetic mod 5 with precedence (and brackets).
- ``word_problem``: Merrill, Petty & Sabharwal (ICML'24); DeltaProduct (Siems et al.): running
  products in S3, A4, A5, S5. A5/S5 are NC¹-complete.
- ``iterated_matrix_sign``: sign of an entry of a running product of 3×3 integer matrices, the
  PNC¹-complete problem of Merrill et al. (arXiv 2603.03612) that separates DPLR linear RNNs
  from diagonal and permutation-diagonal ones.

Every task has ``label(inputs) -> targets``: the labels are a function of the inputs alone, and
``_sample`` draws inputs then labels them, so tests can label hand-written inputs.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import List, Tuple

import torch

from ..checks import check_bool
from .base import Sample, Task, check_choice, check_tokens, register
from .sampling import last_position

# --- mod_arith ------------------------------------------------------------------------------
PLUS, MINUS, TIMES, EQUALS, PAD, OPEN, CLOSE = 5, 6, 7, 8, 9, 10, 11
_ARITH_TEXT = ["0", "1", "2", "3", "4", "+", "−", "×", "=", "_", "(", ")"]
_P_OPEN, _P_CLOSE = 0.25, 0.35  # bracket probabilities of the expression sampler


def mod_arith_value(tokens: torch.Tensor) -> torch.Tensor:
    """Value mod 5 of each row of ``tokens (B, T)``: × before + and −, left to right, brackets.

    Pad and ``=`` tokens are ignored. One pass over time with, per bracket depth, the sum of the
    finished terms (``acc``), the sign and running product of the open term, and whether a ×
    waits for its right operand. Returns ``(B,)`` long in [0, 5).
    """
    batch, length = tokens.shape
    rows = torch.arange(batch)
    size = (batch, length // 2 + 2)
    acc, term = torch.zeros(size, dtype=torch.long), torch.zeros(size, dtype=torch.long)
    sign, mul = torch.ones(size, dtype=torch.long), torch.zeros(size, dtype=torch.bool)
    depth = torch.zeros(batch, dtype=torch.long)
    for t in range(length):
        tok = tokens[:, t]
        is_open, is_close, is_digit = tok == OPEN, tok == CLOSE, tok < 5
        is_pm = (tok == PLUS) | (tok == MINUS)
        # ``+``/``−``/``×`` act on the current level.
        finished = (acc[rows, depth] + sign[rows, depth] * term[rows, depth]) % 5
        acc[rows, depth] = torch.where(is_pm, finished, acc[rows, depth])
        sign[rows, depth] = torch.where(is_pm, torch.where(tok == PLUS, 1, -1), sign[rows, depth])
        mul[rows, depth] = (mul[rows, depth] | (tok == TIMES)) & ~is_pm
        # A digit, or a ``)`` (the finished value of the closed level), is an operand.
        depth = depth + is_open.long() - is_close.long()
        operand = torch.where(is_digit, tok, finished)
        old = term[rows, depth]
        new = torch.where(mul[rows, depth], old * operand % 5, operand)
        term[rows, depth] = torch.where(is_digit | is_close, new, old)
        # ``(`` starts a fresh level.
        acc[rows, depth] = torch.where(is_open, 0, acc[rows, depth])
        sign[rows, depth] = torch.where(is_open, 1, sign[rows, depth])
        mul[rows, depth] = mul[rows, depth] & ~is_open
    return (acc[:, 0] + sign[:, 0] * term[:, 0]) % 5


def _bracket_expression(batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, size)`` well-formed expressions with brackets, ``size`` odd, every row exactly full.

    A left-to-right automaton (expecting an operand or an operator, bracket depth ``k``) whose
    moves keep the rest completable: with ``r`` tokens left, an operand slot needs ``r >= k + 1``
    and ``r - k`` odd, an operator slot ``r >= k`` and ``r - k`` even; ``(`` is allowed when
    ``r >= k + 3``; ``)`` is forced when ``r == k``.
    """
    u = torch.rand(batch, size, generator=gen)
    digits = torch.randint(0, 5, (batch, size), generator=gen)
    ops = torch.randint(PLUS, TIMES + 1, (batch, size), generator=gen)
    out = torch.empty(batch, size, dtype=torch.long)
    operand = torch.ones(batch, dtype=torch.bool)  # expecting an operand
    depth = torch.zeros(batch, dtype=torch.long)
    for t in range(size):
        left = size - t
        do_open = operand & (left >= depth + 3) & (u[:, t] < _P_OPEN)
        do_close = ~operand & ((left == depth) | ((depth > 0) & (u[:, t] < _P_CLOSE)))
        out[:, t] = torch.where(operand, torch.where(do_open, OPEN, digits[:, t]),
                                torch.where(do_close, CLOSE, ops[:, t]))
        depth = depth + do_open.long() - do_close.long()
        operand = torch.where(operand, do_open, ~do_close)
    return out


@register
@dataclasses.dataclass(frozen=True)
class ModArith(Task):
    """Arithmetic mod 5 (Grazzi et al., ICLR'25): ``3 + 4 × 2 − 1 =`` → ``0``.

    Tokens: digits 0–4, ``+ − ×``, ``=``, a pad (vocab 10), and ``( )`` with ``brackets=True``
    (vocab 12). × binds tighter than + and −, which associate left. ``length`` counts every
    token: ``=`` is the last one, whose output is the answer (the only scored position), and
    the expression fills the ``length - 1`` before it. Expressions have odd length, so an even
    ``length - 1`` starts with one pad token. Operands and operators are uniform; with
    brackets, ``(`` opens with probability 0.25 where it fits and ``)`` closes with 0.35.
    """

    brackets: bool = False  # add ( ) to the vocabulary and to the expressions

    name = "mod_arith"
    metric = "scaled_accuracy"
    train_lengths = (3, 40)
    test_lengths = (40, 64, 128, 256)
    min_length = 2

    def __post_init__(self):
        check_bool(self.name, "brackets", self.brackets)

    @property
    def vocab_size(self) -> int:
        return 12 if self.brackets else 10

    @property
    def n_outputs(self) -> int:
        return 5

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, T)``: the value at the last position, 0 elsewhere."""
        check_tokens(self, inputs)
        targets = torch.zeros_like(inputs)
        targets[:, -1] = mod_arith_value(inputs)
        return targets

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        size = length - 1 if length % 2 == 0 else length - 2  # odd expression length
        if self.brackets:
            expr = _bracket_expression(batch, size, gen)
        else:
            digits = torch.randint(0, 5, (batch, size), generator=gen)
            ops = torch.randint(PLUS, TIMES + 1, (batch, size), generator=gen)
            expr = torch.where(torch.arange(size) % 2 == 0, digits, ops)
        pad = torch.full((batch, length - 1 - size), PAD)
        inputs = torch.cat([pad, expr, torch.full((batch, 1), EQUALS)], dim=1)  # (B, T)
        return inputs, self.label(inputs), last_position(batch, length)

    def decode(self, inputs, targets, mask) -> str:
        text = " ".join(_ARITH_TEXT[t] for t in inputs.tolist() if t != PAD)
        return f"{text} → {int(targets[-1])}"


# --- word_problem ---------------------------------------------------------------------------
GROUPS = {"S3": (3, False), "A4": (4, True), "A5": (5, True), "S5": (5, False)}
# Two elements that generate each group (p[i] = image of i): a word over them is a path in the
# group's Cayley graph, the automaton form of PD-SSM (Terzić et al. 2025). Barrington: the word
# problem of a non-solvable group over any fixed generating set is still NC¹-complete.
GENERATORS = {
    "S3": [(1, 0, 2), (1, 2, 0)],  # (01), (012)
    "A4": [(1, 2, 0, 3), (1, 0, 3, 2)],  # (012), (01)(23)
    "A5": [(1, 2, 3, 4, 0), (1, 2, 0, 3, 4)],  # (01234), (012)
    "S5": [(1, 0, 2, 3, 4), (1, 2, 3, 4, 0)],  # (01), (01234)
}
TOKENS = ("elements", "generators")


def _is_even(perm: Tuple[int, ...]) -> bool:
    inversions = sum(a > b for a, b in itertools.combinations(perm, 2))
    return inversions % 2 == 0


@functools.lru_cache(maxsize=None)
def group_elements(group: str) -> List[Tuple[int, ...]]:
    """The elements of ``group`` as permutations ``p`` of ``range(n)`` (``p[i]`` = image of i),
    in lexicographic order; index 0 is the identity."""
    n, alternating = GROUPS[group]
    return [p for p in itertools.permutations(range(n)) if not alternating or _is_even(p)]


@functools.lru_cache(maxsize=None)
def _product_table(group: str) -> torch.Tensor:
    """``(|G|·|G|,)`` flat table: entry ``a·|G| + b`` is the index of ``a·b``, where
    ``(a·b)(i) = a(b(i))``."""
    elems = group_elements(group)
    index = {p: i for i, p in enumerate(elems)}
    table = [index[tuple(a[b[i]] for i in range(len(a)))] for a in elems for b in elems]
    return torch.tensor(table, dtype=torch.long)


def _cycles(perm: Tuple[int, ...]) -> str:
    seen, parts = set(), []
    for start in range(len(perm)):
        cycle, i = [], start
        while i not in seen:
            seen.add(i)
            cycle.append(str(i))
            i = perm[i]
        if len(cycle) > 1:
            parts.append("(" + "".join(cycle) + ")")
    return "".join(parts) or "e"


@register
@dataclasses.dataclass(frozen=True)
class WordProblem(Task):
    """Group word problem: the target at step t is the running product ``g1·g2·…·gt``.

    Merrill, Petty & Sabharwal (ICML'24); DeltaProduct. Tokens are group elements and
    ``(a·b)(i) = a(b(i))``.

    Classes index ``group_elements(group)``, the group's permutations in lexicographic order
    (identity first). Tokens are those elements (``tokens="elements"``, Merrill et al.'s form), or
    two generators of the group (``tokens="generators"``, ``GENERATORS``: PD-SSM's automaton form,
    where a model learns two transitions instead of |G|; trained on lengths 3-40 and tested to
    256, as the paper's automata). Every position is scored. S3 and A4 are
    solvable; A5 and S5 are not, which makes their word problems NC¹-complete in either form.
    """

    group: str = "S5"  # "S3", "A4", "A5" or "S5"
    tokens: str = "elements"  # "elements" or "generators"

    name = "word_problem"
    train_lengths = (16, 32)
    test_lengths = (32, 64, 128, 256)

    def __post_init__(self):
        check_choice(self.name, "group", self.group, tuple(GROUPS))
        check_choice(self.name, "tokens", self.tokens, TOKENS)
        if self.tokens == "generators":  # PD-SSM's protocol: train on 3-40, test 40-256
            object.__setattr__(self, "train_lengths", (3, 40))
            object.__setattr__(self, "test_lengths", (40, 64, 128, 256))

    def _token_elements(self) -> List[int]:
        """The element index of each token."""
        elems = group_elements(self.group)
        if self.tokens == "elements":
            return list(range(len(elems)))
        return [elems.index(g) for g in GENERATORS[self.group]]

    @property
    def vocab_size(self) -> int:
        return len(self._token_elements())

    @property
    def n_outputs(self) -> int:
        return len(group_elements(self.group))

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Running products ``(B, T)`` by a Hillis–Steele scan over the product table."""
        check_tokens(self, inputs)
        table, size = _product_table(self.group), self.n_outputs
        prod, step = torch.tensor(self._token_elements())[inputs], 1  # tokens -> elements
        while step < inputs.shape[1]:
            combined = table[prod[:, :-step] * size + prod[:, step:]]  # earlier · later
            prod = torch.cat([prod[:, :step], combined], dim=1)
            step *= 2
        return prod

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        inputs = torch.randint(0, self.vocab_size, (batch, length), generator=gen)
        mask = torch.ones(batch, length, dtype=torch.bool)
        return inputs, self.label(inputs), mask

    def decode(self, inputs, targets, mask) -> str:
        elems, token = group_elements(self.group), self._token_elements()
        rows = [f"{_cycles(elems[token[x]]):>12} → {_cycles(elems[y])}"
                for x, y in zip(inputs.tolist(), targets.tolist())]
        return "\n".join(rows)


# --- iterated_matrix_sign -------------------------------------------------------------------
def _transvection(i: int, j: int, s: int) -> List[List[int]]:
    m = [[int(r == c) for c in range(3)] for r in range(3)]
    m[i][j] = s
    return m


# Unimodular generators: I ± E01, I ± E12, I ± E20 (together they generate SL(3, Z)), a signed
# 3-cycle, and diag(-1, 1, 1) (flips the tracked sign).
MATRICES: List[List[List[int]]] = [
    _transvection(0, 1, 1), _transvection(0, 1, -1),
    _transvection(1, 2, 1), _transvection(1, 2, -1),
    _transvection(2, 0, 1), _transvection(2, 0, -1),
    [[0, 1, 0], [0, 0, 1], [-1, 0, 0]],
    [[-1, 0, 0], [0, 1, 0], [0, 0, 1]],
]
_LIMB = 60  # bits per limb of the exact big-integer arithmetic


@register
@dataclasses.dataclass(frozen=True)
class IteratedMatrixSign(Task):
    """Sign of entry (0, 0) of the running product ``M1·M2·…·Mt`` of 3×3 integer matrices.

    Tokens index ``MATRICES`` (8 unimodular matrices, entries in {-1, 0, 1}); the target at
    every step is the sign of ``(M1⋯Mt)[0, 0]``: 0 negative, 1 zero, 2 positive. The general
    problem is PNC¹-complete (Merrill et al., arXiv 2603.03612). On random words about half
    the targets are negative, half positive, and a few percent zero (mostly early).

    Exact arithmetic: only the row ``r_t = e0ᵀ M1⋯Mt`` is needed (``r_t = r_{t-1} M_t``, its
    entry 0 is the target). Its entries are integers of up to ``t·log2(g)`` bits, ``g`` the
    largest column L1 norm (2 here), held as ``L`` int64 limbs of 60 bits: value =
    ``Σ_k limb_k 2^(60k)``. The update is linear in the limbs, so it is applied limb-wise
    (sums of at most three limbs < 2^62, no overflow), then one parallel carry moves
    ``floor(limb / 2^60)`` to the next limb, which keeps every limb but the top one in
    [-4, 2^60 + 4] and the value unchanged; ``L`` is chosen so the top limb stays tiny.
    A final sequential carry over the limbs makes the lower limbs non-negative and < 2^60, and
    the sign is then the top limb's sign, or + if it is 0 and a lower limb is not.
    """

    name = "iterated_matrix_sign"
    train_lengths = (16, 32)
    test_lengths = (32, 64, 128, 256)

    @property
    def vocab_size(self) -> int:
        return len(MATRICES)

    @property
    def n_outputs(self) -> int:
        return 3

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Signs ``(B, T)`` in {0: negative, 1: zero, 2: positive}, computed exactly."""
        check_tokens(self, inputs)
        batch, length = inputs.shape
        mats = torch.tensor(MATRICES, dtype=torch.long)  # (M, 3, 3)
        growth = max(1, int(mats.abs().sum(1).max()))
        n_limbs = math.ceil((length * math.log2(growth) + 2) / _LIMB) + 1
        row = torch.zeros(batch, 3, n_limbs, dtype=torch.long)
        row[:, 0, 0] = 1  # e0ᵀ
        entry = torch.empty(batch, length, n_limbs, dtype=torch.long)
        chosen = mats[inputs]  # (B, T, 3, 3)
        for t in range(length):
            row = (row[:, :, None, :] * chosen[:, t, :, :, None]).sum(1)  # (B, 3, L)
            carry = row[:, :, :-1] >> _LIMB
            row[:, :, :-1] -= carry << _LIMB
            row[:, :, 1:] += carry
            entry[:, t] = row[:, 0]
        for k in range(n_limbs - 1):  # full normalisation: limbs 0..L-2 in [0, 2^60)
            carry = entry[:, :, k] >> _LIMB
            entry[:, :, k] -= carry << _LIMB
            entry[:, :, k + 1] += carry
        top = entry[:, :, -1]
        low = (entry[:, :, :-1] != 0).any(-1)
        sign = torch.where(top != 0, top.sign(), low.long())
        return sign + 1

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        inputs = torch.randint(0, self.vocab_size, (batch, length), generator=gen)
        mask = torch.ones(batch, length, dtype=torch.bool)
        return inputs, self.label(inputs), mask

    def decode(self, inputs, targets, mask) -> str:
        signs = "".join("-0+"[y] for y in targets.tolist())
        tokens = "".join(str(x) for x in inputs.tolist())
        legend = "(tokens index rnnlab.tasks.state_tracking.MATRICES)"
        return f"matrix: {tokens}\nsign  : {signs}\n{legend}"
