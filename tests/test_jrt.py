"""JRT-Prompt: repeat_context by hand on small tensors, the task wrapper, the evaluation."""
import pytest
import torch
from rich.console import Console

from rnnlab import tasks
from rnnlab.tools.jrt import RepeatedContext, context_len, repeat_context
from rnnlab.train.jrt import JRTConfig, print_table, run


def test_repeat_context_by_hand():
    x = torch.tensor([[1, 2, 3, 9, 8], [4, 5, 6, 7, 7]])
    y = torch.tensor([[0, 0, 0, 5, 6], [0, 0, 0, 1, 2]])
    m = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]]).bool()
    rx, ry, rm = repeat_context(x, 3, y, m)
    assert rx.tolist() == [[1, 2, 3, 1, 2, 3, 9, 8], [4, 5, 6, 4, 5, 6, 7, 7]]
    assert ry.tolist() == [[0, 0, 0, 0, 0, 0, 5, 6], [0, 0, 0, 0, 0, 0, 1, 2]]
    assert rm.tolist() == [[False] * 6 + [True, True], [False] * 7 + [True]]
    assert rm.dtype == torch.bool
    assert repeat_context(x, 2, times=3).tolist()[0] == [1, 2, 1, 2, 1, 2, 3, 9, 8]
    assert repeat_context(x, 0).equal(x) and repeat_context(x, 3, times=1).equal(x)
    assert repeat_context(x, 5).tolist()[1] == [4, 5, 6, 7, 7] * 2
    _, none_targets, only_mask = repeat_context(x, 1, mask=m)
    assert none_targets is None and only_mask.shape == (2, 6)


def test_repeat_context_real_valued_inputs():
    x = torch.arange(12.0).view(1, 4, 3)
    out = repeat_context(x, 1)
    assert out.shape == (1, 5, 3)
    assert out[0, 0].equal(x[0, 0]) and out[0, 1:].equal(x[0])


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(3).long(), 1), "inputs"),
    ((torch.zeros(2, 4).long(), 5), "context_len"),
    ((torch.zeros(2, 4).long(), -1), "context_len"),
    ((torch.zeros(2, 4).long(), 2, torch.zeros(2, 3).long()), "targets"),
])
def test_repeat_context_errors_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        repeat_context(*args)
    with pytest.raises(ValueError, match="times"):
        repeat_context(torch.zeros(2, 4).long(), 2, times=0)


def test_set_disjointness_repeats_both_sets_before_the_question():
    task = tasks.get("set_disjointness", vocab=64)
    x, y, _ = task.sample(3, 12, tasks.generator(0, "train"))
    n = context_len(task, 12)
    assert n == 11
    rx, ry, rm = RepeatedContext(task).sample(3, 12, tasks.generator(0, "train"))
    assert rx.shape == (3, 23)
    assert rx[:, :11].equal(x[:, :11]) and rx[:, 11:].equal(x)
    assert rx[:, -1].eq(2).all()  # the question: the final separator
    assert rm.sum() == 3 and rm[:, -1].all() and ry[:, -1].equal(y[:, -1])


def test_mqar_repeats_the_key_value_prefix_only():
    task = tasks.get("mqar", vocab=32, pairs=4)
    x, y, m = task.sample(2, 20, tasks.generator(0, "train"))
    wrapped = RepeatedContext(task)
    rx, ry, rm = wrapped.sample(2, 20, tasks.generator(0, "train"))
    assert rx.shape == (2, 28) and rx[:, :8].equal(x[:, :8]) and rx[:, 8:].equal(x)
    assert ry[rm].equal(y[m])  # same answers, in the same order
    assert wrapped.vocab_size == 32 and wrapped.score is not None  # the rest is the task's
    assert "read 2x" in wrapped.describe()


def test_the_prefix_covers_every_copy_of_the_context():
    """A prefix-mode model reads the whole repeated context both ways: mqar's 2 * pairs
    key-value steps in each of the copies, and set disjointness's every step before the final
    separator."""
    mqar = tasks.get("mqar", vocab=32, pairs=4)
    for times in (1, 2, 3):
        x, _, _ = RepeatedContext(mqar, times).sample(2, 20, tasks.generator(0, "train"))
        assert RepeatedContext(mqar, times).prefix(x).tolist() == [8 * times] * 2
    sets = tasks.get("set_disjointness", vocab=64)
    for times in (1, 2, 3):
        x, _, _ = RepeatedContext(sets, times).sample(2, 12, tasks.generator(0, "train"))
        assert RepeatedContext(sets, times).prefix(x).tolist() == [x.shape[1] - 1] * 2


