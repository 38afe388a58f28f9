"""Label correctness of the copying tasks: copy-memory and reverse."""
import pytest
import torch

from rnnlab import tasks


def draw(name, batch, length, **params):
    task = tasks.get(name, **params)
    x, y, mask = task.sample(batch, length, tasks.generator(3, "test"))
    return task, x, y, mask


def test_copy_hand_checked_layout():
    _, x, y, mask = draw("copy", 1, 9, tokens=3, symbols=4)
    s, delim = x[0, :3].tolist(), 5
    assert all(1 <= t <= 4 for t in s)
    assert x[0].tolist() == s + [0, 0, delim, 0, 0, 0]
    assert y[0].tolist() == [0] * 6 + s
    assert mask[0].tolist() == [False] * 6 + [True] * 3


@pytest.mark.parametrize("length,tokens", [(21, 10), (64, 10), (200, 4)])
def test_copy_outputs_equal_inputs(length, tokens):
    task, x, y, mask = draw("copy", 32, length, tokens=tokens)
    k = tokens
    assert torch.equal(y[:, -k:], x[:, :k])
    assert mask[:, -k:].all() and not mask[:, :-k].any()
    assert (x[:, length - k - 1] == task.symbols + 1).all()
    assert (x[:, k:length - k - 1] == 0).all() and (x[:, -k:] == 0).all()
    assert ((x[:, :k] >= 1) & (x[:, :k] <= task.symbols)).all()


def test_reverse_hand_checked_layout():
    _, x, y, mask = draw("reverse", 1, 8, symbols=10, teacher_forcing=False)  # n = 3, 1 blank
    s, delim = x[0, :3].tolist(), 11
    assert x[0].tolist() == s + [delim, 0, 0, 0, 0]
    assert y[0].tolist() == [0] * 4 + s[::-1] + [0]
    assert mask[0].tolist() == [False] * 4 + [True] * 3 + [False]


def test_reverse_teacher_forced_hand_checked_layout():
    """The delimiter predicts the last symbol; each next step reads the one just predicted."""
    _, x, y, mask = draw("reverse", 1, 8, symbols=10)  # n = 3, one trailing blank
    s, delim = x[0, :3].tolist(), 11
    assert x[0].tolist() == s + [delim] + s[::-1] + [0]
    assert y[0].tolist() == [0] * 3 + s[::-1] + [0, 0]
    assert mask[0].tolist() == [False] * 3 + [True] * 3 + [False] * 2


@pytest.mark.parametrize("length", [3, 4, 63, 64, 257])
def test_reverse_outputs_are_reversed_inputs(length):
    task, x, y, mask = draw("reverse", 16, length, teacher_forcing=False)
    n = (length - 1) // 2
    assert torch.equal(y[:, n + 1:2 * n + 1], x[:, :n].flip(1))
    assert int(mask.sum(1).min()) == int(mask.sum(1).max()) == n
    assert mask[:, n + 1:2 * n + 1].all()
    assert (x[:, n] == task.symbols + 1).all() and (x[:, n + 1:] == 0).all()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="tokens"):
        tasks.get("copy", tokens=0)
    with pytest.raises(ValueError, match="symbols"):
        tasks.get("copy", symbols=0)
    with pytest.raises(ValueError, match="symbols"):
        tasks.get("reverse", symbols=-1)
    task = tasks.get("copy", tokens=5)
    assert task.min_length == 11 and tasks.get("copy").min_length == type(task).min_length
    with pytest.raises(ValueError, match="length must be an int >= 11"):
        task.sample(1, 10, tasks.generator(0, "train"))
    with pytest.raises(ValueError, match="length must be an int >= 3"):
        tasks.get("reverse").sample(1, 2, tasks.generator(0, "train"))


@pytest.mark.parametrize("name", ["copy", "reverse"])
def test_decode_is_readable(name):
    task, x, y, mask = draw(name, 1, 25)
    text = task.decode(x[0], y[0], mask[0])
    assert "|" in text and text.count("\n") == 1
