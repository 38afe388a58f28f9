"""The arena records how deep a Universal Transformer with ACT computes (``act_depth``) and
reports it in one table: the recorded depth is the trained model's on the test sequences."""
import json

import pytest
import torch

from rnnlab import tasks
from rnnlab.arena import ArenaConfig, report, run_arena, spec, store
from rnnlab.arena.act_depth import TITLE, depth_rows
from rnnlab.arena.runs import run_dir
from rnnlab.arena.train import act_depth, build_model, evaluate_all
from rnnlab.models import SequenceModel
from rnnlab.models.universal import UniversalTransformer
from rnnlab.tools import checkpoint

from .test_arena import quiet, tiny


def test_act_depth_is_the_mean_of_acts_steps_and_only_for_act():
    torch.manual_seed(0)
    ut = UniversalTransformer(4, 2, d_model=8, max_steps=4, halting_bias=-1.0)
    assert act_depth(ut) is None  # no forward yet
    ut(torch.randint(0, 4, (3, 7)))
    assert ut.n_updates.shape == (3, 7) and len(set(ut.n_updates.flatten().tolist())) > 1
    assert act_depth(ut) == pytest.approx(ut.n_updates.double().mean().item())
    fixed = UniversalTransformer(4, 2, d_model=8, act=False, max_steps=2)
    fixed(torch.randint(0, 4, (3, 7)))
    assert act_depth(fixed) is None  # a fixed depth is no measurement
    rnn = SequenceModel(4, 2, d_model=8, n_layers=1, mixer="gru")
    rnn(torch.randint(0, 4, (3, 7)))
    assert act_depth(rnn) is None


def test_evaluate_all_weights_the_depth_of_each_chunk_by_its_size(monkeypatch):
    """Two chunks of unequal size (3 + 2 sequences): the depth is the mean over all five."""
    import rnnlab.arena.train as train
    monkeypatch.setattr(train, "EVAL_CHUNK", 3)
    torch.manual_seed(0)
    task = spec.task("parity")[1]
    ut = UniversalTransformer(task.vocab_size, task.n_outputs, d_model=8, max_steps=5,
                              halting_bias=-0.5, kind=task.kind)
    got = evaluate_all(ut, task, 9, 5, torch.Generator().manual_seed(3), "cpu")
    x, _, _ = task.sample(3, 9, gen := torch.Generator().manual_seed(3))
    ut.eval()
    with torch.no_grad():
        ut(x)
        steps = [ut.n_updates.double()]
        ut(task.sample(2, 9, gen)[0])
        steps.append(ut.n_updates.double())
    assert got["act_depth"] == pytest.approx(torch.cat(steps).mean().item())
    assert set(got) == {task.metric, *task.extra_metrics, "act_depth"}


def test_ut_records_carry_the_trained_models_depth_on_the_test_sequences(tmp_path):
    cfg = tiny(models=["ut(max_steps=3,halting_bias=-1)", "ut(act=false,max_steps=2)", "gru"],
               tasks=["parity"], expected={}, early_stop=None)
    records = run_arena(cfg, tmp_path, quiet())
    deep = [r for r in records if r["model"].startswith("ut(max")]
    assert deep and all("act_depth" not in r for r in records if r not in deep)
    # the checkpoint's model on the test stream the arena drew, length by length, again
    model_spec, (_, task) = spec.model(cfg.models[0]), spec.task("parity")
    model = build_model(model_spec, task, cfg)
    checkpoint.load(run_dir(tmp_path, model_spec, "parity", 0) / "checkpoint.safetensors", model,
                    torch.optim.AdamW(model.parameters()), {})
    model.eval()
    gen = tasks.generator(0, "test")
    with torch.no_grad():
        for n in task.test_lengths:
            model(task.sample(cfg.eval_examples, n, gen)[0])
            record = next(r for r in deep if r["length"] == n)
            assert 1.0 <= record["act_depth"] <= 3.0
            assert record["act_depth"] == round(model.n_updates.double().mean().item(), 6)
    assert [json.loads(line).get("act_depth") for line in
            (tmp_path / "results.jsonl").read_text().splitlines()] == \
        [r.get("act_depth") for r in records]
    rows = depth_rows(cfg, records)
    assert [row[:4] for row in rows] == [[cfg.models[0], "parity", task.metric, 1]]
    # the learning curve has the depth at each validation point (the UT with ACT only)
    curves = {c["model"]: c for c in store.load_curves(tmp_path)}
    assert {m: "act_depth" in c for m, c in curves.items()} == {
        cfg.models[0]: True, cfg.models[1]: False, "gru": False}
    depth = curves[cfg.models[0]]["act_depth"]
    assert [p[0] for p in depth] == [p[0] for p in curves[cfg.models[0]]["curve"]] == [3, 6]
    assert all(1.0 <= p[1] <= 3.0 for p in depth)
    for name in ("results.md", "report.html"):
        assert TITLE in (tmp_path / name).read_text(), name
    assert TITLE in [t.title for t in report.rich_tables(cfg, records)]


