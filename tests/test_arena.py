"""The arena end to end on a tiny grid: files, records, resume, exact continuation, errors."""
import json
import re

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from rnnlab.arena import ArenaConfig, preset, report, run_arena, spec
from rnnlab.arena.config import PRESETS
from rnnlab.arena.runner import _resolve
from rnnlab.arena.train import run_ids, train_run
from rnnlab.cli import app


def tiny(**kw):
    base = dict(models=["gru", "mamba[-1,1]", "transformer"], tasks=["parity", "mqar"],
                seeds=[0], d_model=8, steps=6, batch=4, eval_every=3, eval_examples=6,
                checkpoint_every=2, expected={("gru", "parity"): 1.0})
    return ArenaConfig(**{**base, **kw})


def quiet():
    return Console(file=open("/dev/null", "w"), width=140)


def test_tiny_grid_end_to_end(tmp_path):
    records = run_arena(tiny(), tmp_path, quiet())
    for name in ("config.json", "results.jsonl", "results.csv", "results.md", "report.html",
                 "plots/parity.png", "plots/mqar.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(records) == 3 * (4 + 3)  # models × (parity + mqar test lengths)
    for rec in map(json.loads, lines):
        assert {"model", "task", "seed", "length", "metric", "value"} <= set(rec)
    assert {(r["model"], r["task"]) for r in records} == {
        (m, t) for m in ("gru", "mamba[-1,1]", "transformer") for t in ("parity", "mqar")}
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "mamba[-1,1]" in html
    assert "| gru |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("model,task,seed,length,metric")
    curves = [json.loads(line) for line in (tmp_path / "curves.jsonl").read_text().splitlines()]
    assert sorted((c["model"], c["task"], c["seed"]) for c in curves) == sorted(
        {(r["model"], r["task"], r["seed"]) for r in records})  # one per run
    for c in curves:  # a point every eval_every = 3 steps, up to the run's last step
        steps = next(r["steps"] for r in records if (r["model"], r["task"]) == (c["model"],
                                                                               c["task"]))
        assert [p[0] for p in c["curve"]] == list(range(3, steps + 1, 3)), c
    for task in ("parity", "mqar"):
        assert (tmp_path / "plots" / "curves" / f"{task}.png").stat().st_size > 0


def test_rerun_skips_finished_runs(tmp_path, monkeypatch):
    first = run_arena(tiny(models=["gru"], tasks=["parity"]), tmp_path, quiet())
    import rnnlab.arena.runs as runs
    monkeypatch.setattr(runs, "train_run", lambda *a, **k: pytest.fail("retrained"))
    again = run_arena(tiny(models=["gru"], tasks=["parity"]), tmp_path, quiet())
    assert again == first


def test_other_config_in_the_same_directory_is_refused(tmp_path):
    run_arena(tiny(models=["gru"], tasks=["parity"]), tmp_path, quiet())
    with pytest.raises(ValueError, match="different configuration.*steps"):
        run_arena(tiny(models=["gru"], tasks=["parity"], steps=7), tmp_path, quiet())


def test_a_results_directory_grows_by_models_tasks_and_seeds(tmp_path, monkeypatch):
    """Adding a model, task or seed trains only the new runs; the earlier command's records
    (also of tasks and seeds this command leaves out) are kept, and config.json and the
    reports cover the union."""
    first = run_arena(tiny(models=["gru"], tasks=["parity"]), tmp_path, quiet())
    import rnnlab.arena.runs as runs
    trained = []
    real = runs.train_run
    monkeypatch.setattr(runs, "train_run", lambda model, task, seed, *a, **k: trained.append(
        (model.label, seed)) or real(model, task, seed, *a, **k))
    grown = run_arena(tiny(models=["gru", "lstm"], tasks=["mqar"], seeds=[1]), tmp_path,
                      quiet())
    assert sorted(trained) == [("gru", 1), ("lstm", 1)]
    assert grown[:len(first)] == first  # parity (not in this grid) is kept as it was
    assert {(r["model"], r["task"], r["seed"]) for r in grown} == {
        ("gru", "parity", 0), ("gru", "mqar", 1), ("lstm", "mqar", 1)}
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["models"], config["tasks"], config["seeds"]) == (
        ["gru", "lstm"], ["parity", "mqar"], [0, 1])
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(grown)
    markdown = (tmp_path / "results.md").read_text()
    assert "parity" in markdown and "mqar" in markdown and "| lstm |" in markdown
    trained.clear()  # the whole union grid now: its 5 missing runs are trained, no other
    everything = run_arena(tiny(models=["lstm", "gru"], tasks=["mqar", "parity"], seeds=[0, 1]),
                           tmp_path, quiet())
    assert sorted(trained) == [("gru", 0), ("gru", 1), ("lstm", 0), ("lstm", 0), ("lstm", 1)]
    assert len({(r["model"], r["task"], r["seed"]) for r in everything}) == 8


