"""Generic checks over every registered task: a new task is tested without anyone writing one."""
import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks import metrics

NAMES = tasks.available()


def _length(task):
    return task.train_lengths[1]


def test_registry_lists_the_issue_tasks():
    wanted = {"parity", "mod_arith", "word_problem", "tomita", "dyck", "selective_copy", "mqar",
              "selectivbench", "passkey", "set_disjointness", "copy", "reverse", "listops",
              "dlr_shift", "dlr_context_shift", "latching", "iterated_matrix_sign", "sort",
              "convex_hull", "identity", "addition"}
    assert wanted <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_ranges(name):
    task = tasks.get(name)
    assert task.kind in ("tokens", "real", "pointer") and task.metric in metrics.METRICS
    lo, hi = task.train_lengths
    assert task.min_length <= lo <= hi and task.test_lengths[0] == hi
    assert list(task.test_lengths) == sorted(task.test_lengths)
    gen = tasks.generator(0, "train")
    for length in sorted({lo, hi, task.test_lengths[-1]}):
        x, y, mask = task.sample(5, length, gen)
        out_length = y.shape[1] if task.kind == "pointer" else length  # pointer: L_out answers
        assert mask.shape == (5, out_length) and mask.dtype == torch.bool
        assert mask.any(dim=1).all(), "every example scores at least one position"
        if task.kind == "pointer":  # indices into the n = length inputs, then extra choices
            assert x.shape == (5, length, task.vocab_size) and x.is_floating_point()
            assert y.dtype == torch.long and torch.isfinite(x).all()
            assert 0 <= y.min() and y.max() < length + task.n_outputs
        elif task.kind == "tokens":
            assert x.shape == (5, length) and x.dtype == torch.long
            assert y.shape == (5, length) and y.dtype == torch.long
            assert 0 <= x.min() and x.max() < task.vocab_size
            assert 0 <= y[mask].min() and y[mask].max() < task.n_outputs
        else:
            assert x.shape == (5, length, task.vocab_size) and x.is_floating_point()
            assert y.shape == (5, length, task.n_outputs) and y.is_floating_point()
            assert torch.isfinite(x).all() and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_from_the_seed_and_splits_differ(name):
    task = tasks.get(name)
    n = _length(task)
    a = task.sample(8, n, tasks.generator(3, "train"))
    b = task.sample(8, n, tasks.generator(3, "train"))
    c = task.sample(8, n, tasks.generator(3, "test"))
    d = task.sample(8, n, tasks.generator(4, "train"))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0]), "train and test streams must differ"
    assert not torch.equal(a[0], d[0]), "seeds must differ"


def test_train_and_test_seeds_never_coincide():
    train = {tasks.generator(s, "train").initial_seed() for s in range(1000)}
    test = {tasks.generator(s, "test").initial_seed() for s in range(1000)}
    assert not train & test


@pytest.mark.parametrize("name", NAMES)
def test_perfect_outputs_score_one_and_loss_is_finite(name):
    task = tasks.get(name)
    x, y, mask = task.sample(6, _length(task), tasks.generator(1, "train"))
    if task.kind != "real":
        classes = task.n_outputs + (x.shape[1] if task.kind == "pointer" else 0)
        perfect = torch.nn.functional.one_hot(y, classes).float() * 10  # (B, T, C)
    else:
        perfect = y.clone()
    assert task.score(perfect, y, mask) == pytest.approx(1.0)
    assert torch.isfinite(task.loss(perfect, y, mask))
    noisy = perfect + torch.randn(perfect.shape, generator=torch.Generator().manual_seed(0))
    assert task.score(noisy, y, mask) <= 1.0 + 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_name_themselves(name):
    task = tasks.get(name)
    gen = tasks.generator(0, "train")
    with pytest.raises(ValueError, match="length"):
        task.sample(2, task.min_length - 1, gen)
    with pytest.raises(ValueError, match="batch"):
        task.sample(0, _length(task), gen)
    with pytest.raises(TypeError, match="generator"):
        task.sample(2, _length(task), 0)


@pytest.mark.parametrize("name", NAMES)
def test_decode_is_readable_text(name):
    task = tasks.get(name)
    x, y, mask = task.sample(1, task.train_lengths[0], tasks.generator(0, "train"))
    text = task.decode(x[0], y[0], mask[0])
    assert isinstance(text, str) and text.strip()


def test_unknown_task_and_parameter():
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        tasks.get("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        tasks.get("parity", colour="red")
    with pytest.raises(ValueError, match="supervise"):
        tasks.get("parity", supervise="middle")
    with pytest.raises(ValueError, match="split"):
        tasks.generator(0, "valid")


def test_parity_labels_by_hand():
    task = tasks.get("parity", supervise="all")
    gen = tasks.generator(0, "train")
    x, y, mask = task.sample(4, 9, gen)
    for bits, par in zip(x.tolist(), y.tolist()):
        assert par == [sum(bits[:t + 1]) % 2 for t in range(9)]
    assert mask.all()
    _, _, last = tasks.get("parity").sample(4, 9, gen)
    assert last[:, -1].all() and not last[:, :-1].any()


def test_metrics_by_hand():
    logits = torch.tensor([[[2., 0.], [0., 1.], [1., 0.]], [[0., 1.], [0., 1.], [1., 0.]]])
    targets = torch.tensor([[0, 1, 1], [1, 1, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    # example 0: 2/3 right, example 1: 1/1 right -> mean of per-example accuracies
    assert metrics.accuracy(logits, targets, mask) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.sequence_accuracy(logits, targets, mask) == pytest.approx(0.5)
    assert metrics.compute("scaled_accuracy", logits, targets, mask, chance=0.5) == \
        pytest.approx(((2 / 3 + 1) / 2 - 0.5) / 0.5)
    y = torch.tensor([[[1.], [2.], [3.]]])
    full = torch.ones(1, 3, dtype=torch.bool)
    assert metrics.r2(y, y, full) == 1.0
    assert metrics.r2(torch.full_like(y, 2.0), y, full) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="name"):
        metrics.compute("f1", logits, targets, mask)
    with pytest.raises(ValueError, match="no position"):
        metrics.accuracy(logits, targets, torch.zeros_like(mask))
