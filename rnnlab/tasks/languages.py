"""Formal languages, labelled at every prefix: the Tomita grammars and Dyck languages.

- ``tomita``: the seven regular languages of Tomita (1982), the benchmark of state-regularised
  RNNs (Wang & Niepert, ICML'19) and of DFA extraction (Weiss et al., ICML'18).
- ``dyck``: balanced strings over ``pairs`` bracket types (Dyck-1 needs a counter, Dyck-k a
  stack), in the spirit of the balanced-parentheses task of SR-RNN.

Both label every prefix, so one string gives a label per step, and both sample strings that
follow the language for a while and then break it, so every class stays frequent.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Tuple

import torch

from .base import Sample, Task, check_int, check_tokens, register

# --- tomita ---------------------------------------------------------------------------------
# Each grammar as a DFA over {0, 1}: (next state on 0, next state on 1) per state, the accepting
# states; state 0 is the start.
TOMITA_DFAS = {
    1: ([(1, 0), (1, 1)], {0}),  # 1*; 1 = saw a 0 (dead)
    2: ([(2, 1), (0, 2), (2, 2)], {0}),  # (10)*; 1 = after a 1, 2 = dead
    # 0: no odd 1-run pending; 1: in an odd 1-run (nothing pending before it); 2: an odd 1-run
    # is pending (now in 1s or in an even 0-run); 3: pending and in an odd 0-run; 4: dead.
    3: ([(0, 1), (3, 0), (3, 2), (2, 4), (4, 4)], {0, 1, 2}),
    4: ([(1, 0), (2, 0), (3, 0), (3, 3)], {0, 1, 2}),  # no 000; state = trailing 0s
    5: ([(1, 2), (0, 3), (3, 0), (2, 1)], {0}),  # state = (#0 mod 2) + 2 (#1 mod 2)
    6: ([(1, 2), (2, 0), (0, 1)], {0}),  # state = (#0 - #1) mod 3
    7: ([(0, 1), (2, 1), (2, 3), (4, 3), (4, 4)], {0, 1, 2, 3}),  # 0*1*0*1*; 4 = dead
}
TOMITA_TEXT = {1: "1*", 2: "(10)*", 3: "no odd run of 1s later followed by an odd run of 0s",
               4: "no 000", 5: "even #0 and even #1", 6: "#0 - #1 = 0 mod 3", 7: "0*1*0*1*"}


@functools.lru_cache(maxsize=None)
def _dfa_tables(grammar: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(delta (Q, 2), accept (Q,), live (Q,))``; live = an accepting state is reachable."""
    delta, accept = TOMITA_DFAS[grammar]
    live = set(accept)
    while True:
        grown = live | {q for q, nxt in enumerate(delta) if live & set(nxt)}
        if grown == live:
            break
        live = grown
    q = range(len(delta))
    return (torch.tensor(delta), torch.tensor([s in accept for s in q]),
            torch.tensor([s in live for s in q]))


