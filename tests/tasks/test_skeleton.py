"""The task contract's defaults (``chance``), the shared sampling skeleton of the recall and copy
tasks, and the task modules' argument checks."""
import dataclasses

import pytest
import torch

from rnnlab import tasks
from rnnlab.tasks import sampling
from rnnlab.tasks.base import Task, check_choice, check_int


@dataclasses.dataclass(frozen=True)
class _Plain(Task):
    """A task that sets only its alphabet: every other property is the base's."""

    name = "plain_test_task"
    classes: int = 7

    @property
    def vocab_size(self) -> int:
        return self.classes


@dataclasses.dataclass(frozen=True)
class _FewOutputs(_Plain):
    @property
    def n_outputs(self) -> int:
        return 4


@dataclasses.dataclass(frozen=True)
class _Real(_Plain):
    kind = "real"


def test_a_subclass_without_override_gets_one_over_n_outputs():
    assert _Plain().chance == pytest.approx(1 / 7)  # n_outputs defaults to the vocabulary
    assert _Plain(classes=2).chance == 0.5
    assert _FewOutputs().chance == 0.25
    assert _Real().chance == 0.0  # R² of the best constant guess


# Token tasks that take the default, with the value of a uniform guess worked out by hand.
DEFAULT_CHANCE = [("parity", {}, 1 / 2), ("tomita", {}, 1 / 2), ("dyck", {}, 1 / 3),
                  ("mod_arith", {}, 1 / 5), ("listops", {}, 1 / 10),
                  ("latching", {"n_mem": 3}, 1 / 3), ("word_problem", {"group": "A4"}, 1 / 12),
                  ("iterated_matrix_sign", {}, 1 / 3),
                  ("selectivbench", {"letters": 3, "instances": 2}, 1 / 7)]


@pytest.mark.parametrize("name,params,chance", DEFAULT_CHANCE)
def test_default_chance_is_one_over_n_outputs(name, params, chance):
    task = tasks.get(name, **params)
    assert type(task).chance is Task.chance, f"{name} should not override chance"
    assert task.chance == pytest.approx(chance) == pytest.approx(1 / task.n_outputs)


# Tasks whose answers use only some classes (or, passkey, whose metric scores whole answers) keep
# their own chance.
OWN_CHANCE = [("mqar", {"vocab": 64}, 1 / 32), ("passkey", {"digits": 2}, 1 / 100),
              ("set_disjointness", {"vocab": 13}, 1 / 10), ("copy", {"symbols": 4}, 1 / 4),
              ("reverse", {"symbols": 5}, 1 / 5), ("selective_copy", {"symbols": 3}, 1 / 3)]


@pytest.mark.parametrize("name,params,chance", OWN_CHANCE)
def test_overridden_chance(name, params, chance):
    task = tasks.get(name, **params)
    assert task.chance == pytest.approx(chance) != pytest.approx(1 / task.n_outputs)


@pytest.mark.parametrize("name", [n for n in tasks.available()
                                  if tasks.get(n).metric == "scaled_accuracy"])
def test_scaled_accuracy_of_a_uniform_guess_is_zero(name):
    # Guessing class c everywhere, averaged over every c, hits 1 / n_outputs of any targets, so
    # the scaled accuracy averages to 0 exactly when chance is 1 / n_outputs.
    task = tasks.get(name)
    x, y, mask = task.sample(16, task.train_lengths[1], tasks.generator(0, "test"))
    scores = [task.score(torch.nn.functional.one_hot(torch.full_like(y, c), task.n_outputs)
                         .float(), y, mask) for c in range(task.n_outputs)]
    assert sum(scores) / len(scores) == pytest.approx(0.0, abs=1e-9)