def test_the_depth_curve_is_the_validations_depth_and_survives_a_resume(tmp_path):
    """Each point is the depth of the validation batch the run scored there; a run resumed
    from its checkpoint continues the same depth curve."""
    import rnnlab.arena.train as train
    model_spec, (_, task) = spec.model("ut(max_steps=3,halting_bias=-1)"), spec.task("parity")
    seen = []
    evaluate_all_ = train.evaluate_all

    def spy(model, *args):
        scores = evaluate_all_(model, *args)
        seen.append(scores["act_depth"])
        return scores
    cfg = tiny(steps=7, early_stop=None, checkpoint_every=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "evaluate_all", spy)
        straight = train.train_run(model_spec, task, 0, cfg, tmp_path / "straight")
    assert straight["depth_curve"] == [[3, round(seen[0], 6)], [6, round(seen[1], 6)]]

    class Stop(Exception):
        pass

    def stop_at_5(step, *_):
        if step == 5:
            raise Stop
    with pytest.raises(Stop):
        train.train_run(model_spec, task, 0, cfg, tmp_path / "resumed", stop_at_5)
    resumed = train.train_run(model_spec, task, 0, cfg, tmp_path / "resumed")
    assert resumed["resumed_from"] == 4 and resumed["depth_curve"] == straight["depth_curve"]
    gru = train.train_run(spec.model("gru"), task, 0, cfg, tmp_path / "gru")
    assert gru["depth_curve"] == []


def test_a_curve_whose_depth_points_are_damaged_is_no_curve():
    entry = {"model": "ut", "task": "parity", "seed": 0, "metric": "accuracy",
             "curve": [[3, 0.5, 0.25]]}
    assert store._is_curve(entry) and store._is_curve({**entry, "act_depth": [[3, 1.5]]})
    for bad in ([[3]], [[3, "deep"]], [[3.5, 1.0]], [[3, 1.0, 2.0]], {"3": 1.0}, [3, 1.0]):
        assert not store._is_curve({**entry, "act_depth": bad}), bad


def _record(model, task, seed, length, value, depth=None):
    r = {"model": model, "task": task, "seed": seed, "length": length, "metric": "accuracy",
         "value": value}
    return r if depth is None else {**r, "act_depth": depth}


def test_depth_rows_average_the_seeds_in_the_grids_order():
    cfg = ArenaConfig(models=["ut(max_steps=2)", "ut", "gru"], tasks=["parity", "dlr_shift"],
                      aggregate="best")
    records = [
        _record("ut", "parity", 0, 8, 0.5, 2.0), _record("ut", "parity", 0, 16, 0.5, 3.0),
        _record("ut", "parity", 0, 32, 0.4, 5.0), _record("ut", "parity", 1, 8, 1.0, 4.0),
        _record("ut", "parity", 1, 16, 0.9, 1.0), _record("ut", "parity", 1, 32, 0.8, 1.0),
        _record("ut", "dlr_shift", 0, 64, 0.7, 1.5),  # tested only at its train length
        _record("ut", "dlr_shift", 1, 64, 0.1),  # recorded before depth was: not in the row
        _record("ut(max_steps=2)", "parity", 0, 8, 0.6, "deep"),  # not a number: left out
        _record("ut(max_steps=2)", "parity", 1, 8, 0.6, True),  # nor a bool
        _record("gru", "parity", 0, 8, 1.0),
        _record("ut(halting_bias=0)", "parity", 0, 8, 1.0, 2.0),  # not in this grid
    ]
    assert depth_rows(cfg, records) == [
        ["ut", "parity", "accuracy", 2, 0.75, 3.0, pytest.approx((2.0 + 3.0) / 2)],
        ["ut", "dlr_shift", "accuracy", 1, 0.7, 1.5, None]]
    assert TITLE in report.markdown(cfg, records)
    without = [r for r in records if "act_depth" not in r]
    assert depth_rows(cfg, without) == [] and TITLE not in report.markdown(cfg, without)