def test_a_config_json_without_a_grid_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"steps": 6}))
    with pytest.raises(ValueError, match="not an arena config.json"):
        run_arena(tiny(models=["gru"], tasks=["parity"]), tmp_path, quiet())


@pytest.mark.parametrize("model_spec", ["gru", "ut(position_offset=30,max_steps=2)",
                                       "ut(tied=false,act=false,max_steps=2)"])
def test_killed_run_resumes_to_the_same_weights(tmp_path, model_spec):
    """A run stopped after step 5 (checkpoint at 4) and restarted ends where one straight run
    ends: weights, optimizer moments and data streams are all restored (and the UT's random
    position offsets: their generator is a buffer)."""
    cfg = tiny(steps=8, early_stop=None)
    model, (_, task) = spec.model(model_spec), spec.task("parity")

    class Killed(Exception):
        pass

    def kill_at_5(step, loss, val):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train_run(model, task, 0, cfg, tmp_path / "a", kill_at_5)
    resumed = train_run(model, task, 0, cfg, tmp_path / "a")
    straight = train_run(model, task, 0, cfg, tmp_path / "b")
    assert resumed["resumed_from"] == 4 and straight["resumed_from"] == 0
    assert resumed["scores"] == straight["scores"]
    # the learning curve goes on from the checkpoint, the loss of step 4 included
    assert resumed["curve"] == straight["curve"] and [p[0] for p in straight["curve"]] == [3, 6]
    a = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key




def test_specs():
    assert spec.split_list("lstm, mamba[-1,1],mod_arith(brackets=true, x=1)") == \
        ["lstm", "mamba[-1,1]", "mod_arith(brackets=true, x=1)"]
    m = spec.model("deltanet[-1,1](heads=2)")
    assert (m.mixer, m.options) == ("deltanet", {"allow_neg_eigval": True, "heads": 2})
    assert spec.task("mod_arith(brackets=true)")[1].brackets is True
    with pytest.raises(ValueError, match="--models: unknown model 'lsmt'"):
        spec.model("lsmt")
    with pytest.raises(ValueError, match="--tasks: unknown task"):
        spec.task("parrity")
    with pytest.raises(ValueError, match="key=value"):
        spec.task("parity(all)")
    assert run_ids(["mamba[-1,1]", "parity", "0"]).startswith("mamba_-1_1_")


