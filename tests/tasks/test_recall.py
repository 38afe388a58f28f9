"""Label correctness of the recall tasks: MQAR, passkey, set disjointness, selective copying."""
import pytest
import torch

from rnnlab import tasks


def draw(name, batch=16, length=64, seed=0, **params):
    task = tasks.get(name, **params)
    x, y, mask = task.sample(batch, length, tasks.generator(seed, "train"))
    return task, x, y, mask


# --- MQAR -----------------------------------------------------------------------------------
@pytest.mark.parametrize("length,pairs,random_filler", [(64, 8, False), (65, 4, True),
                                                        (32, 8, False), (256, 16, True)])
def test_mqar_labels(length, pairs, random_filler):
    task, x, y, mask = draw("mqar", 32, length, pairs=pairs, random_filler=random_filler)
    half = task.vocab // 2
    for xs, ys, ms in zip(x.tolist(), y.tolist(), mask.tolist()):
        keys, values = xs[0:2 * pairs:2], xs[1:2 * pairs:2]
        assert len(set(keys)) == pairs and len(set(values)) == pairs
        assert all(1 <= k < half for k in keys) and all(half <= v < task.vocab for v in values)
        where = [t for t in range(length) if ms[t]]
        assert len(where) == pairs
        assert all(t >= 2 * pairs and (t - 2 * pairs) % 2 == 0 for t in where)
        assert sorted(xs[t] for t in where) == sorted(keys)  # each key queried once
        pair = dict(zip(keys, values))
        assert all(ys[t] == pair[xs[t]] for t in where)
        if not random_filler:
            rest = [xs[t] for t in range(2 * pairs, length) if not ms[t]]
            assert rest == [0] * len(rest)


def test_mqar_queries_follow_the_power_law():
    # p(g) ∝ (g+1)^(-0.99) over 120 slots: about half the mass lies on g < 8 (uniform: 7%).
    _, _, _, mask = draw("mqar", 256, 256, pairs=1)
    g = (mask.float().argmax(dim=1) - 2) // 2
    assert 0.35 < (g < 8).float().mean() < 0.65
    assert g.max() > 30


def test_mqar_random_filler_varies_the_region():
    _, x, _, mask = draw("mqar", 8, 128, random_filler=True)
    region = x[:, 16:][~mask[:, 16:]]
    assert (region != 0).float().mean() > 0.9


def test_mqar_errors_name_the_argument():
    with pytest.raises(ValueError, match="pairs"):
        tasks.get("mqar", vocab=16, pairs=8)  # only 7 keys in [1, 8)
    with pytest.raises(ValueError, match="vocab"):
        tasks.get("mqar", vocab=2)
    with pytest.raises(ValueError, match="alpha"):
        tasks.get("mqar", alpha=0)
    task = tasks.get("mqar", pairs=4)
    assert task.min_length == 16 and tasks.get("mqar").min_length == type(task).min_length
    with pytest.raises(ValueError, match="length must be an int >= 16"):
        task.sample(2, 15, tasks.generator(0, "train"))


# --- passkey --------------------------------------------------------------------------------
@pytest.mark.parametrize("length,digits", [(64, 5), (11, 5), (40, 1), (100, 7)])
def test_passkey_labels(length, digits):
    task, x, y, mask = draw("passkey", 64, length, digits=digits)
    k = digits
    assert mask[:, -k:].all() and not mask[:, :-k].any()
    for xs, ys in zip(x.tolist(), y.tolist()):
        start = xs.index(task.MARK)
        key = xs[start + 1:start + 1 + k]
        assert ys[-k:] == key and all(0 <= d <= 9 for d in key)
        assert xs[length - k] == task.QUERY and xs[length - k + 1:] == key[:-1]
        hay = xs[:start] + xs[start + k + 1:length - k]  # everything but needle and query
        assert all(t >= task.FILL for t in hay)
    depth = (x == task.MARK).float().argmax(dim=1)
    if length - 2 * k > 8:  # the needle reaches both ends of the haystack over 64 draws
        assert depth.min() < (length - 2 * k) / 4 and depth.max() > 3 * (length - 2 * k) / 4