# --- the skeleton ---------------------------------------------------------------------------
def test_compose_writes_in_order_and_scores_the_answers_only():
    filler = torch.full((2, 8), 9)
    where = torch.tensor([[5, 7], [6, 4]])
    answers = torch.tensor([[1, 2], [3, 4]])
    writes = [(sampling.span(2, 0, 3), torch.tensor([[1, 2, 3], [4, 5, 6]])),
              (sampling.span(2, 2, 4), 0)]  # overwrites position 2, written first
    x, y, mask = sampling.compose(filler, writes, where, answers)
    assert x.tolist() == [[1, 2, 0, 0, 9, 9, 9, 9], [4, 5, 0, 0, 9, 9, 9, 9]]
    assert y.tolist() == [[0, 0, 0, 0, 0, 1, 0, 2], [0, 0, 0, 0, 4, 0, 3, 0]]
    assert mask.dtype == torch.bool and mask.tolist() == (y != 0).tolist()


def test_span_draw_distinct_and_last_position():
    assert sampling.span(2, 1, 7, 2).tolist() == [[1, 3, 5]] * 2
    gen = torch.Generator().manual_seed(0)
    d = sampling.distinct(50, 6, 3, 9, gen)
    assert all(sorted(row) == list(range(3, 9)) for row in d.tolist())
    u = sampling.draw(50, 6, 3, 5, gen)
    assert u.shape == (50, 6) and set(u.unique().tolist()) == {3, 4}
    assert sampling.last_position(2, 3).tolist() == [[False, False, True]] * 2


# Fingerprints of the first batch of each task built on the skeleton, taken from the code before
# the skeleton existed: an edit that changes a task's random draws or their order fails here. (A
# failure right after a torch upgrade means torch's own draws changed instead.)
FINGERPRINTS = {
    "mqar": (359159, 253865, 1346),
    "passkey": (192846, 6415, 1220),
    "set_disjointness": (2846975, 73008, 252),
    "selective_copy": (9519, 10582, 1904),
    "copy": (7531, 10741, 2340),
    "reverse": (30546, 34019, 5925),
}
# Lengths and options the fingerprints were taken at, where a task's defaults have changed since:
# reverse now trains on tensor2tensor's lengths (up to 81) and is teacher-forced by default; its
# draws at 64 are unchanged.
FINGERPRINT_LENGTHS = {"reverse": 64}
FINGERPRINT_OPTIONS = {"reverse": {"teacher_forcing": False}}


def _fingerprint(t: torch.Tensor) -> int:
    flat = t.long().flatten()
    return int((flat * (torch.arange(flat.numel()) % 97 + 1)).sum())


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_skeleton_tasks_keep_their_data(name):
    task = tasks.get(name, **FINGERPRINT_OPTIONS.get(name, {}))
    length = FINGERPRINT_LENGTHS.get(name, task.train_lengths[1])
    sample = task.sample(4, length, tasks.generator(0, "train"))
    assert tuple(_fingerprint(t) for t in sample) == FINGERPRINTS[name]


# --- argument checks ------------------------------------------------------------------------
def test_task_checks_keep_their_message():
    with pytest.raises(ValueError, match=r"^mqar: pairs must be an int >= 1, got 0$"):
        check_int("mqar", "pairs", 0, 1)
    with pytest.raises(ValueError, match=r"in \[1, 7\], got 8"):
        check_int("tomita", "grammar", 8, 1, 7)
    with pytest.raises(TypeError, match="got True"):  # a bool is no int (also a ValueError)
        check_int("copy", "tokens", True, 1)
    with pytest.raises(ValueError, match=r"parity: supervise must be one of \['last', 'all'\]"):
        check_choice("parity", "supervise", "lsat", ("last", "all"))
    with pytest.raises(ValueError, match="random_filler must be a bool"):
        tasks.get("mqar", random_filler=1)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\], got 0"):
        tasks.get("mqar", alpha=0)
    with pytest.raises(ValueError, match=r"edge_prob must be in \(0, 1\], got 0.0"):
        tasks.get("selectivbench", edge_prob=0.0)
    with pytest.raises(ValueError, match=r"seed must be an int >= 0, got -1"):
        tasks.generator(-1, "train")