def test_a_models_own_lr_runs_as_the_arena_lr_would(tmp_path):
    """``gru(lr=X)`` in an arena at lr Y is the run of ``gru`` at lr X (weights and scores),
    is its own row, and is held to ``gru``'s expected value."""
    own = train_run(spec.model("gru(lr=0.01)"), spec.task("parity")[1], 0,
                    tiny(steps=6, lr=3e-3, early_stop=None), tmp_path / "own")
    arena = train_run(spec.model("gru"), spec.task("parity")[1], 0,
                      tiny(steps=6, lr=0.01, early_stop=None), tmp_path / "arena")
    train_run(spec.model("gru"), spec.task("parity")[1], 0,
              tiny(steps=6, lr=3e-3, early_stop=None), tmp_path / "other")
    a = load_file(str(tmp_path / "own" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "arena" / "checkpoint.safetensors"))
    c = load_file(str(tmp_path / "other" / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and own["scores"] == arena["scores"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the lr did reach the optimizer
    assert spec.without_lr("gla(heads=2, lr=3e-3)") == "gla(heads=2)"
    assert spec.without_lr("mamba[-1,1](lr=1e-3)") == "mamba[-1,1]"
    records = run_arena(tiny(models=["gru", "gru(lr=0.01)"], tasks=["parity"]), tmp_path / "r",
                        quiet())
    assert {(r["model"], r["lr"]) for r in records} == {("gru", 3e-3), ("gru(lr=0.01)", 0.01)}
    assert "| gru(lr=0.01) |" in (tmp_path / "r" / "results.md").read_text()
    rows = {row[0]: row for *_, rows in report.task_tables(tiny(models=["gru", "gru(lr=0.01)"],
                                                                  tasks=["parity"]), records)
            for row in rows}
    assert rows["gru(lr=0.01)"][-2] == rows["gru"][-2] == 1.0  # the expected column
    for bad, kind in (("gru(lr=0)", ValueError), ("gru(lr=2)", ValueError),
                      ("gru(lr=fast)", TypeError)):
        with pytest.raises(kind, match=r"--models: .*lr must be in \(0, 1\]"):
            spec.model(bad)


def test_presets_resolve():
    for name in PRESETS:
        cfg = preset(name)
        for m in cfg.models:
            spec.model(m)
        for t in cfg.tasks:
            spec.task(t)
        for (m, t) in cfg.expected:
            assert m in cfg.models and t in cfg.tasks, (name, m, t)
        _resolve(cfg)  # every model builds for every task (on the meta device)
    with pytest.raises(ValueError, match="--preset: unknown preset"):
        preset("fast")
    with pytest.raises(ValueError, match="--steps: expected an integer >= 1, got 0"):
        run_arena(tiny(steps=0), None, quiet())


def test_a_task_that_cannot_draw_its_lengths_is_refused_before_anything_is_written(tmp_path):
    """set_disjointness with 128 ids cannot fill its test length 128: refused up front, not
    as a failure in every run after the directory is written."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["arena", "--models", "gru", "--tasks",
                                      "parity,set_disjointness(vocab=128)", "--steps", "2",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--tasks: 'set_disjointness(vocab=128)' cannot draw its length 128" in text, text
    assert "raise vocab" in text and not out.exists()


def test_cli_arena_and_tasks_show(tmp_path):
    runner = CliRunner()
    out = tmp_path / "res"
    result = runner.invoke(app, ["arena", "--models", "lstm,mamba[-1,1]", "--tasks", "parity",
                                 "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and (out / "report.html").exists()
    bad = runner.invoke(app, ["arena", "--models", "nope", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output
    assert not (tmp_path / "x").exists(), "nothing is written on bad input"
    shown = runner.invoke(app, ["tasks", "show", "parity", "--samples", "2"])
    assert shown.exit_code == 0 and "sample 1" in shown.output
    listed = runner.invoke(app, ["tasks", "list"])
    assert listed.exit_code == 0 and "mqar" in listed.output


def test_cli_grown_directory_keeps_every_rows_expected_value(tmp_path):
    """Two preset commands with one model each into one --out: the table shows both rows, each
    with the preset's expected value (not only the last command's model)."""
    out = str(tmp_path / "res")
    for model in ("lstm", "transformer"):
        result = CliRunner().invoke(app, ["arena", "--preset", "quick", "--models", model,
                                          "--steps", "1", "--jobs", "1", "--out", out])
        assert result.exit_code == 0, result.output
    table = (tmp_path / "res" / "results.md").read_text()
    assert re.search(r"\| lstm \|.*\| 1\.000 \|", table), table
    assert re.search(r"\| transformer \|.*\| 0\.022 \|", table), table


def test_a_bad_model_option_writes_nothing_and_the_corrected_command_runs(tmp_path):
    """Issue 12: ``gru(heads=2)`` used to fail in a run after config.json was written, and the
    corrected command was then refused for that directory."""
    out = tmp_path / "res"
    for bad in ("gru(heads=2)", "deltanet(heads=3)"):  # a wrong name, a wrong value
        result = CliRunner().invoke(app, ["arena", "--models", f"lstm,{bad}", "--tasks",
                                          "parity", "--out", str(out)])
        assert result.exit_code == 2 and "heads" in result.output, result.output
        with pytest.raises(ValueError, match="heads"):
            run_arena(tiny(models=["lstm", bad]), out, quiet())
        assert not out.exists(), "nothing is written before everything is checked"
    assert len(run_arena(tiny(models=["lstm", "deltanet(heads=2)"]), out, quiet())) == 2 * 7


def test_seed_aggregation():
    from rnnlab.arena.store import summary
    recs = [dict(model="m", task="t", metric="acc", seed=s, length=n, value=v)
            for s, vals in ((0, (1.0, 0.2)), (1, (0.9, 0.9)), (2, (0.5, 0.1)))
            for n, v in zip((10, 20), vals)]
    assert summary(recs, "best")[("m", "t", "acc")] == {10: 0.9, 20: 0.9}
    mean = summary(recs, "mean")[("m", "t", "acc")]
    assert mean == pytest.approx({10: 0.8, 20: 0.4})
    with pytest.raises(ValueError, match="aggregate"):
        summary(recs, "median")


def test_agreement_is_read_beyond_training_or_at_the_train_length_if_that_is_all():
    """Expected values are held to the mean beyond the train length; a task tested only at its
    train length (the DLR tasks, defined relative to L) is held to that value instead."""
    assert spec.task("dlr_shift")[1].test_lengths == (64,)
    recs = [dict(model=m, task=t, metric="accuracy", seed=0, length=n, value=v)
            for m, t, vals in (("a", "long", {10: 1.0, 20: 0.5, 40: 0.3}),
                               ("b", "long", {10: 0.95}), ("a", "short", {10: 0.95}),
                               ("b", "short", {10: 0.5}))
            for n, v in vals.items()]
    cfg = ArenaConfig(models=["a", "b"], tasks=["long", "short"],
                      expected={(m, t): 1.0 for m in "ab" for t in ("long", "short")})
    rows = {(task, row[0]): row for task, _, _, rows in report.task_tables(cfg, recs)
            for row in rows}
    assert rows["long", "a"][-3:] == [0.4, 1.0, False]  # 1.0 at the train length is not enough
    assert rows["long", "b"][-3:] == [None, 1.0, None]  # not tested beyond yet: no verdict
    assert rows["short", "a"][-3:] == [None, 1.0, True]
    assert rows["short", "b"][-3:] == [None, 1.0, False]


def test_the_learning_curve_is_the_mean_loss_and_the_validation_of_each_interval(tmp_path):
    """A point every eval_every steps: the mean of the training losses since the previous
    point and the validation metric that the run saw there (with or without early stop)."""
    model, (_, task) = spec.model("gru"), spec.task("parity")
    for early_stop in (None, 0.99):
        seen = []
        result = train_run(model, task, 0, tiny(steps=7, early_stop=early_stop),
                           tmp_path / str(early_stop), lambda *a: seen.append(a))
        losses = [loss for _, loss, _ in seen]
        assert result["curve"] == [
            [3, round(sum(losses[:3]) / 3, 6), round(seen[2][2], 6)],
            [6, round(sum(losses[3:6]) / 3, 6), round(seen[5][2], 6)]]
        assert [val is not None for *_, val in seen] == [s % 3 == 0 for s in range(1, 8)]


def test_curves_are_replaced_per_run_and_a_damaged_line_is_dropped_with_a_warning(tmp_path):
    from rnnlab.arena import store
    run_arena(tiny(models=["gru"], tasks=["parity"]), tmp_path, quiet())
    path = tmp_path / "curves.jsonl"
    before = path.read_text()
    path.write_text(before + '{"model": "gru", "task": "parity", "seed": 0, "cur\n')
    warnings = []
    entry = {**json.loads(before), "curve": [[3, 0.5, 0.25]]}
    store.add_curve(tmp_path, entry, warnings.append)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [entry]
    assert len(warnings) == 1 and "curves.jsonl: 1 line(s)" in warnings[0]
    path.write_text("not json\n[1, 2]\n")
    assert store.load_curves(tmp_path) == []  # the report still writes, without curves
    report.write_all(tmp_path, tiny(models=["gru"], tasks=["parity"]),
                     store.load_records(tmp_path, pytest.fail))


def test_parallel_jobs_give_the_serial_results(tmp_path):
    cfg = dict(models=["gru", "mamba[-1,1]"], tasks=["parity"], seeds=[0, 1])
    serial = run_arena(tiny(**cfg), tmp_path / "serial", quiet())
    parallel = run_arena(tiny(jobs=2, **cfg), tmp_path / "parallel", quiet())
    key = lambda r: (r["model"], r["task"], r["seed"], r["length"])  # noqa: E731
    assert sorted((key(r), r["value"]) for r in serial) == \
        sorted((key(r), r["value"]) for r in parallel)


def test_pointer_tasks_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="pointer task.*PointerNet"):
        spec.task("sort")
    assert "sort" not in preset("full").tasks


def test_killing_the_arena_ends_its_workers(tmp_path):
    """A parallel arena killed with SIGKILL leaves no worker training on (and writing)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    code = ("from rich.console import Console; from rnnlab.arena import ArenaConfig, run_arena; "
            f"run_arena(ArenaConfig(models=['gru', 'lstm'], tasks=['parity'], d_model=8, "
            f"steps=100000, batch=4, jobs=2, checkpoint_every=1), __import__('pathlib').Path({str(tmp_path)!r}), "
            "Console())")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    children = set()
    for _ in range(300):  # wait until both workers run (spawn start-up takes a few seconds)
        time.sleep(0.2)
        path = f"/proc/{proc.pid}/task/{proc.pid}/children"
        children = {int(c) for c in open(path).read().split()} if os.path.exists(path) else set()
        if len(children) >= 3 and any((tmp_path / "runs").glob("*/checkpoint.safetensors")):
            break
    assert children, "the arena never started its workers"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def running(pid):  # exists and is not a zombie
        try:
            return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while time.time() < deadline and any(map(running, children)):
        time.sleep(0.2)
    alive = [c for c in children if running(c)]
    assert not alive, f"workers {alive} outlived the arena"


def test_full_trains_each_task_once():
    """The registry's defaults join ``full`` only where no listed variant is the same task:
    ``word_problem`` is ``word_problem(group='S5')``, ``set_disjointness`` its ratio 0.25."""
    labels = preset("full").tasks
    built = [spec.task(label)[1] for label in labels]
    assert all(a != b for i, a in enumerate(built) for b in built[i + 1:])
    assert "word_problem(group='S5')" in labels and "word_problem" not in labels
    assert "set_disjointness" in labels and "set_disjointness(ratio=0.25)" not in labels
    assert {"parity", "reber", "tomita"} <= set(labels)  # defaults with no listed twin stay
