"""JRT-Prompt evaluation: the same small recurrent models trained with and without reading the
context twice, side by side (``rnnlab.tools.jrt``; Arora et al. 2024, "Just read twice").

Readable top to bottom: for every task × model, train two runs with the arena's ``train_run``
(same seed, same budget, same model size): the task as is ("read once") and the task with its
context repeated (``RepeatedContext(task, 2)``, "read twice"), then test both on fresh
sequences of the same length. Every setting, spec and model is checked before anything is
written; the output directory is then taken with ``rundir.claim`` (refused when its runs were
trained with other sizes or optimizer settings, locked against a second writer). Runs resume
from ``out/runs/<id>/checkpoint.safetensors`` (a damaged one restarts its run, with a warning);
the table goes to ``out/results.json`` (atomically).

Set disjointness is the task JRT was built for: with the larger set first, a model reading once
must store the large set before it knows it is the large one; reading twice, it can keep the
small set on the first pass and check the large one against it on the second. The default grid
therefore has the large set first (``ratio=0.75``); add ``ratio=0.25`` for the easy order, or
``mqar`` (whose context is the key-value prefix) as a control.

``set_disjointness`` relabels its data ids per example (no id range marks either set), so a
model must remember the first set to find the shared token.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import List

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..arena import spec as _spec
from ..arena.config import ArenaConfig
from ..arena.train import build_model, run_ids, train_run
from ..tools.device import check_device
from ..tools.files import write_atomic
from ..tools.jrt import RepeatedContext
from . import options as _options
from .rundir import claim, record, warner


@dataclasses.dataclass
class JRTConfig:
    models: List[str] = dataclasses.field(  # model specs, as in the arena ("deltanet[-1,1]")
        default_factory=lambda: ["gru", "mamba", "deltanet"])
    tasks: List[str] = dataclasses.field(  # task specs: set_disjointness and/or mqar
        default_factory=lambda: ["set_disjointness(vocab=64, ratio=0.75)"])
    length: int = 24  # sequence length before repetition (train and test)
    d_model: int = 32  # width of every block
    n_layers: int = 2  # residual blocks
    steps: int = 600  # most optimizer steps per run
    batch: int = 64  # sequences per step
    lr: float = 3e-3  # AdamW learning rate (warm-up, cosine)
    eval_examples: int = 1024  # test sequences per run
    seed: int = 0  # model init and data
    out: str = "results/jrt"  # runs (resumable) and results.json
    device: str = "cpu"  # torch device


def make_task(label: str, times: int, cfg: JRTConfig):
    """The task of ``label``, read ``times`` times, at ``cfg.length``."""
    _, task = _spec.task(label)
    task.sample(1, cfg.length, torch.Generator())  # refuses a length the task cannot make
    task = RepeatedContext(task, times)
    task.train_lengths, task.test_lengths = (cfg.length, cfg.length), (cfg.length,)
    return task


# Recorded in OUT/config.json (see rundir): the settings a run's directory name leaves out.
# Models, tasks, length and seed are in every run's name; the step budget may be raised.
RECORDED = ("d_model", "n_layers", "batch", "lr", "eval_examples")


def check_config(cfg: JRTConfig) -> ArenaConfig:
    """Raise naming the option for any value out of range, any spec that does not parse or any
    model that cannot be built; the arena configuration every run trains with."""
    for field in ("length", "d_model", "n_layers", "steps", "batch", "eval_examples"):
        _options.integer(cfg, field, 1)
    _options.integer(cfg, "seed", 0, _options.SEED_MAX)
    _options.number(cfg, "lr")
    check_device(cfg.device)
    for field in ("models", "tasks"):
        labels = getattr(cfg, field)
        if not isinstance(labels, list) or not labels or len(set(labels)) < len(labels):
            raise ValueError(f"--{field}: expected a comma-separated list of distinct specs, "
                             f"got {', '.join(map(str, labels)) if labels else 'none'}")
    arena = ArenaConfig(models=cfg.models, tasks=cfg.tasks, seeds=[cfg.seed],
                        d_model=cfg.d_model, n_layers=cfg.n_layers, steps=cfg.steps,
                        batch=cfg.batch, lr=cfg.lr, eval_every=50, early_stop=0.99,
                        eval_examples=cfg.eval_examples, checkpoint_every=200,
                        device=cfg.device)
    tasks = [make_task(label, times, cfg) for label in cfg.tasks for times in (1, 2)]
    for label in cfg.models:
        model = _spec.model(label)
        for task in tasks:
            check_model(model, task, arena)
    return arena


def check_model(model: _spec.ModelSpec, task, arena: ArenaConfig) -> None:
    """Build ``model`` for ``task`` on the meta device (an option only its constructor checks is
    refused now, for free) and check a lower bound of a training step's memory fits."""
    def make(n_layers: int):
        return build_model(model, task, dataclasses.replace(arena, n_layers=n_layers))
    try:
        params = _options.parameter_count(make, arena.n_layers)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"--models: cannot build {model.label!r} for {task.describe()!r}: "
                         f"{err}") from None
    tokens = arena.batch * 2 * max(task.train_lengths)  # read twice: up to twice as long
    _options.check_memory(params, 4 * tokens * arena.d_model * arena.n_layers,
                          check_device(arena.device), "--d-model/--layers/--length")


