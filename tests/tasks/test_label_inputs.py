"""Every task's public ``label`` refuses what is not its tokens, naming ``inputs``: a negative
token would otherwise index from the end of a table and give a wrong label silently."""
import pytest
import torch

from rnnlab import tasks

LABELLED = [name for name in tasks.available() if hasattr(tasks.task_class(name), "label")]


def test_the_labelled_tasks_are_found():
    assert {"word_problem", "mod_arith", "tomita", "dyck", "listops"} <= set(LABELLED)


@pytest.mark.parametrize("name", LABELLED)
def test_label_refuses_what_is_not_its_tokens(name):
    task = tasks.get(name)
    top = task.vocab_size - 1
    with pytest.raises(ValueError, match=rf"{name}.label: inputs: expected tokens in \[0, "
                                         rf"{top}\], got \[-1, 0\]"):
        task.label(torch.tensor([[0, -1, 0]]))
    with pytest.raises(ValueError, match=rf"expected tokens in \[0, {top}\], got \[0, {top + 1}\]"):
        task.label(torch.tensor([[0, top + 1]]))
    with pytest.raises(ValueError, match=r"inputs: expected shape \(B, T\), got \(3,\)"):
        task.label(torch.tensor([0, 0, 0]))
    with pytest.raises(TypeError, match="inputs: expected a torch.long tensor"):
        task.label(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="got list"):
        task.label([[0, 0]])


@pytest.mark.parametrize("name", LABELLED)
def test_label_of_a_sample_is_its_targets_where_scored(name):
    """The check passes every sample the task draws (its own inputs are in range)."""
    task = tasks.get(name)
    length = max(task.min_length, task.train_lengths[0])
    inputs, targets, mask = task.sample(4, length, tasks.generator(0, "train"))
    assert torch.equal(task.label(inputs)[mask], targets[mask])
