"""Label correctness of the DLR Shift and ContextShift tasks."""
import math

import pytest
import torch

from rnnlab import tasks


def draw(name, batch, length, **params):
    task = tasks.get(name, **params)
    x, y, mask = task.sample(batch, length, tasks.generator(1, "train"))
    return task, x, y, mask


def check_inputs(x, length):
    assert torch.allclose(x[..., 0].abs().amax(dim=1), torch.ones(x.shape[0]))
    angle = 2 * math.pi * torch.arange(length) / length
    assert torch.allclose(x[..., 1], angle.cos().expand(x.shape[0], -1))
    assert torch.allclose(x[..., 2], angle.sin().expand(x.shape[0], -1))


@pytest.mark.parametrize("length,outputs,shifts", [(64, 4, [0, 16, 32, 48]),
                                                   (10, 3, [0, 3, 6]), (7, 8, [0, 0, 1, 2, 3,
                                                                               4, 5, 6])])
def test_shift_targets_are_shifted_inputs(length, outputs, shifts):
    _, x, y, mask = draw("dlr_shift", 8, length, outputs=outputs)
    assert y.shape == (8, length, outputs) and mask.all()
    check_inputs(x, length)
    for h, s in enumerate(shifts):
        assert (y[:, :s, h] == 0).all()
        assert torch.equal(y[:, s:, h], x[:, :length - s, 0])


def test_context_shift_targets_follow_the_encoded_shift():
    length = 64
    _, x, y, mask = draw("dlr_context_shift", 256, length)
    assert y.shape == (256, length, 1) and mask.all()
    check_inputs(x, length)
    seen = set()
    for xs, ys in zip(x[..., 0], y[..., 0]):
        angle = math.atan2(float(xs[1]), float(xs[0])) % (2 * math.pi)
        s = round(angle * length / (2 * math.pi)) % length
        assert 0 <= s <= length - 3
        assert (ys[:s] == 0).all() and torch.equal(ys[s:], xs[:length - s])
        seen.add(s)
    assert 0 in seen or 1 in seen or 2 in seen  # the whole range U{0..L-3} is drawn
    assert max(seen) >= length - 6 and len(seen) > 40


def test_r2_of_the_targets_is_one():
    task, _, y, mask = draw("dlr_shift", 4, 32)
    assert task.score(y, y, mask) == 1.0
    assert task.score(torch.zeros_like(y), y, mask) < 0.1


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="outputs"):
        tasks.get("dlr_shift", outputs=0)
    with pytest.raises(ValueError, match="length must be an int >= 3"):
        tasks.get("dlr_context_shift").sample(1, 2, tasks.generator(0, "train"))


@pytest.mark.parametrize("name", ["dlr_shift", "dlr_context_shift"])
def test_decode_is_readable(name):
    task, x, y, mask = draw(name, 1, 20)
    assert "shift" in task.decode(x[0], y[0], mask[0])
