"""The Reber task: the automaton against a regular expression written from the grammar's
picture, and the sampler's promises (valid strings valid, corrupted ones rejected, balanced,
seeded, scored at the last symbol only)."""
from __future__ import annotations

import itertools
import random
import re

import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks import reber

# From state 4: loop X T* V P back to 4, leave by S, or by X T* V V.
FROM4 = "(XT*VP)*(S|XT*VV)"
REBER = re.compile(f"B(TS*X{FROM4}|PT*V(P{FROM4}|V))E")


def test_automaton_equals_the_regular_expression_on_every_short_string():
    for n in range(7):
        for inner in itertools.product("TPSXV", repeat=n):
            s = "B" + "".join(inner) + "E"
            assert reber.accepts(s, embedded=False) == bool(REBER.fullmatch(s)), s


@pytest.mark.parametrize("text, plain, embedded", [
    ("BTXSE", True, False), ("BPVVE", True, False), ("BTSSXXTVVE", True, False),
    ("BPTVPXVVE", True, False), ("BTXXE", False, False),
    ("BTBTXSETE", False, True), ("BPBPVVEPE", False, True),
    ("BTBTXSEPE", False, False),  # the wrapper's T does not come back
    ("BTBTXSET", False, False),  # no final E
])
def test_membership_by_hand(text, plain, embedded):
    assert reber.accepts(text, embedded=False) == plain
    assert reber.accepts(text, embedded=True) == embedded


def test_generated_strings_are_valid_and_short_enough():
    rng = random.Random(0)
    for embedded in (True, False):
        for _ in range(300):
            s = reber.generate(rng, embedded, max_length=12)
            assert reber.accepts(s, embedded) and len(s) <= 12
            if embedded:
                assert s[1] == s[-2] and REBER.fullmatch(s[2:-2])


def test_corruptions_change_one_symbol_and_leave_the_language():
    rng = random.Random(1)
    for _ in range(300):
        s = reber.generate(rng)
        bad = reber.corrupt(s, rng)
        assert len(bad) == len(s) and sum(a != b for a, b in zip(s, bad)) == 1
        assert not reber.accepts(bad)


def test_sample_labels_layout_and_balance():
    task = tasks.get("reber")
    x, y, mask = task.sample(41, 20, tasks.generator(0, "train"))
    assert mask.sum(1).tolist() == [1] * 41  # one answer per string
    assert int(y[mask].sum()) == 21  # balanced: the extra one of an odd batch is valid
    for row, target, m in zip(x.tolist(), y, mask):
        text = "".join(reber.SYMBOLS[t] for t in row if t != reber.PAD)
        end = len(text) - 1
        assert row[len(text):] == [reber.PAD] * (20 - len(text))  # padding after the end only
        assert bool(m[end]) and int(target[m]) == int(reber.accepts(text))


def test_plain_grammar_and_bad_arguments():
    task = tasks.get("reber", embedded=False)
    assert task.min_length == 5
    x, y, mask = task.sample(10, 5, tasks.generator(0, "test"))
    texts = ["".join(reber.SYMBOLS[t] for t in row) for row in x.tolist()]
    assert all(t in ("BTXSE", "BPVVE") for t, v in zip(texts, y[mask].tolist()) if v)
    with pytest.raises(TypeError, match="embedded"):
        tasks.get("reber", embedded=1)
    with pytest.raises(ValueError, match="length"):
        tasks.get("reber").sample(2, 8, tasks.generator(0, "train"))


def test_decode_says_valid_or_invalid():
    task = tasks.get("reber")
    x, y, mask = task.sample(2, 16, tasks.generator(2, "train"))
    text = task.decode(x[0], y[0], mask[0])
    assert text.startswith("string: B") and ("invalid" in text or "valid" in text)
    assert torch.equal(task.sample(3, 16, tasks.generator(5, "train"))[0],
                       task.sample(3, 16, tasks.generator(5, "train"))[0])
