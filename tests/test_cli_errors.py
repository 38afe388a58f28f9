"""Every ``rnnlab`` command with hostile options: one line naming the option, exit code 2 for a
user's mistake, 1 for a file that cannot be written, 130 for Ctrl-C; never a traceback, and the
output directory unchanged (or absent) after a refused command. And help texts shown as written."""
import errno
import functools
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from rnnlab import cli_checks
from rnnlab.cli import app
from .helpers import CTRL_C, fill_disk

TEXT = "The quick brown fox jumps over the lazy dog; sphinx of black quartz, judge my vow.\n"
LM = ["train", "lm", "--d-model", "8", "--layers", "1", "--length", "8", "--batch", "2",
      "--steps", "2"]
JRT = ["eval", "jrt", "--models", "gru", "--tasks", "mqar(vocab=16, pairs=2)", "--length", "10",
       "--d-model", "8", "--layers", "1", "--steps", "2"]
ARENA = ["arena", "--models", "gru", "--tasks", "parity", "--seeds", "0", "--steps", "2",
         "--jobs", "1"]


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, code, *parts, alone=True):
    """The output ends in one ``error:`` line holding ``parts``; ``alone``: nothing else."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and (len(lines) == 1 or not alone), result.output
    for part in parts:
        assert part in lines[-1], result.output
    assert "Traceback" not in result.output


def files(directory):
    """Every file under ``directory`` with its bytes; None when there is no directory."""
    if not directory.exists():
        return None
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 40)
    return path


HOSTILE = [
    (LM + ["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (LM + ["--minutes", "0"], "--minutes: expected a number > 0, got 0.0"),
    (LM + ["--minutes", "-1"], "--minutes: expected a number > 0, got -1.0"),
    (LM + ["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    (LM + ["--d-model", "99999999999999999999"], "--d-model: expected an integer <= 2147483647"),
    (LM + ["--cell-options", "nosuch=1"], "--cell-options"),
    (LM + ["--cell-options", "allow_neg_eigval=maybe", "--cell", "mamba"], "allow_neg_eigval"),
    (LM + ["--cell", "gruu"], "--cell"),
    (LM + ["--device", "cuda:99"], "--device"),
    (LM + ["--data", ""], "--data: expected a path, got ''"),
    (LM + ["--out", ""], "--out: expected a path, got ''"),
    (["train", "classify", "--pooling", "min"],
     "--pooling: expected one of ['mean', 'last', 'max'], got 'min'"),
    (["train", "classify", "--minutes", "nan"], "--minutes"),
    (["train", "classify", "--device", "cuda:99"], "--device"),
    (JRT + ["--models", ""], "--models: expected comma-separated specs"),
    (JRT + ["--tasks", " , "], "--tasks: expected comma-separated specs"),
    (JRT + ["--length", "0"], "--length: expected an integer >= 1, got 0"),
    (JRT + ["--device", "cuda:99"], "--device"),
    (ARENA + ["--seeds", "a"], ("--seeds: expected comma-separated integers in [0, 4294967295] "
                                "such as '0,1,2', got 'a'")),
    (ARENA + ["--models", ""], "--models: expected comma-separated specs"),
    (ARENA + ["--tasks", ""], "--tasks: expected comma-separated specs"),
    (ARENA + ["--threads", "99999999999999999999"], "--threads: expected an integer <= 1024"),
    (ARENA + ["--device", "cuda:99"], "--device"),
    (ARENA + ["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (ARENA + ["--jobs", "-1"], "--jobs: expected an integer >= 0, got -1"),
    (ARENA + ["--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (ARENA + ["--seeds", "0,0"], "--seeds: each entry must appear once, got 0 more than once"),
    (ARENA + ["--models", "gru,gru()"], "--models: 'gru' and 'gru()' are the same model"),
    (ARENA + ["--models", "mamba[0,1],mamba(block=published,allow_neg_eigval=0)"],
     "--models: 'mamba[0,1]' and 'mamba(block=published,allow_neg_eigval=0)' are the same"),
    (ARENA + ["--lr", "2e-3", "--models", "gla(lr=0.002),gla"],
     "--models: 'gla(lr=0.002)' and 'gla' are the same model"),
    (ARENA + ["--tasks", "word_problem,word_problem(group='S5')"],
     "--tasks: 'word_problem' and \"word_problem(group='S5')\" are the same task"),
    (ARENA + ["--models", "deltanet(heads=3)"], "--models: cannot build 'deltanet(heads=3)'"),
    (ARENA + ["--lr", "0"], "--lr: expected a number in (0, 1], got 0.0"),
    (ARENA + ["--lr", "nan"], "--lr: expected a number in (0, 1], got nan"),
    (ARENA + ["--lr", "2"], "--lr: expected a number in (0, 1], got 2.0"),
    (ARENA + ["--d-model", "0"], "--d-model: expected an integer >= 1, got 0"),
    (ARENA + ["--layers", "-1"], "--layers: expected an integer >= 1, got -1"),
    (ARENA + ["--batch", "0"], "--batch: expected an integer >= 1, got 0"),
    (ARENA + ["--d-model", "6", "--models", "deltanet(heads=4)"],
     "--models: cannot build 'deltanet(heads=4)' for the task 'parity'"),
    (["tasks", "show", "parity", "--samples", "0"], "--samples: expected an integer >= 1"),
    (["tasks", "show", "parity", "--seed", "-1"], "--seed: expected an integer >= 0"),
    (["tasks", "show", ""], "--tasks"),
    (["bench", "cells", "--cells", "nosuch"], "--cells: expected names from"),
    (["bench", "cells", "--sizes", "8x1024"], "--sizes: expected comma-separated BxTxD"),
    (["bench", "cells", "--max-seconds", "nan"], "--max-seconds: expected a number > 0"),
    (["bench", "cells", "--threads", "0"], "--threads: expected an integer >= 1, got 0"),
    (["bench", "cells", "--device", "cuda:99"], "--device"),
    (["bench", "newton", "--lengths", "abc"], "--lengths: expected comma-separated integers"),
    (["bench", "newton", "--cells", "paragru,nosuch"], "--cells: expected names from"),
    (["bench", "generate", "--lengths", "10,0"], "--lengths: expected comma-separated integers"),
    (["bench", "sequential", "--batch", "0"], "--batch: expected an integer >= 1, got 0"),
    (["bench", "scan", "--width", "-1"], "--width: expected an integer >= 1, got -1"),
    (["bench", "delta-rule", "--dk", "0"], "--dk: expected an integer >= 1, got 0"),
]


@pytest.mark.parametrize("args, message", HOSTILE, ids=[" ".join(a[:2] + a[-2:])
                                                        for a, _ in HOSTILE])
def test_a_mistake_is_one_line_exit_2_and_nothing_is_written(tmp_path, text, args, message):
    out = tmp_path / "out"
    args = args + (["--out", str(out)] if "--out" not in args and args[0] != "tasks" else [])
    if args[:2] == ["train", "lm"] and "--data" not in args:
        args += ["--data", str(text)]
    if args[0] == "bench":
        args[args.index("--out") + 1] = str(out / "result.json")
    assert_one_error_line(invoke(args), 2, message)
    assert not out.exists()


def test_arena_training_options_reach_the_runs_and_tie_the_directory(tmp_path):
    """--lr, --d-model, --layers and --batch override the preset's fields (config.json and the
    records say so); the same --out with another --lr is refused, the directory unchanged."""
    import json
    out = tmp_path / "out"
    args = ARENA + ["--lr", "0.01", "--d-model", "8", "--layers", "1", "--batch", "4",
                    "--out", out]
    assert invoke(args).exit_code == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["lr"], config["d_model"], config["n_layers"], config["batch"]) == \
        (0.01, 8, 1, 4)
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert (record["lr"], record["d_model"], record["n_layers"]) == (0.01, 8, 1)
    before = files(out)
    assert_one_error_line(invoke(args[:-2] + ["--lr", "0.02", "--out", out]), 2, "--out",
                          "lr: 0.01 there, 0.02 now")
    assert files(out) == before


def test_a_refused_command_leaves_an_existing_directory_unchanged(tmp_path, text):
    out = tmp_path / "out"
    base = LM + ["--data", text, "--out", out]
    assert invoke(base).exit_code == 0
    before = files(out)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper() * 40)
    for change, message in ((["--steps", "0"], "--steps"), (["--device", "cuda:99"], "--device"),
                            (["--d-model", "16"], "d_model 8 there, 16 now"),
                            (["--data", other], "holds a run with other settings (data"),
                            (["--steps", "1"], "past the step budget 1")):
        assert_one_error_line(invoke(base + change), 2, message)
        assert files(out) == before


def test_out_that_is_a_file_or_not_writable(tmp_path, text, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    for command in (LM + ["--data", text], JRT, ARENA, ["bench", "generate", "--lengths", "3"]):
        assert_one_error_line(invoke(command + ["--out", a_file / "below"]), 2, "--out",
                              "is a file")
    for command in (LM + ["--data", text], JRT, ARENA):
        assert_one_error_line(invoke(command + ["--out", a_file]), 2,
                              "--out: expected a directory, got the file")
    assert a_file.read_text() == "keep"
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root ignores chmod
    for command in (LM + ["--data", text], ARENA):
        assert_one_error_line(invoke(command + ["--out", tmp_path / "new"]), 2,
                              "--out", "is not writable")
    assert not (tmp_path / "new").exists()


def test_a_full_disk_is_one_line_exit_1_and_the_next_run_cleans_up(tmp_path, text, monkeypatch):
    out = tmp_path / "out"
    fill_disk(monkeypatch, "checkpoint")
    assert_one_error_line(invoke(LM + ["--data", text, "--out", out]), 1,
                          f"error: cannot write {out / 'checkpoint.safetensors'}: No space left "
                          f"on device", alone=False)
    monkeypatch.undo()
    stale = out / ".metrics.json.999.deadbeef.rnnlab-tmp"  # as a killed writer leaves one
    stale.write_text("partial")
    assert invoke(LM + ["--data", text, "--out", out]).exit_code == 0
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


def test_ctrl_c_in_training_is_one_line_exit_130_and_keeps_the_checkpoint(tmp_path, text,
                                                                       monkeypatch):
    from rnnlab.train import lm
    out = tmp_path / "out"
    save = lm.checkpoint.save

    def save_then_interrupt(path, model, opt, gens, meta):
        save(path, model, opt, gens, meta)
        raise KeyboardInterrupt
    monkeypatch.setattr(lm.checkpoint, "save", save_then_interrupt)
    monkeypatch.setattr(lm, "LMConfig", functools.partial(lm.LMConfig, eval_every=2))
    result = invoke(LM + ["--steps", "4", "--data", text, "--out", out])
    assert_one_error_line(result, 130, "interrupted; the last checkpoint in", "is kept",
                          alone=False)
    monkeypatch.setattr(lm.checkpoint, "save", save)
    resumed = invoke(LM + ["--steps", "4", "--data", text, "--out", out])
    assert resumed.exit_code == 0 and "resuming from step 2" in resumed.output


def test_sigint_to_a_training_process(tmp_path, text):
    """A real Ctrl-C (SIGINT) to ``rnnlab train lm`` in its own process."""
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = f"{CTRL_C}; import runpy; runpy.run_module('rnnlab.cli', run_name='__main__')"
    proc = subprocess.Popen([sys.executable, "-c", cli, *LM[:-2], "--steps", "1000000",
                             "--data", str(text), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=180)  # a hang guard for a loaded machine
    finally:  # a failed test leaves no endless training behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stdout + stderr
    assert stderr.strip().splitlines() == [f"error: interrupted; the last checkpoint in {out} "
                                           f"is kept: run the same command again to resume"]
    assert "Traceback" not in stdout + stderr


def test_user_errors_sorts_exceptions_by_exit_code(tmp_path):
    from rnnlab.arena.runner import ArenaFailed

    def code(exc, **kwargs):
        with pytest.raises(typer.Exit) as info:
            with cli_checks.user_errors(**kwargs):
                raise exc
        return info.value.exit_code
    assert code(TypeError("--x: expected an integer")) == 2
    assert code(OSError(errno.ENOSPC, "No space left on device", "f.json")) == 1
    assert code(OSError(errno.EROFS, "Read-only file system")) == 1
    assert code(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried")) == 1
    assert code(ArenaFailed("1 of 2 runs failed"), failures=(ArenaFailed,)) == 1
    assert code(FloatingPointError("the loss is nan at step 3")) == 1
    assert code(KeyboardInterrupt()) == 130
    with pytest.raises(ConnectionRefusedError):  # not the file system: a bug to see in full
        with cli_checks.user_errors():
            raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    with pytest.raises(RuntimeError, match="a bug"):
        with cli_checks.user_errors():
            raise RuntimeError("a bug")


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own click, not always ``click``)
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def shown_help(path) -> str:
    """The help of the command ``path``, as one line of words (the panel borders removed)."""
    result = invoke([*path, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def test_help_texts_are_shown_as_written():
    seen = 0
    for path, command in _commands(typer.main.get_command(app)):
        shown = shown_help(path)
        for param in command.params:
            if getattr(param, "help", None):  # markdown shows `code` without its backticks
                assert " ".join(param.help.replace("`", "").split()) in shown, (path, param.name)
                seen += 1
    assert seen > 40
    jobs = shown_help(["arena"])
    assert "[default: the number of CPU cores, at most 4]" in jobs and "[default: 0]" not in jobs
    assert "mamba[-1,1]" in jobs and "[default: results/arena-PRESET]" in jobs