def test_tasks_without_a_context_are_refused():
    with pytest.raises(ValueError, match="task must be"):
        RepeatedContext(tasks.get("parity"))
    with pytest.raises(ValueError, match="times"):
        RepeatedContext(tasks.get("mqar"), times=0)


def test_evaluation_runs_resumes_and_prints(tmp_path):
    cfg = JRTConfig(models=["gru"], tasks=["set_disjointness(vocab=32)", "mqar(vocab=16, pairs=2)"],
                    length=10, d_model=8, n_layers=1, steps=3, batch=4, eval_examples=16,
                    out=str(tmp_path))
    console = Console(record=True, width=200)
    result = run(cfg, console)
    assert [(r["task"], r["model"]) for r in result["rows"]] == [
        ("set_disjointness(vocab=32)", "gru"), ("mqar(vocab=16, pairs=2)", "gru")]
    for row in result["rows"]:
        assert 0 <= row["once"] <= 1 and 0 <= row["twice"] <= 1
        assert row["steps_once"] == row["steps_twice"] == 3
    assert (tmp_path / "results.json").exists()
    again = run(cfg, Console(record=True, width=200))  # every run resumes at its end
    assert [r["once"] for r in again["rows"]] == [r["once"] for r in result["rows"]]
    print_table(result, console)
    assert "read twice" in console.export_text()


def test_evaluation_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        run(JRTConfig(steps=0, out=str(tmp_path)), Console())
    with pytest.raises(ValueError, match="task must be"):
        run(JRTConfig(tasks=["parity"], out=str(tmp_path)), Console())
    with pytest.raises(ValueError, match="length"):
        run(JRTConfig(tasks=["mqar(pairs=8)"], length=10, out=str(tmp_path)), Console())


# --- reliability (issue 12) ---------------------------------------------------------------

def _tiny(out, **kw) -> JRTConfig:
    return JRTConfig(**{**dict(models=["gru"], tasks=["mqar(vocab=16, pairs=2)"], length=10,
                               d_model=8, n_layers=1, steps=2, batch=4, eval_examples=8,
                               out=str(out)), **kw})


def _files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def test_runs_of_other_sizes_are_refused_before_any_write(tmp_path):
    quiet = Console(file=open("/dev/null", "w"))
    run(_tiny(tmp_path), quiet)
    before = _files(tmp_path)
    # the run directories are named by model, task, length and seed, not by size: resuming
    # them with another width would mix two models
    with pytest.raises(ValueError, match=r"--out: .* other settings \(d_model 8 there, 16 now"):
        run(_tiny(tmp_path, d_model=16), quiet)
    assert _files(tmp_path) == before
    assert run(_tiny(tmp_path, steps=3), quiet)["rows"][0]["steps_once"] == 3  # a raised budget


@pytest.mark.parametrize("change, match", [
    (dict(models=[]), r"--models: expected a comma-separated list of distinct specs, got none"),
    (dict(models=["gru", "gru"]), r"--models: .* distinct"),
    (dict(models=["deltanet(heads=3)"]), r"--models: cannot build 'deltanet\(heads=3\)'"),
    (dict(lr=float("nan")), r"--lr: expected a finite number > 0, got nan"),
    (dict(seed=-1), r"--seed: expected an integer >= 0, got -1"),
    (dict(n_layers=2 ** 30), r"--d-model/--layers/--length: a training step needs"),
    (dict(device="cuda:99"), r"--device"),
])
def test_bad_settings_are_refused_with_nothing_written(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        run(_tiny(tmp_path / "out", **change), Console(file=open("/dev/null", "w")))
    assert not (tmp_path / "out").exists()


def test_a_second_writer_is_refused(tmp_path):
    from rnnlab.tools.files import directory_lock
    with directory_lock(tmp_path, "test"):
        with pytest.raises(ValueError, match="in use by another rnnlab process"):
            run(_tiny(tmp_path), Console(file=open("/dev/null", "w")))
    assert not (tmp_path / "runs").exists()