@register
@dataclasses.dataclass(frozen=True)
class Tomita(Task):
    """Tomita grammars 1–7: the target at step t is whether the prefix is in the language.

    Bits {0, 1}; the target is 1 when ``x1…xt`` is in the language, else 0 (all scored).

    1: 1*; 2: (10)*; 3: no odd-length run of 1s later followed by an odd-length run of 0s
    (maximal runs, as in Weiss et al.); 4: no 000; 5: even numbers of 0s and of 1s;
    6: #0 − #1 ≡ 0 mod 3; 7: 0*1*0*1*.

    Sampling: uniform bits make most prefixes non-members for grammars 1, 2, 3, 4 and 7, so
    each string follows the DFA until a switch time τ ~ U{0…T} (uniform per string): before τ
    each bit is uniform among the bits that keep an accepting state reachable, from τ on it is
    uniform. Grammars 5 and 6 never get stuck, so their strings are uniform bits.
    """

    grammar: int = 3  # Tomita language 1..7

    name = "tomita"
    train_lengths = (16, 64)
    test_lengths = (64, 128, 256)

    def __post_init__(self):
        check_int(self.name, "grammar", self.grammar, 1, 7)

    @property
    def vocab_size(self) -> int:
        return 2

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Membership ``(B, T)`` of every prefix of the bit strings ``inputs (B, T)``."""
        check_tokens(self, inputs)
        delta, accept, _ = _dfa_tables(self.grammar)
        state = torch.zeros(inputs.shape[0], dtype=torch.long)
        out = torch.empty_like(inputs)
        for t in range(inputs.shape[1]):
            state = delta[state, inputs[:, t]]
            out[:, t] = accept[state].long()
        return out

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        delta, _, live = _dfa_tables(self.grammar)
        bits = torch.randint(0, 2, (batch, length), generator=gen)
        switch = torch.randint(0, length + 1, (batch,), generator=gen)
        state = torch.zeros(batch, dtype=torch.long)
        inputs = torch.empty_like(bits)
        for t in range(length):
            bit = bits[:, t]
            steer = (t < switch) & ~live[delta[state, bit]]
            bit = torch.where(steer, 1 - bit, bit)
            state = delta[state, bit]
            inputs[:, t] = bit
        mask = torch.ones(batch, length, dtype=torch.bool)
        return inputs, self.label(inputs), mask

    def decode(self, inputs, targets, mask) -> str:
        bits = "".join(str(b) for b in inputs.tolist())
        member = "".join("+" if y else "." for y in targets.tolist())
        title = f"Tomita {self.grammar}: {TOMITA_TEXT[self.grammar]}"
        return f"{title}\nbits  : {bits}\nmember: {member}"


# --- dyck -----------------------------------------------------------------------------------
INVALID, OPEN_PREFIX, BALANCED = 0, 1, 2
_BRACKETS = "()[]{}<>"
_P_OPEN_RANGE = (0.3, 0.5)  # per-string probability of opening, away from depth 0


@register
@dataclasses.dataclass(frozen=True)
class Dyck(Task):
    """Dyck-k: the target at step t says whether the prefix is invalid, open or balanced.

    ``pairs`` bracket types; token ``2i`` opens type i, ``2i + 1`` closes it. The target at
    step t is the class of the prefix ``x1…xt``: 0 invalid (no continuation balances it: it
    has a close at depth 0 or of the wrong type), 1 valid but open (depth > 0), 2 balanced.
    Every position is scored.

    Sampling: a random walk of valid brackets, opening with probability p ~ U(0.3, 0.5) (per
    string) and always at depth 0, each open of a uniform type, each close matching. Half the
    strings get one corruption at a uniform position: that token is replaced by a different
    uniform token while the walk carries on as if it had not been; the string then turns
    invalid there or later (a wrong-type close far downstream), or stays open for good.
    """

    pairs: int = 2  # number of bracket types (1: a counter suffices; >= 2: a stack is needed)

    name = "dyck"
    train_lengths = (16, 64)
    test_lengths = (64, 128, 256)

    def __post_init__(self):
        check_int(self.name, "pairs", self.pairs, 1)

    @property
    def vocab_size(self) -> int:
        return 2 * self.pairs

    @property
    def n_outputs(self) -> int:
        return 3

    def label(self, inputs: torch.Tensor) -> torch.Tensor:
        """Prefix classes ``(B, T)`` (0 invalid, 1 open, 2 balanced) by a stack recogniser."""
        check_tokens(self, inputs)
        batch, length = inputs.shape
        rows = torch.arange(batch)
        stack = torch.zeros(batch, length + 1, dtype=torch.long)
        depth = torch.zeros(batch, dtype=torch.long)
        dead = torch.zeros(batch, dtype=torch.bool)
        out = torch.empty_like(inputs)
        for t in range(length):
            kind, closing = inputs[:, t] // 2, inputs[:, t] % 2 == 1
            top = stack[rows, (depth - 1).clamp(min=0)]
            dead = dead | (closing & ((depth == 0) | (top != kind)))
            push, pop = ~closing & ~dead, closing & ~dead  # a dead prefix stays frozen
            stack[rows, depth] = torch.where(push, kind, stack[rows, depth])
            depth = depth + push.long() - pop.long()
            out[:, t] = torch.where(dead, INVALID,
                                    torch.where(depth == 0, BALANCED, OPEN_PREFIX))
        return out

    def _sample(self, batch: int, length: int, gen: torch.Generator) -> Sample:
        rows = torch.arange(batch)
        low, high = _P_OPEN_RANGE
        p_open = low + (high - low) * torch.rand(batch, 1, generator=gen)
        opens = torch.rand(batch, length, generator=gen) < p_open  # (B, T)
        kinds = torch.randint(0, self.pairs, (batch, length), generator=gen)
        spot = torch.randint(0, length, (batch,), generator=gen)
        spot = torch.where(torch.rand(batch, generator=gen) < 0.5, spot, -1)  # -1: clean
        shift = torch.randint(1, 2 * self.pairs, (batch,), generator=gen)
        stack = torch.zeros(batch, length + 1, dtype=torch.long)
        depth = torch.zeros(batch, dtype=torch.long)
        inputs = torch.empty(batch, length, dtype=torch.long)
        for t in range(length):
            do_open = opens[:, t] | (depth == 0)
            kind = torch.where(do_open, kinds[:, t], stack[rows, (depth - 1).clamp(min=0)])
            stack[rows, depth] = torch.where(do_open, kind, stack[rows, depth])
            depth = depth + torch.where(do_open, 1, -1)
            token = 2 * kind + (~do_open).long()
            corrupt = (token + shift) % (2 * self.pairs)  # a different token
            inputs[:, t] = torch.where(spot == t, corrupt, token)
        mask = torch.ones(batch, length, dtype=torch.bool)
        return inputs, self.label(inputs), mask

    def _token_text(self, token: int) -> str:
        kind, closing = divmod(token, 2)
        if self.pairs <= len(_BRACKETS) // 2:
            return _BRACKETS[2 * kind + closing]
        return f"{')' if closing else '('}{kind} "

    def decode(self, inputs, targets, mask) -> str:
        text = "".join(self._token_text(x) for x in inputs.tolist())
        classes = "".join("x.B"[y] for y in targets.tolist())
        return f"string: {text}\nprefix: {classes}   (x invalid, . open, B balanced)"

