"""The Universal Transformer's algorithmic table in the arena: tensor2tensor's copy (``identity``),
``reverse`` and ``addition`` tasks, the ``ut`` model spec (ACT's ponder cost in the loss) and
the extra metrics (sequence accuracy) in the records."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlab import tasks
from rnnlab.arena import ArenaConfig, preset, run_arena, spec
from rnnlab.arena.runner import _resolve
from rnnlab.arena.train import build_model, train_run
from rnnlab.models.universal import UniversalTransformer
from rnnlab.tasks.algorithmic import END, EQUALS, PLUS

from .test_arena import quiet


def _number(digits):
    """Little-endian digits -> int."""
    return sum(d * 10 ** i for i, d in enumerate(digits))


def _parse_addition(row, length):
    """One addition input row -> (a's digits, b's digits), checking the layout on the way."""
    m = (length - 3) // 2
    toks = row.tolist()
    plus = toks.index(PLUS)
    assert toks[m + 1] == EQUALS
    return toks[:plus], toks[plus + 1:m + 1]


def test_addition_hand_checked_case():
    """Find 57 + 8 = 65 among samples of length 9 (m = 3 digits: a = 7 5, b = 8) and read it:
    "=" predicts 5, the step reading 5 predicts 6, the one reading 6 predicts END; nothing else
    is scored."""
    task, gen = tasks.get("addition"), tasks.generator(0, "train")
    for _ in range(200):
        x, y, mask = task.sample(256, 9, gen)
        hit = ((x[:, :5] == torch.tensor([7, 5, PLUS, 8, EQUALS])).all(1)).nonzero()
        if len(hit):
            i = int(hit[0])
            assert x[i, 5:8].tolist() == [5, 6, END]  # teacher forcing: the answer so far
            assert y[i][mask[i]].tolist() == [5, 6, END]
            assert mask[i].tolist() == [False] * 4 + [True] * 3 + [False] * 2
            return
    pytest.fail("57 + 8 never drawn")


@settings(max_examples=25, deadline=None)
@given(length=st.integers(7, 120), seed=st.integers(0, 1000), forced=st.booleans())
def test_addition_targets_are_the_sum(length, seed, forced):
    """Every sample: two numbers of >= 1 digit using all m digits, no leading zero past the
    first digit, and the scored steps hold the sum little-endian then END; with teacher
    forcing they start at "=" and each next step reads the symbol just predicted, without it
    they start after "=" and read END."""
    task = tasks.get("addition", teacher_forcing=forced)
    x, y, mask = task.sample(16, length, tasks.generator(seed, "train"))
    m = (length - 3) // 2
    for row, target, scored in zip(x, y, mask):
        a, b = _parse_addition(row, length)
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) == m
        assert (len(a) == 1 or a[-1] != 0) and (len(b) == 1 or b[-1] != 0)
        answer = target[scored].tolist()
        assert answer[-1] == END and END not in answer[:-1]
        assert answer[:-1] == [int(c) for c in str(_number(a) + _number(b))[::-1]]
        first = int(scored.nonzero()[0])
        assert first == (m + 1 if forced else m + 2)
        if forced:  # each step after a prediction reads it
            assert row[first + 1:first + 1 + len(answer)].tolist() == answer
        else:  # the predicting steps read END
            assert row[first:first + len(answer)].tolist() == [END] * len(answer)


def test_addition_splits_vary_and_bad_input_is_refused():
    task = tasks.get("addition")
    x, _, _ = task.sample(256, 41, tasks.generator(1, "test"))
    assert len({int((row == PLUS).nonzero()) for row in x}) > 10  # l1 ~ U{1..m-1}
    with pytest.raises(ValueError, match="length must be an int >= 7, got 6"):
        task.sample(2, 6, tasks.generator(0, "train"))
    with pytest.raises(TypeError, match="addition: teacher_forcing must be a bool"):
        tasks.get("addition", teacher_forcing="yes")
    assert task.chance == pytest.approx(1 / 11) and task.extra_metrics == ("sequence_accuracy",)


@pytest.mark.parametrize("name, answer", [("identity", lambda d: d),
                                          ("reverse", lambda d: d.flip(1))])
@pytest.mark.parametrize("forced", [True, False])
def test_identity_and_reverse_layout(name, answer, forced):
    """String of n = (L - 1) // 2 digits (tokens 1..10), the delimiter, then n scored
    predictions of the string (identity) or its reverse: from the delimiter on, each next step
    reading the symbol just predicted (teacher forcing), or from the step after it, reading
    blanks; lengths as tensor2tensor's (<= 40 / <= 400 symbols)."""
    task = tasks.get(name, teacher_forcing=forced)
    assert task.train_lengths == (3, 81) and task.test_lengths[-1] == 801
    for length in (3, 4, 81):
        x, y, mask = task.sample(8, length, tasks.generator(0, "train"))
        n = (length - 1) // 2
        data, want = x[:, :n], answer(x[:, :n])
        assert ((data >= 1) & (data <= 10)).all() and (x[:, n] == 11).all()
        first = n if forced else n + 1
        assert mask.sum(1).eq(n).all() and mask[:, first:first + n].all()
        assert y[:, first:first + n].equal(want)
        assert x[:, n + 1:2 * n + 1].equal(want if forced else torch.zeros_like(want))