def run(cfg: JRTConfig, console: Console) -> dict:
    """Train every (task, model) read once and read twice; returns (and writes) the table."""
    arena = check_config(cfg)
    settings = {field: getattr(cfg, field) for field in RECORDED}
    with claim(Path(cfg.out), settings, "runs/*/checkpoint.safetensors", "eval jrt") as out:
        record(out, settings)
        result = run_grid(cfg, arena, out, console)
        write_atomic(out / "results.json", json.dumps(result, indent=1))
    print_table(result, console)
    console.print(f"wrote {out / 'results.json'}", markup=False)
    return result


def run_grid(cfg: JRTConfig, arena: ArenaConfig, out: Path, console: Console) -> dict:
    """Train and test every (task, model) read once and read twice; the table."""
    grid = [(t, m, times) for t in cfg.tasks for m in cfg.models for times in (1, 2)]
    rows, start = {}, time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        job = progress.add_task("jrt", total=len(grid))
        for task_label, model_label, times in grid:
            progress.update(job, description=escape(f"{model_label} on {task_label}, "
                                                    f"read {times}x"))
            task = make_task(task_label, times, cfg)
            run_dir = out / "runs" / run_ids([model_label, task_label, f"x{times}",
                                              f"L{cfg.length}", str(cfg.seed)])
            result = train_run(_spec.model(model_label), task, cfg.seed, arena, run_dir,
                               warn=warner(console))
            row = rows.setdefault((task_label, model_label),
                                  {"task": task_label, "model": model_label})
            key = "once" if times == 1 else "twice"
            row[key] = round(result["scores"][cfg.length], 4)
            row[f"steps_{key}"] = result["steps"]
            row[f"seconds_{key}"] = result["train_seconds"] + result["eval_seconds"]
            progress.advance(job)
    for row in rows.values():
        row["gain"] = round(row["twice"] - row["once"], 4)
    return {"rows": list(rows.values()), "seconds": round(time.perf_counter() - start, 1),
            "config": dataclasses.asdict(cfg)}


def print_table(result: dict, console: Console) -> None:
    """``run``'s result as a rich table: accuracy read once vs. read twice, per task × model."""
    from rich.table import Table
    c = result["config"]
    console.print(f"JRT-Prompt: test accuracy read once vs. twice; length {c['length']}, "
                  f"d_model {c['d_model']}, {c['n_layers']} layers, <= {c['steps']} steps, "
                  f"seed {c['seed']}; "
                  f"{result['seconds']:.0f}s")
    table = Table()
    for col, justify in (("task", "left"), ("model", "left"), ("read once", "right"),
                         ("read twice (JRT)", "right"), ("gain", "right"),
                         ("steps once/twice", "right")):
        table.add_column(col, justify=justify)
    for r in result["rows"]:
        table.add_row(r["task"], r["model"], f"{r['once']:.3f}", f"{r['twice']:.3f}",
                      f"{r['gain']:+.3f}", f"{r['steps_once']}/{r['steps_twice']}")
    console.print(table)
