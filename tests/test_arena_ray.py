"""The arena on Ray (issue 19): a local Ray instance of 2 CPUs trains the same tiny grid as the
local executor, to the same records, files and weights; a worker killed mid-run is retried and
goes on from its checkpoint; a second arena skips the finished runs; without Ray the option says
how to install it.

Faults are planted through ``RayExecutor(train=...)``: a closure, which Ray ships to its workers
by value. Marker files tell a run's first attempt from its retry across worker processes.
"""
import inspect
import json
import logging
import os
import socket
import sys
import time

import pytest
from rich.console import Console
from rich.progress import Progress
from safetensors.torch import load_file
from typer.testing import CliRunner

from rnnlab.arena import ArenaConfig, ArenaFailed, run_arena, spec
from rnnlab.arena.ray_executor import RayExecutor, from_options
from rnnlab.arena.runner import LocalExecutor
from rnnlab.arena.train import train_run

# 2 models x 2 seeds of 6 steps: each run takes well under a second
GRID = dict(models=["gru", "lstm"], tasks=["parity"], seeds=[0, 1], d_model=8, steps=6,
            batch=4, eval_every=3, eval_examples=6, checkpoint_every=2, jobs=1)
TIMING = ("train_seconds", "eval_seconds", "finished_at")  # the only fields that may differ


def grid(**kw):
    return ArenaConfig(**{**GRID, **kw})


def quiet():
    return Console(file=open(os.devnull, "w"), width=140)