def test_scores_reports_the_metric_and_the_extras():
    """Char accuracy 3/4 on one example, 4/4 on the other: accuracy 0.875, sequence 0.5."""
    task = tasks.get("reverse")
    targets = torch.tensor([[0, 1, 2, 3, 4], [0, 5, 6, 7, 8]])
    mask = torch.tensor([[False, True, True, True, True]] * 2)
    guess = targets.clone()
    guess[0, 2] = 9
    logits = torch.nn.functional.one_hot(guess, 12).float()
    assert task.scores(logits, targets, mask) == {"accuracy": 0.875, "sequence_accuracy": 0.5}
    parity = tasks.get("parity", supervise="all")  # its own score() is what scores() uses
    x, y, m = parity.sample(4, 6, tasks.generator(0, "train"))
    out = torch.nn.functional.one_hot(y, 2).float()
    assert parity.scores(out, y, m) == {"scaled_accuracy": parity.score(out, y, m)}


def test_ut_model_spec():
    assert spec.model("ut").universal and spec.model("ut(max_steps=3)").options == {
        "max_steps": 3}
    with pytest.raises(ValueError, match=r"unknown option 'max_step' in 'ut\(max_step=3\)' "
                                         r"\(did you mean 'max_steps'\?\)"):
        spec.model("ut(max_step=3)")
    with pytest.raises(ValueError, match="option d_model in 'ut.d_model=8.' is set by the"):
        spec.model("ut(d_model=8)")
    with pytest.raises(ValueError, match="act in 'ut.act=2.' must be true or false"):
        spec.model("ut(act=2)")
    with pytest.raises(ValueError, match="cannot build 'ut.eps=1.5.'.*eps"):
        _resolve(ArenaConfig(models=["ut(eps=1.5)"], tasks=["reverse"]))
    cfg = ArenaConfig(models=["ut"], tasks=["addition"], d_model=16)
    model = build_model(spec.model("ut(max_steps=2)"), tasks.get("addition"), cfg)
    assert isinstance(model, UniversalTransformer) and model.max_steps == 2
    assert model.head.out_features == 13 and model.d_model == 16


def test_the_ponder_cost_is_in_the_training_loss(tmp_path):
    """The first step's loss grows by the ponder cost: ponder_weight 5 vs 0, the same seed."""
    cfg = ArenaConfig(models=["ut"], tasks=["reverse"], d_model=8, steps=1, batch=4,
                      eval_examples=4, early_stop=None)
    task = tasks.get("reverse")
    losses = {}
    for w in (0.0, 5.0):
        seen = []
        result = train_run(spec.model(f"ut(ponder_weight={w})"), task, 0, cfg,
                           tmp_path / str(w), lambda step, loss, val: seen.append(loss))
        losses[w] = seen[0]
    # N + R >= 1 at every position, so the ponder cost adds at least 5 to the loss
    assert losses[5.0] - losses[0.0] >= 5.0 - 1e-4
    assert result["engine"] == "attention"
    assert set(result["extra_scores"][801]) == {"sequence_accuracy"}
    assert set(result["act_depth"]) == set(task.test_lengths)


def test_the_records_carry_the_extra_metric(tmp_path):
    cfg = ArenaConfig(models=["gru", "ut(max_steps=2)"], tasks=["identity"], d_model=8,
                      steps=2, batch=4, eval_examples=4, early_stop=None,
                      expected={("gru", "identity"): 0.5})
    run_arena(cfg, tmp_path, quiet())
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").open()]
    assert len(records) == 2 * 4
    for rec in records:
        assert rec["metric"] == "accuracy" and 0 <= rec["sequence_accuracy"] <= rec["value"]
    report = (tmp_path / "results.md").read_text()  # a table per metric, the extra one after
    assert report.index("### identity — accuracy") < report.index(
        "### identity — sequence_accuracy")
    main, extra = report.split("### identity — sequence_accuracy")
    assert "| 0.500 |" in main and "0.500" not in extra  # expected values: the main metric's
    assert (tmp_path / "plots" / "identity.png").stat().st_size > 0
    assert (tmp_path / "plots" / "identity_sequence_accuracy.png").stat().st_size > 0


def test_tasks_list_and_show_name_the_extra_metric():
    from typer.testing import CliRunner

    from rnnlab.cli import app
    shown = CliRunner().invoke(app, ["tasks", "show", "addition", "--samples", "1"])
    assert shown.exit_code == 0 and "metric=accuracy + sequence_accuracy" in shown.output
    assert "= " in shown.output and "little-endian" in shown.output


def test_the_algorithmic_preset_states_the_ut_table():
    cfg = preset("algorithmic")
    # the paper's UT in one stream: random offsets, no RoPE, positions restart at the delimiter
    ut = "ut(position_offset=800,restart_at=11,rotary=false)"
    # and the control: a Transformer of 2 distinct layers with the same positions
    control = "ut(tied=false,act=false,max_steps=2,position_offset=800,restart_at=11,rotary=false)"
    assert cfg.models == ["lstm", "transformer", ut, control, "ut(position_offset=800)", "ut"]
    assert cfg.expected[(ut, "reverse")] > cfg.expected[("lstm", "reverse")]
    assert spec.model(ut).options == {"position_offset": 800, "restart_at": 11, "rotary": False}
    assert spec.model(control).options == {**spec.model(ut).options, "tied": False,
                                           "act": False, "max_steps": 2}
    for name in cfg.tasks:  # 11 is the delimiter of every task of the table
        task = spec.task(name)[1]
        x, _, _ = task.sample(2, 21, tasks.generator(0, "train"))
        assert (x == 11).sum(1).ge(1).all() and (x[:, :(x == 11).int().argmax(1).min()] < 11).all()
    assert "ut" in preset("full").models and ut not in preset("full").models
    assert control not in preset("full").models
