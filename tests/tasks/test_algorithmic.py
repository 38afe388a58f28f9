"""Label correctness of listops (hand-checked values, a recursive evaluator on sampled text,
the exact-size guarantee) and latching."""
from __future__ import annotations

import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks import algorithmic as alg

_WORDS = [str(d) for d in range(10)] + ["MIN", "MAX", "MED", "SM", "[", "]", "_"]


def encode(text: str):
    return [_WORDS.index(word) for word in text.split()]


def recursive_value(words, pos=0):
    """``(value, next position)`` of the expression starting at ``words[pos]``."""
    if words[pos] != "[":
        return int(words[pos]), pos + 1
    op, pos, args = words[pos + 1], pos + 2, []
    while words[pos] != "]":
        value, pos = recursive_value(words, pos)
        args.append(value)
    ranked = sorted(args)
    half = len(ranked) // 2
    median = ranked[half] if len(ranked) % 2 else (ranked[half - 1] + ranked[half]) // 2
    value = {"MIN": min(args), "MAX": max(args), "SM": sum(args) % 10, "MED": median}[op]
    return value, pos + 1


def shape(words, pos=0, depth=0):
    """``(max list depth, max argument count, next position)`` of the expression at ``pos``."""
    if words[pos] != "[":
        return depth, 0, pos + 1
    pos, n_args, deepest, widest = pos + 2, 0, depth + 1, 0
    while words[pos] != "]":
        d, w, pos = shape(words, pos, depth + 1)
        deepest, widest, n_args = max(deepest, d), max(widest, w), n_args + 1
    return deepest, max(widest, n_args), pos + 1


@pytest.mark.parametrize("text, value", [
    ("[ MAX 2 9 [ MIN 4 7 ] 0 ]", 9),
    ("[ MAX 4 3 [ MIN 2 3 ] 1 0 [ MED 1 5 8 9 2 ] ]", 5),  # the LRA paper's example
    ("[ MED 1 2 ]", 1),  # even count: floor of the mean of the middle two
    ("[ MED 3 8 1 9 ]", 5),
    ("[ MED 4 1 7 ]", 4),
    ("[ SM 9 9 9 ]", 7),
    ("[ MIN [ MAX 1 2 ] [ SM 5 6 ] 3 ]", 1),
    ("_ _ [ SM [ SM 9 9 ] [ MED [ MAX 0 0 ] 8 ] ]", 2),  # 8 + 4 mod 10
])
def test_listops_hand_checked(text, value):
    tokens = encode(text)
    assert alg.listops_value(tokens) == value
    assert recursive_value([w for w in text.split() if w != "_"])[0] == value
    targets = tasks.get("listops").label(torch.tensor([tokens]))
    assert targets[0, -1] == value and (targets[0, :-1] == 0).all()


def test_listops_value_errors():
    with pytest.raises(ValueError, match="no complete expression"):
        alg.listops_value(encode("_ _"))
    with pytest.raises(ValueError, match="op"):
        alg.apply_op(3, [1, 2])


@pytest.mark.parametrize("params", [{}, {"max_args": 3, "max_depth": 2}, {"max_args": 10}])
def test_listops_samples_match_recursive_evaluator(params):
    task = tasks.get("listops", **params)
    gen = tasks.generator(0, "train")
    for length in (5, 6, 7, 16, 33, 64, 100):
        x, y, mask = task.sample(24, length, gen)
        assert x.shape == (24, length) and mask[:, -1].all() and not mask[:, :-1].any()
        for row, target in zip(x.tolist(), y[:, -1].tolist()):
            words = [_WORDS[t] for t in row]
            n_pad = words.count("_")
            assert words[:n_pad] == ["_"] * n_pad and words[n_pad] == "["
            value, end = recursive_value(words, n_pad)
            assert value == target and end == length
            depth, width, _ = shape(words, n_pad)
            assert depth <= task.max_depth and width <= task.max_args


def test_listops_fills_the_length_exactly():
    tree, _ = alg._fit_tables(5, 4, 2048)
    assert tree[4].nonzero()[0].tolist() == [1] + list(range(5, 1094))  # defaults: 5..1093
    task = tasks.get("listops")
    for length in list(range(5, 70)) + [256]:
        x, _, _ = task.sample(2, length, tasks.generator(length, "train"))
        assert not (x == alg.LIST_PAD).any()
    # Two arguments per list: sizes 5, 9, ..., 29 with depth 3, so other lengths pad.
    narrow = tasks.get("listops", max_args=2, max_depth=3)
    for length, n_pad in [(29, 0), (30, 1), (12, 3), (40, 11)]:
        x, _, _ = narrow.sample(3, length, tasks.generator(0, "test"))
        assert ((x == alg.LIST_PAD).sum(1) == n_pad).all()


def test_listops_decode_and_errors():
    task = tasks.get("listops")
    x = torch.tensor(encode("_ [ MAX 2 9 [ MIN 4 7 ] 0 ]"))
    assert task.decode(x, task.label(x[None])[0], x > -1) == "[ MAX 2 9 [ MIN 4 7 ] 0 ] → 9"
    assert (task.vocab_size, task.n_outputs, task.chance, task.min_length) == (17, 10, 0.1, 5)
    with pytest.raises(ValueError, match="max_args"):
        tasks.get("listops", max_args=1)
    with pytest.raises(ValueError, match="max_depth"):
        tasks.get("listops", max_depth=0)


# --- latching -------------------------------------------------------------------------------
@pytest.mark.parametrize("n_mem, vocab", [(4, 20), (2, 2), (16, 40)])
def test_latching_targets_are_the_first_token(n_mem, vocab):
    task = tasks.get("latching", n_mem=n_mem, vocab=vocab)
    x, y, mask = task.sample(128, 50, tasks.generator(0, "train"))
    assert mask.all() and (y == x[:, :1]).all()
    assert int(x[:, 0].max()) < n_mem == task.n_outputs and task.chance == 1 / n_mem
    assert int(x.max()) == vocab - 1 == task.vocab_size - 1  # later tokens cover the vocabulary
    ones = torch.ones(1, 4, dtype=torch.long)
    assert torch.equal(task.label(torch.tensor([[1, 0, vocab - 1, 1]])), ones)


def test_latching_decode_and_errors():
    task = tasks.get("latching")
    x = torch.tensor([3, 17, 0])
    assert "target: 3 at every step" in task.decode(x, task.label(x[None])[0], x > -1)
    with pytest.raises(ValueError, match="n_mem"):
        tasks.get("latching", n_mem=1)
    with pytest.raises(ValueError, match="vocab"):
        tasks.get("latching", n_mem=8, vocab=4)
