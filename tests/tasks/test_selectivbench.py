"""SelectivBench: the grammar is a valid, seeded automaton and the labels follow it."""
import itertools

import pytest
import torch

from rnnlab import tasks


def draw(batch=16, length=96, seed=0, **params):
    task = tasks.get("selectivbench", **params)
    x, y, mask = task.sample(batch, length, tasks.generator(seed, "train"))
    return task, x, y, mask


def edges(task):
    adj = task.grammar().adj.tolist()
    return {s: [t for t, e in enumerate(row) if e] for s, row in enumerate(adj)}


def symbol_of(task, state):
    return 0 if state == 0 else 1 + (state - 1) // task.instances


@pytest.mark.parametrize("letters,instances,seed", [(8, 8, 0), (8, 8, 1), (3, 5, 7),
                                                    (20, 20, 2)])
def test_grammar_is_a_valid_automaton(letters, instances, seed):
    task = tasks.get("selectivbench", letters=letters, instances=instances, grammar_seed=seed)
    succ = edges(task)
    assert len(succ) == 1 + letters * instances
    reach, frontier = {0}, [0]  # every state reaches '#': walk the edges backwards from it
    while frontier:
        t = frontier.pop()
        for s, nxt in succ.items():
            if t in nxt and s not in reach:
                reach.add(s)
                frontier.append(s)
    assert reach == set(succ)
    for s, nxt in succ.items():  # at most one successor per symbol: the state is observable
        symbols = [symbol_of(task, t) for t in nxt]
        assert len(symbols) == len(set(symbols))
    starts = task.grammar().starts.tolist()
    assert sorted(succ[0]) == sorted(starts) and len(starts) == min(4, letters)
    assert len({symbol_of(task, s) for s in starts}) == len(starts)  # distinct letters
    assert 0 not in starts


def test_grammar_is_fixed_by_grammar_seed():
    a = tasks.get("selectivbench", grammar_seed=3).grammar().adj
    b = tasks.get("selectivbench", grammar_seed=3, noise=0.5).grammar().adj
    c = tasks.get("selectivbench", grammar_seed=4).grammar().adj
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the samples come from the sample generator, not from the grammar's seed
    _, x0, _, _ = draw(seed=0, grammar_seed=3)
    _, x1, _, _ = draw(seed=1, grammar_seed=3)
    assert not torch.equal(x0, x1)


@pytest.mark.parametrize("params", [{}, {"letters": 4, "instances": 3, "grammar_seed": 5},
                                    {"gap_min": 0, "gap_max": 3, "noise": 0.5}])
def test_labels_follow_the_automaton(params):
    task, x, y, _ = draw(32, 200, **params)
    succ = edges(task)
    starts = set(task.grammar().starts.tolist())
    for xs, ys in zip(x.tolist(), y.tolist()):
        elements = [(t, s) for t, (tok, s) in enumerate(zip(xs, ys)) if tok <= task.letters]
        assert elements[0][0] == 0 and elements[0][1] in starts
        for (t, s), (nxt, _) in zip(elements, elements[1:] + [(len(xs), None)]):
            assert xs[t] == symbol_of(task, s)  # the symbol frame shows the state's symbol
            assert all(ys[u] == s for u in range(t, nxt))  # held over its gap frames
        for (_, prev), (t, cur) in itertools.pairwise(elements):
            assert cur in succ[prev]
            # the previous state and the current symbol fix the current state
            assert [c for c in succ[prev] if symbol_of(task, c) == xs[t]] == [cur]


def test_one_instance_per_letter_makes_the_state_the_symbol():
    _, x, y, mask = draw(letters=5, instances=1, grammar_seed=2)
    assert torch.equal(x, y) and mask.all()


def test_gap_frames_noise_and_distractors():
    task, x, y, mask = draw(8, 90, gap_min=2, gap_max=2)
    symbol = torch.arange(90) % 3 == 0
    assert (x[:, symbol] <= task.letters).all() and (x[:, ~symbol] == task.blank).all()
    assert torch.equal(y[:, 1::3], y[:, 0::3]) and torch.equal(y[:, 2::3], y[:, 0::3])
    _, x, _, _ = draw(8, 90, gap_min=2, gap_max=2, noise=1.0)
    assert (x[:, ~symbol] == task.noise_token).all()
    task, x, y, mask = draw(8, 90, gap_min=1, gap_max=1, distractors=1.0, supervise="symbols")
    assert torch.equal(mask, (torch.arange(90) % 2 == 0).expand(8, -1))
    succ = edges(task)
    for xs, ys in zip(x.tolist(), y.tolist()):
        for t in range(1, 90, 2):  # a distractor is a symbol that cannot follow the state
            allowed = {symbol_of(task, c) for c in succ[ys[t]]}
            assert xs[t] == task.blank if len(allowed) == task.letters + 1 \
                else xs[t] <= task.letters and xs[t] not in allowed


def test_errors_name_the_argument():
    for params, arg in [({"letters": 0}, "letters"), ({"starts": 0}, "starts"),
                        ({"gap_min": 3, "gap_max": 2}, "gap_max"), ({"noise": 1.5}, "noise"),
                        ({"distractors": -0.1}, "distractors"), ({"edge_prob": 0}, "edge_prob"),
                        ({"supervise": "gaps"}, "supervise"), ({"grammar_seed": -1},
                                                               "grammar_seed")]:
        with pytest.raises(ValueError, match=arg):
            tasks.get("selectivbench", **params)


def test_decode_is_readable():
    task, x, y, mask = draw(1, 12, gap_min=1, gap_max=1)
    text = task.decode(x[0], y[0], mask[0])
    assert text.startswith("input :") and "." in text.splitlines()[0]