def test_passkey_metric_is_exact_match():
    task, _, y, mask = draw("passkey", 4, 32)
    out = torch.nn.functional.one_hot(y, task.n_outputs).float()  # (B, T, O) perfect
    assert task.score(out, y, mask) == 1.0
    out[0, -1] = out[0, -1].roll(1)  # one wrong digit in example 0
    assert task.score(out, y, mask) == 0.75


def test_passkey_errors_name_the_argument():
    with pytest.raises(ValueError, match="digits"):
        tasks.get("passkey", digits=0)
    with pytest.raises(ValueError, match="filler"):
        tasks.get("passkey", filler=0)
    with pytest.raises(ValueError, match="length must be an int >= 7"):
        tasks.get("passkey", digits=3).sample(1, 6, tasks.generator(0, "train"))


# --- set disjointness -----------------------------------------------------------------------
@pytest.mark.parametrize("length,ratio", [(64, 0.25), (5, 0.5), (256, 0.75), (103, 0.1)])
def test_set_disjointness_labels(length, ratio):
    task, x, y, mask = draw("set_disjointness", 32, length, ratio=ratio)
    a, b = task.sizes(length)
    assert a + b == length - 3 and a == max(1, min(round(ratio * (length - 3)), length - 4))
    assert mask[:, -1].all() and not mask[:, :-1].any()
    for xs, ys in zip(x.tolist(), y.tolist()):
        assert xs[0] == 0 and xs[a + 1] == 1 and xs[-1] == 2
        first, second = xs[1:a + 1], xs[a + 2:-1]
        assert len(first) == len(set(first)) == a and len(second) == len(set(second)) == b
        assert all(3 <= t < task.vocab for t in first + second)
        shared = set(first) & set(second)
        assert shared == {ys[-1]}


def test_set_disjointness_halves_change_per_example():
    """No fixed id range marks set A: the shortcut 'B's token from A's half' is gone."""
    task, x, y, _ = draw("set_disjointness", 256, 20, ratio=0.5)
    a, _ = task.sizes(20)
    split = 3 + (task.vocab - 3) // 2
    low_in_a = [sum(t < split for t in xs[1:a + 1]) / a for xs in x.tolist()]
    assert 0.3 < sum(low_in_a) / len(low_in_a) < 0.7  # about half, not all


def test_set_disjointness_errors_name_the_argument():
    with pytest.raises(ValueError, match="ratio"):
        tasks.get("set_disjointness", ratio=1.0)
    with pytest.raises(ValueError, match="vocab"):
        tasks.get("set_disjointness", vocab=6)
    task = tasks.get("set_disjointness", vocab=64)  # halves of 30 and 31 tokens
    task.sample(1, 33, tasks.generator(0, "train"))  # sets of 8 and 22 fit
    with pytest.raises(ValueError, match="length 128"):
        task.sample(1, 128, tasks.generator(0, "train"))


# --- selective copying ----------------------------------------------------------------------
@pytest.mark.parametrize("length,tokens", [(64, 8), (16, 8), (100, 3)])
def test_selective_copy_labels(length, tokens):
    task, x, y, mask = draw("selective_copy", 32, length, tokens=tokens)
    k = tokens
    assert mask[:, -k:].all() and not mask[:, :-k].any()
    assert (x[:, -k:] == task.MARK).all()
    for xs, ys in zip(x.tolist(), y.tolist()):
        data = [t for t in xs[:-k] if t != task.BLANK]
        assert len(data) == k and all(2 <= t < task.vocab_size for t in data)
        assert ys[-k:] == data


def test_selective_copy_errors_name_the_argument():
    with pytest.raises(ValueError, match="tokens"):
        tasks.get("selective_copy", tokens=0)
    with pytest.raises(ValueError, match="symbols"):
        tasks.get("selective_copy", symbols=0)
    with pytest.raises(ValueError, match="length must be an int >= 8"):
        tasks.get("selective_copy", tokens=4).sample(1, 7, tasks.generator(0, "train"))


@pytest.mark.parametrize("name", ["mqar", "passkey", "set_disjointness", "selective_copy"])
def test_decode_is_readable(name):
    task, x, y, mask = draw(name, 1, 40)
    text = task.decode(x[0], y[0], mask[0])
    assert isinstance(text, str) and text.count("\n") >= 1
