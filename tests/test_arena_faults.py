"""The arena under faults (issue 12): Ctrl-C, SIGTERM, failing and dying runs, a full disk,
damaged state files and a second writer (bad input: tests/test_cli_errors.py).

Process-level cases run the real CLI in a child process (its own process group, as a terminal
job) through a driver that adds a tiny preset and plants faults by seed, in the workers too:
spawned workers run the driver's top level as ``__mp_main__``. They wait on files and output by
polling, never by fixed sleeps.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from rnnlab.arena import ArenaConfig, ArenaFailed, run_arena, spec
from rnnlab.arena import runs as arena_runs
from rnnlab.arena.runner import LocalExecutor
from rnnlab.arena.train import run_ids, train_run
from rnnlab.cli import app
from rnnlab.errors import CheckpointError
from rnnlab.tools.files import directory_lock
from .helpers import CTRL_C, fill_disk

# 2 models x 4 seeds of a few steps each: a run takes well under a second
FAULTS = dict(models=["gru", "lstm"], tasks=["parity"], seeds=[0, 1, 2, 3], d_model=8, batch=4,
              steps=4, eval_every=2, eval_examples=8, checkpoint_every=2)
LENGTHS = len(spec.task("parity")[1].test_lengths)  # records per run

DRIVER = f"""
{CTRL_C}
import dataclasses, os
from rnnlab.arena import config, runs

config.PRESETS["faults"] = {FAULTS!r}
real_train_run = runs.train_run


def planted(model, task, seed, cfg, *args, **kwargs):
    if seed == int(os.environ.get("FAIL_SEED", -1)):
        raise RuntimeError(f"planned failure of seed {{seed}}")
    if seed == int(os.environ.get("DIE_SEED", -1)):
        os._exit(3)
    if seed == int(os.environ.get("FULL_DISK_SEED", -1)):  # its checkpoint meets a full disk
        def full(fd):
            raise OSError(28, "No space left on device")
        os.fsync = full
    if seed >= int(os.environ.get("ENDLESS_FROM_SEED", 1 << 30)):
        cfg = dataclasses.replace(cfg, steps=1 << 40)  # trains until it is stopped
    return real_train_run(model, task, seed, cfg, *args, **kwargs)


runs.train_run = planted
if __name__ == "__main__":
    from rnnlab.cli import app
    app()
"""


def quiet():
    return Console(file=open(os.devnull, "w"), width=140)


def faults(**kw):
    return ArenaConfig(**{**FAULTS, **kw})


@pytest.fixture
def start(tmp_path):
    """``start(**env)``: the CLI arena on the faults preset in its own process group (as a
    terminal runs a job), output in ``log.txt``; the group is killed if a test fails."""
    started = []

    def run(**env):
        driver = tmp_path / "driver.py"
        driver.write_text(DRIVER)
        with open(tmp_path / "log.txt", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(driver), "arena", "--preset", "faults", "--jobs", "2",
                 "--out", str(tmp_path / "out")], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}},
                start_new_session=True)
        started.append(proc)
        return proc
    yield run
    for proc in started:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def output(tmp_path) -> str:
    """What the arena printed, with rich's line wrapping undone."""
    return " ".join((tmp_path / "log.txt").read_text().split())


def recorded(out):
    """``{(model, seed): number of records}`` in ``out/results.jsonl``."""
    path = out / "results.jsonl"
    runs = {}
    for line in (path.read_text().splitlines() if path.exists() else []):
        r = json.loads(line)
        runs[(r["model"], r["seed"])] = runs.get((r["model"], r["seed"]), 0) + 1
    return runs