def comparable(records):
    """The records without their timings, in a fixed order (Ray yields runs as they finish)."""
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in records]
    return sorted(rows, key=lambda r: (r["model"], r["task"], r["seed"], r["length"]))


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The grid trained by the local executor: ``(out, records)``."""
    out = tmp_path_factory.mktemp("local")
    return out, run_arena(grid(), out, quiet())


def dying(marks, victim=("lstm", 1), at_step=3):
    """``train_run``, but the run ``victim`` (model, seed) kills its worker process at
    ``at_step`` the first time (a checkpoint was written at step 2). Each run notes the step
    it resumed from in ``marks``."""
    def train(model, task, seed, cfg, run_dir, on_step, warn):
        first = not (marks / "died").exists()

        def step(n, loss, val):
            if first and (model.label, seed) == victim and n == at_step:
                (marks / "died").write_text(str(os.getpid()))
                os._exit(1)
        result = train_run(model, task, seed, cfg, run_dir, step, warn)
        (marks / f"resumed-{model.label}-{seed}").write_text(str(result["resumed_from"]))
        return result
    return train


def counting(marks, fail=None):
    """``train_run``, noting each call in ``marks``; the run ``fail`` (model, seed) raises."""
    def train(model, task, seed, cfg, run_dir, on_step, warn):
        (marks / f"called-{model.label}-{seed}-{time.monotonic_ns()}").touch()
        if (model.label, seed) == fail:
            raise RuntimeError("planned failure")
        return train_run(model, task, seed, cfg, run_dir, on_step, warn)
    return train


def called(marks):
    return sorted(tuple(p.name.split("-")[1:3]) for p in marks.glob("called-*"))


def test_ray_trains_the_same_records_files_and_weights(ray, local, tmp_path):
    local_out, local_records = local
    records = run_arena(grid(), tmp_path, quiet(), executor=RayExecutor())
    assert len(records) == len(local_records) == 4 * len(spec.task("parity")[1].test_lengths)
    assert comparable(records) == comparable(local_records)
    assert comparable(map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())) \
        == comparable(local_records)  # the driver wrote them
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert files == sorted(p.relative_to(local_out) for p in local_out.rglob("*"))
    assert (tmp_path / "config.json").read_bytes() == (local_out / "config.json").read_bytes()
    checkpoints = sorted(local_out.glob("runs/*/checkpoint.safetensors"))
    assert len(checkpoints) == 4
    for path in checkpoints:  # weights, optimizer moments and data streams, bit for bit
        ours, theirs = load_file(str(tmp_path / path.relative_to(local_out))), load_file(str(path))
        assert ours.keys() == theirs.keys()
        assert all(ours[k].equal(theirs[k]) for k in ours), path


def test_a_worker_killed_mid_run_is_retried_from_its_checkpoint(ray, local, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"
    records = run_arena(grid(), out, quiet(), executor=RayExecutor(train=dying(marks)))
    assert (marks / "died").exists()  # the worker did die
    assert (marks / "resumed-lstm-1").read_text() == "2"  # its retry went on from step 2
    assert (marks / "resumed-gru-0").read_text() == "0"
    assert comparable(records) == comparable(local[1])


def test_a_run_whose_worker_keeps_dying_fails_alone(ray, local, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"

    def always_dies(model, task, seed, cfg, run_dir, on_step, warn):
        if (model.label, seed) == ("gru", 1):
            os._exit(1)
        return train_run(model, task, seed, cfg, run_dir, on_step, warn)
    with pytest.raises(ArenaFailed, match=r"1 of 4 runs failed \(gru on parity \(seed 1\)\)"):
        run_arena(grid(), out, quiet(), executor=RayExecutor(max_retries=1, train=always_dies))
    recorded = {(r["model"], r["seed"]) for r in
                map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert recorded == {("gru", 0), ("lstm", 0), ("lstm", 1)}
    # the same command again trains only the missing run, to the local executor's records
    records = run_arena(grid(), out, quiet(), executor=RayExecutor(train=counting(marks)))
    assert called(marks) == [("gru", "1")]
    assert comparable(records) == comparable(local[1])


def test_rerun_skips_finished_runs_and_retries_failed_ones(ray, local, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"
    console = Console(record=True, file=open(os.devnull, "w"), width=140)
    with pytest.raises(ArenaFailed, match=r"1 of 4 runs failed \(lstm on parity \(seed 0\)\)"):
        run_arena(grid(), out, console, executor=RayExecutor(train=counting(marks, ("lstm", 0))))
    assert "lstm on parity (seed 0): failed: RuntimeError: planned failure" in console.export_text()
    assert len(called(marks)) == 4
    for mark in marks.iterdir():
        mark.unlink()
    records = run_arena(grid(), out, quiet(), executor=RayExecutor(train=counting(marks)))
    assert called(marks) == [("lstm", "0")]
    assert comparable(records) == comparable(local[1])
    run_arena(grid(), out, quiet(), executor=RayExecutor(train=counting(marks)))
    assert called(marks) == [("lstm", "0")]  # all finished: nothing trains


def test_what_the_cluster_cannot_run_is_refused_before_anything_is_written(ray, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--threads/--device: each run asks Ray for 3 CPUs, "
                                         "but no node .*largest: 2 CPUs"):
        run_arena(grid(threads=3), out, quiet(), executor=RayExecutor())
    with pytest.raises(ValueError, match="--device: with --executor ray, expected cpu or cuda "
                                         ".*got 'cuda:1'"):
        run_arena(grid(device="cuda:1"), out, quiet(), executor=RayExecutor())
    assert not out.exists()
    assert ray.is_initialized()  # a session this process started stays as it was


def test_closing_the_executor_cancels_the_runs_still_going(ray, tmp_path):
    """What Ctrl-C and SIGTERM do through the runner: the tasks still running are killed and
    their CPUs freed."""
    def endless(model, task, seed, cfg, run_dir, on_step, warn):
        if seed == 1:
            time.sleep(600)
        return train_run(model, task, seed, cfg, run_dir, on_step, warn)
    cfg = grid(models=["gru"])
    todo = [(spec.model("gru"), "parity", spec.task("parity")[1], seed) for seed in (0, 1)]
    with Progress(console=quiet()) as progress:
        outcomes = RayExecutor(train=endless)(todo, cfg, tmp_path, progress, print)
        item, result, error = next(outcomes)
        assert (item[3], error) == (0, None) and result["steps"] == 6
        outcomes.close()
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.2)


def test_without_ray_the_option_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ValueError, match=r"^--executor ray: Ray is not installed; "
                                         r"pip install 'rnnlab\[ray\]'$"):
        from_options("ray", None)
    assert isinstance(from_options("local", None), LocalExecutor)


def test_executor_options_are_checked():
    with pytest.raises(ValueError, match=r"--executor: expected one of \['local', 'ray'\], "
                                         r"got 'rya'"):
        from_options("rya", None)
    with pytest.raises(ValueError, match="--address: only with --executor ray, got 'auto'"):
        from_options("local", "auto")


def test_an_address_where_nothing_listens_is_refused_at_once():
    from rnnlab.arena.ray_executor import _check_address
    with socket.socket() as sock:  # a port that was free a moment ago
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ValueError, match=f"--address: nothing answers at 127.0.0.1:{port} .*"
                                         f"ray start --head --port={port}"):
        _check_address(f"127.0.0.1:{port}", "--address")
    with pytest.raises(ValueError, match="RAY_ADDRESS: expected auto, HOST:PORT or "
                                         "ray://HOST:PORT, got 'localhost'"):
        _check_address("localhost", "RAY_ADDRESS")
    _check_address("auto", "--address")  # Ray resolves these itself


def _cli_has_executor():
    from rnnlab import cli
    return "executor" in inspect.signature(cli.arena).parameters


needs_wiring = pytest.mark.skipif(not _cli_has_executor(),
                                  reason="rnnlab arena --executor is not wired into cli.py yet")


@needs_wiring
def test_cli_arena_on_ray(ray, tmp_path):
    from rnnlab.cli import app
    result = CliRunner().invoke(app, ["arena", "--executor", "ray", "--models", "gru",
                                      "--tasks", "parity", "--seeds", "0", "--steps", "2",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4


@needs_wiring
def test_cli_without_ray_is_one_line(monkeypatch, tmp_path):
    from rnnlab.cli import app
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(app, ["arena", "--executor", "ray", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: --executor ray: Ray is not installed; pip install 'rnnlab[ray]'"]
    assert not (tmp_path / "o").exists()
