"""Label correctness of tomita and dyck: every prefix of every short string against direct
definitions (regular expressions, counts, run lengths, a Python stack)."""
from __future__ import annotations

import itertools
import re

import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks import languages as lang


def all_strings(n: int, symbols: int) -> torch.Tensor:
    """Every string of length ``n`` over ``symbols`` symbols: ``(symbols^n, n)``."""
    return torch.tensor(list(itertools.product(range(symbols), repeat=n)), dtype=torch.long)


# --- tomita ---------------------------------------------------------------------------------
def tomita3(s: str) -> bool:
    """No odd-length maximal run of 1s followed, anywhere later, by an odd-length run of 0s."""
    runs = [(ch, len(list(group))) for ch, group in itertools.groupby(s)]
    odd_ones = [i for i, (ch, n) in enumerate(runs) if ch == "1" and n % 2]
    odd_zeros = [i for i, (ch, n) in enumerate(runs) if ch == "0" and n % 2]
    return not (odd_ones and odd_zeros and odd_ones[0] < odd_zeros[-1])


DEFINITIONS = {
    1: lambda s: re.fullmatch("1*", s) is not None,
    2: lambda s: re.fullmatch("(10)*", s) is not None,
    3: tomita3,
    4: lambda s: "000" not in s,
    5: lambda s: s.count("0") % 2 == 0 and s.count("1") % 2 == 0,
    6: lambda s: (s.count("0") - s.count("1")) % 3 == 0,
    7: lambda s: re.fullmatch("0*1*0*1*", s) is not None,
}


@pytest.mark.parametrize("grammar", range(1, 8))
def test_tomita_every_prefix_of_every_string_up_to_8(grammar):
    task = tasks.get("tomita", grammar=grammar)
    bits = all_strings(8, 2)  # (256, 8): their prefixes are all strings of length 1..8
    labels = task.label(bits).tolist()
    member = DEFINITIONS[grammar]
    for row, got in zip(bits.tolist(), labels):
        s = "".join(map(str, row))
        assert got == [int(member(s[:t + 1])) for t in range(8)], s


@pytest.mark.parametrize("grammar, bits, labels", [
    (1, "1101", "1100"),
    (2, "10101", "01010"),
    (2, "1011", "0100"),
    (3, "10010", "10110"),  # "10": odd 1s then odd 0s; "100": even 0s; final "0" is odd again
    (3, "11010", "11110"),  # the lone 1 is odd and, at the end, a lone 0 follows it
    (3, "0110011", "1111111"),
    (4, "10001", "11100"),
    (5, "0101", "0001"),
    (6, "0001", "0010"),
    (6, "0110", "0101"),
    (7, "0110010", "1111110"),
])
def test_tomita_hand_checked(grammar, bits, labels):
    x = torch.tensor([[int(b) for b in bits]])
    got = "".join(map(str, tasks.get("tomita", grammar=grammar).label(x)[0].tolist()))
    assert got == labels


@pytest.mark.parametrize("grammar", range(1, 8))
def test_tomita_samples_keep_both_classes(grammar):
    task = tasks.get("tomita", grammar=grammar)
    x, y, mask = task.sample(256, 64, tasks.generator(0, "train"))
    assert mask.all() and set(x.unique().tolist()) <= {0, 1}
    assert torch.equal(y, task.label(x))
    assert 0.15 < y.float().mean() < 0.85


def test_tomita_decode_and_errors():
    task = tasks.get("tomita", grammar=2)
    text = task.decode(torch.tensor([1, 0, 1]), torch.tensor([0, 1, 0]), torch.ones(3, dtype=bool))
    assert "bits  : 101" in text and "member: .+." in text
    for bad in (0, 8, "3", 2.0):
        with pytest.raises(ValueError, match="grammar"):
            tasks.get("tomita", grammar=bad)


# --- dyck -----------------------------------------------------------------------------------
def dyck_classes(tokens):
    """Per-prefix class with a Python list as the stack: 0 invalid, 1 open, 2 balanced."""
    stack, out, dead = [], [], False
    for tok in tokens:
        kind, closing = divmod(tok, 2)
        if not dead and closing:
            dead = not stack or stack.pop() != kind
        elif not dead:
            stack.append(kind)
        out.append(0 if dead else (2 if not stack else 1))
    return out


@pytest.mark.parametrize("pairs, n", [(1, 10), (2, 6), (3, 4)])
def test_dyck_every_prefix_of_every_string(pairs, n):
    task = tasks.get("dyck", pairs=pairs)
    strings = all_strings(n, 2 * pairs)
    for row, got in zip(strings.tolist(), task.label(strings).tolist()):
        assert got == dyck_classes(row), row


@pytest.mark.parametrize("text, classes", [
    ("()[]", [1, 2, 1, 2]),
    ("([)]", [1, 1, 0, 0]),
    (")(", [0, 0]),
    ("(()", [1, 1, 1]),
    ("())()", [1, 2, 0, 0, 0]),  # invalid for good, even if the count returns to zero
    ("[([])]{}", [1, 1, 1, 1, 1, 2, 1, 2]),
])
def test_dyck_hand_checked(text, classes):
    x = torch.tensor([["()[]{}".index(ch) for ch in text]])
    assert tasks.get("dyck", pairs=3).label(x).tolist() == [classes]


@pytest.mark.parametrize("pairs", [1, 2, 5])
def test_dyck_samples_use_every_class(pairs):
    task = tasks.get("dyck", pairs=pairs)
    x, y, mask = task.sample(256, 64, tasks.generator(2, "train"))
    assert mask.all() and int(x.max()) < task.vocab_size == 2 * pairs
    assert torch.equal(y, task.label(x))
    share = torch.bincount(y.flatten(), minlength=3).float() / y.numel()
    assert (share > 0.05).all(), share
    # About half the strings are never corrupted: a valid walk, never invalid.
    assert 0.3 < (y != lang.INVALID).all(1).float().mean() < 0.8


def test_dyck_decode_and_errors():
    task = tasks.get("dyck", pairs=2)
    text = task.decode(torch.tensor([0, 2, 3, 1]), torch.tensor([1, 1, 1, 2]),
                       torch.ones(4, dtype=bool))
    assert "string: ([])" in text and "prefix: ...B" in text
    wide = tasks.get("dyck", pairs=6)
    shown = wide.decode(torch.tensor([10, 11]), torch.tensor([1, 2]), torch.ones(2, dtype=bool))
    assert "(5 )5" in shown
    for bad in (0, -1, "2", True):
        with pytest.raises(ValueError, match="pairs"):
            tasks.get("dyck", pairs=bad)