def poll(condition, proc, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert proc.poll() is None, "the arena ended early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def group_members(pgid):
    """Processes of process group ``pgid`` that run (zombies are done)."""
    alive = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if fields[2] == str(pgid) and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def assert_no_process_left(pgid):
    deadline = time.time() + 60  # workers exit on their own; a guard, not a timing check
    while group_members(pgid) and time.time() < deadline:
        time.sleep(0.1)
    assert not group_members(pgid), "processes outlived the arena"


@pytest.mark.parametrize("how", ["ctrl-c", "sigint-parent", "sigterm"])
def test_interrupt_stops_the_parallel_arena_and_keeps_finished_runs(tmp_path, start, how):
    """Seed 0 finishes, seeds 1-3 train until stopped: the arena must stop at once, keep the
    finished runs, leave no process behind and say how to resume (it used to hang)."""
    proc = start(ENDLESS_FROM_SEED=1)
    out = tmp_path / "out"
    endless = [out / "runs" / run_ids([m, "parity", "1"]) / "checkpoint.safetensors"
               for m in FAULTS["models"]]
    poll(lambda: len(recorded(out)) == 2 and all(p.exists() for p in endless), proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # a terminal sends it to the whole group
    else:
        proc.send_signal(signal.SIGINT if how == "sigint-parent" else signal.SIGTERM)
    # seeds 1-3 never end, so ending at all shows it did not wait for them; the timeout only
    # guards against a hang, generous enough for a loaded machine (not a timing assertion)
    assert proc.wait(timeout=180) == 130, output(tmp_path)
    assert_no_process_left(proc.pid)
    text = output(tmp_path)
    assert "interrupted; 2 of 8 runs are recorded" in text and "run the same command again" in text
    assert "Traceback" not in text, text
    assert recorded(out) == {(m, 0): LENGTHS for m in FAULTS["models"]}


def test_failing_and_dying_runs_in_workers_are_reported_and_the_others_recorded(tmp_path,
                                                                               start):
    """Seed 1 raises, seed 2 kills its worker: each is one line, the other runs finish and are
    recorded (one after its damaged checkpoint is moved aside), the arena exits 1 naming the
    failed runs, and running again retries only them."""
    damaged = tmp_path / "out" / "runs" / run_ids(["gru", "parity", "3"]) / "checkpoint.safetensors"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"garbage")
    proc = start(FAIL_SEED=1, DIE_SEED=2)
    assert proc.wait(timeout=180) == 1, output(tmp_path)
    assert_no_process_left(proc.pid)
    text = output(tmp_path)
    assert "Traceback" not in text, text
    for model in FAULTS["models"]:
        assert f"{model} on parity (seed 1): failed: RuntimeError: planned failure of seed 1" \
            in text
        assert f"{model} on parity (seed 2): failed: its worker process died (exit code 3" in text
    assert "4 of 8 runs failed" in text and "run the same command again to retry" in text
    assert "warning: " + str(damaged) + ": unusable checkpoint" in text  # from its worker
    assert "restarting this run from step 0" in text
    out = tmp_path / "out"
    assert set(recorded(out)) == {(m, s) for m in FAULTS["models"] for s in (0, 3)}
    retried = []
    real = arena_runs.train_run

    def spy(model, task, seed, cfg, *args, **kwargs):
        retried.append((model.label, seed))
        return real(model, task, seed, cfg, *args, **kwargs)
    arena_runs.train_run = spy
    try:
        run_arena(faults(), out, quiet(), preset="faults")
    finally:
        arena_runs.train_run = real
    assert sorted(retried) == sorted((m, s) for m in FAULTS["models"] for s in (1, 2))
    assert recorded(out) == {(m, s): LENGTHS for m in FAULTS["models"] for s in range(4)}


def test_a_full_disk_in_a_worker_stops_the_arena_in_one_line(tmp_path, start):
    proc = start(FULL_DISK_SEED=0)
    assert proc.wait(timeout=120) == 1, output(tmp_path)
    assert_no_process_left(proc.pid)
    text = output(tmp_path)
    assert "No space left on device" in text and "run the same command again" in text, text
    assert "Traceback" not in text
    assert not [p for p in (tmp_path / "out").rglob("*") if "tmp" in p.name], "temp files left"


def test_a_failing_run_in_the_serial_arena(tmp_path, monkeypatch):
    real = arena_runs.train_run

    def planted(model, task, seed, cfg, *args, **kwargs):
        if (model.label, seed) == ("gru", 0):
            raise FloatingPointError("non-finite loss at step 3")
        return real(model, task, seed, cfg, *args, **kwargs)
    monkeypatch.setattr(arena_runs, "train_run", planted)
    with pytest.raises(ArenaFailed, match=r"1 of 2 runs failed \(gru on parity \(seed 0\)\)"):
        run_arena(faults(seeds=[0], jobs=1), tmp_path, quiet())
    assert set(recorded(tmp_path)) == {("lstm", 0)}


def test_ctrl_c_in_the_serial_arena_keeps_finished_runs(tmp_path, monkeypatch):
    real = arena_runs.train_run

    def planted(model, task, seed, cfg, *args, **kwargs):
        if seed == 1:
            raise KeyboardInterrupt
        return real(model, task, seed, cfg, *args, **kwargs)
    monkeypatch.setattr(arena_runs, "train_run", planted)
    result = CliRunner().invoke(app, ["arena", "--models", "gru", "--tasks", "parity",
                                      "--seeds", "0,1", "--steps", "2", "--jobs", "1",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "interrupted; 1 of 2 runs are recorded" in result.output
    assert set(recorded(tmp_path)) == {("gru", 0)}
    # another command into the same directory counts its own runs, not the earlier ones
    result = CliRunner().invoke(app, ["arena", "--models", "lstm", "--tasks", "parity",
                                      "--seeds", "1", "--steps", "2", "--jobs", "1",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 130, result.output
    assert "interrupted; 0 of 1 runs are recorded" in result.output


# --- one writer per directory, --fresh ----------------------------------------------------

def test_a_second_arena_on_the_same_directory_is_refused(tmp_path):
    cfg = faults(models=["gru"], seeds=[0])
    run_arena(cfg, tmp_path, quiet())
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with directory_lock(tmp_path, "arena"):  # as another arena would hold it
        for fresh in (False, True):
            with pytest.raises(ValueError, match=f"in use by another rnnlab process \\(pid "
                                                 f"{os.getpid()}.*arena"):
                run_arena(cfg, tmp_path, quiet(), fresh=fresh)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "--fresh deleted files"


def test_fresh_deletes_only_an_arena_directory(tmp_path):
    cfg = faults(seeds=[0], models=["gru"])
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    (home / ".draft.tmp").write_text("mine")  # looks like an old rnnlab temporary file
    with pytest.raises(ValueError, match="--fresh: .* not an arena results directory"):
        run_arena(cfg, home, quiet(), fresh=True)
    assert sorted(p.name for p in home.iterdir()) == [".draft.tmp", "notes.txt"]
    run_arena(cfg, home, quiet())  # writing beside other files is fine; sweeping them is not
    assert (home / ".draft.tmp").exists() and (home / "notes.txt").exists()
    out = tmp_path / "out"
    run_arena(cfg, out, quiet())
    (out / "notes.txt").write_text("mine")
    again = run_arena(faults(seeds=[0], models=["gru"], steps=3), out, quiet(), fresh=True)
    assert {r["steps"] for r in again} == {3} and (out / "notes.txt").exists()


# --- damaged state files ------------------------------------------------------------------

def test_damaged_results_and_config(tmp_path):
    cfg = faults(models=["gru"], seeds=[0, 1])
    run_arena(cfg, tmp_path, quiet())
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + '{"model": "gr\n' + "".join(lines[2:]))
    with pytest.raises(ValueError, match=r"results.jsonl: line 3 is not a JSON record .*"
                                         r"delete that line or use --fresh"):
        run_arena(cfg, tmp_path, quiet())
    path.write_text("".join(lines[:2]) + "[1, 2]\n" + "".join(lines[2:]))
    with pytest.raises(ValueError, match="line 3 is not an arena record"):
        run_arena(cfg, tmp_path, quiet())
    # a torn last line (an interrupted write): dropped with a warning, and its run runs again
    path.write_text("".join(lines[:-1]) + lines[-1][:20])
    console = Console(record=True, width=200, file=open(os.devnull, "w"))
    records = run_arena(cfg, tmp_path, console)
    assert "last line (line 8) is not a complete JSON record" in console.export_text()
    assert len(records) == 2 * LENGTHS and path.read_text().endswith("\n")
    config = tmp_path / "config.json"
    config.write_text(config.read_text()[:30])
    with pytest.raises(ValueError, match="config.json is not a JSON object.*--fresh"):
        run_arena(cfg, tmp_path, quiet())
    config.unlink()
    with pytest.raises(ValueError, match="no config.json"):
        run_arena(cfg, tmp_path, quiet())


def test_damaged_checkpoint_restarts_the_run_and_one_past_the_budget_fails_it(tmp_path):
    cfg = faults(early_stop=None)
    model, (_, task) = spec.model("gru"), spec.task("parity")
    straight = train_run(model, task, 0, cfg, tmp_path / "a")
    ckpt = tmp_path / "b" / "checkpoint.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"\0" * 100)
    warnings = []
    restarted = train_run(model, task, 0, cfg, tmp_path / "b", warn=warnings.append)
    assert restarted["scores"] == straight["scores"] and restarted["resumed_from"] == 0
    assert "moved it to checkpoint.safetensors.corrupt" in warnings[0]
    # a checkpoint of a longer run is never taken as this run, finished
    longer = ArenaConfig(**{**FAULTS, "steps": 8, "early_stop": None})
    train_run(model, task, 0, longer, tmp_path / "c")
    with pytest.raises(CheckpointError, match="past the step budget 4"):
        train_run(model, task, 0, cfg, tmp_path / "c")


def test_full_disk_in_the_arena_is_one_error_and_the_next_run_cleans_up(tmp_path, monkeypatch):
    out = tmp_path / "out"
    stale = [out / ".results.jsonl.999.deadbeef.rnnlab-tmp",
             out / "runs" / "x" / ".checkpoint.safetensors.999.0badf00d.rnnlab-tmp"]
    fill_disk(monkeypatch, "results")
    cfg = faults(models=["gru"], seeds=[0])
    with pytest.raises(ArenaFailed, match="cannot write .*out/results.jsonl: No space left on "
                                          "device.*run the same command again"):
        run_arena(cfg, out, quiet())
    monkeypatch.undo()
    for path in stale:  # as a killed writer or an older rnnlab would leave them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    assert len(run_arena(cfg, out, quiet())) == LENGTHS
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


class _KilledMidWrite(LocalExecutor):
    """An executor whose worker is stopped while writing a checkpoint: it leaves its temporary
    file, as a terminated process does, and the arena then fails on a full disk."""

    def __call__(self, todo, cfg, out, progress, warn):
        model, task_label, _, seed = todo[0]
        run = arena_runs.run_dir(out, model, task_label, seed)
        run.mkdir(parents=True)
        (run / ".checkpoint.safetensors.999.0badf00d.rnnlab-tmp").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "checkpoint"))
        yield


def test_a_failed_arena_removes_the_temporary_files_of_its_stopped_workers(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ArenaFailed, match="No space left on device"):
        run_arena(faults(models=["gru"], seeds=[0]), out, quiet(), executor=_KilledMidWrite())
    assert (out / "runs").is_dir()
    assert not [p for p in out.rglob("*") if "tmp" in p.name], "temp files left"


def test_arena_failures_reach_the_cli_as_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "config.json"))
    monkeypatch.setattr("rnnlab.arena.store.write_atomic", full)
    result = CliRunner().invoke(app, ["arena", "--models", "gru", "--tasks", "parity",
                                      "--steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
