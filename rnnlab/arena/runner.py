"""``rnnlab arena``: train every model on every task for every seed, then report.

Readable top to bottom: check everything (specs and their options, device, ``--out``) before
anything is written, take the output directory's lock (one arena per directory), tie the
directory to the configuration, skip the runs that already have records, train the rest with a
progress bar per run and one for the grid, and rewrite the records and reports after each run.

Where the runs train is an ``Executor``: ``LocalExecutor`` (this machine: one run after another,
or ``cfg.jobs`` worker processes) by default, ``ray_executor.RayExecutor`` for a Ray cluster.
Whichever it is, only this process writes the results directory's records and reports.

When things go wrong: a run that raises is reported in one line and the others go on (then
``ArenaFailed`` names the failed runs; running the command again retries them). Ctrl-C or
SIGTERM ends the workers within seconds, keeps every finished run and says how to resume. An
error writing the directory (a full disk) stops the arena with ``ArenaFailed``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import platform
import signal
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Protocol, Tuple

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from ..tasks.base import generator
from ..tools.device import check_device
from ..tools.files import directory_lock, remove_stale_temps
from . import report, runs, spec, store
from .config import CLI_OPTIONS, ArenaConfig, validate
from .train import build_model


class ArenaFailed(RuntimeError):
    """Runs failed (the others are recorded), or the results directory could not be written."""


# (model spec, task label, task, seed), the run's result or None, None or the error in one line
Outcome = Tuple[tuple, Optional[dict], Optional[str]]


class Executor(Protocol):
    """Where a grid's runs train. ``check`` refuses what it cannot run, before anything is
    written (it may connect to a cluster); calling it trains ``todo`` and yields an ``Outcome``
    per run as runs finish (closing the generator stops the runs still going; an OSError, a
    results directory that cannot be written, is raised); ``close`` frees what ``check`` took."""

    def check(self, cfg: ArenaConfig) -> None: ...

    def __call__(self, todo: List[tuple], cfg: ArenaConfig, out: Path, progress: Progress,
                 warn: Callable[[str], None]) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """This machine: the runs one after another in this process, or ``cfg.jobs`` at a time in
    worker processes (``runs.serial``, ``runs.parallel``)."""

    def check(self, cfg: ArenaConfig) -> None:
        check_device(cfg.device)

    def __call__(self, todo, cfg, out, progress, warn) -> Iterator[Outcome]:
        execute = runs.parallel if cfg.jobs > 1 and len(todo) > 1 else runs.serial
        return execute(todo, cfg, out, progress, warn)

    def close(self) -> None:
        pass


def _records(model: spec.ModelSpec, task_label: str, task, seed: int, result: dict,
             cfg: ArenaConfig, preset: str) -> List[dict]:
    base = {"model": model.label, "task": task_label, "seed": seed, "metric": task.metric,
            "train_length": task.train_lengths[1], "steps": result["steps"],
            "stopped_early": result["stopped_early"], "train_seconds": result["train_seconds"],
            "eval_seconds": result["eval_seconds"], "parameters": result["parameters"],
            "engine": result["engine"], "mixer": model.mixer, "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "lr": cfg.lr if model.lr is None else model.lr,
            "preset": preset, "rnnlab_version": __version__,
            "torch_version": torch.__version__,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    extra, depth = result.get("extra_scores", {}), result.get("act_depth", {})
    return [{**base, "length": n, "value": round(v, 6),
             **{k: round(x, 6) for k, x in extra.get(n, {}).items()},
             **({"act_depth": round(depth[n], 6)} if n in depth else {})}
            for n, v in result["scores"].items()]


def run_arena(cfg: ArenaConfig, out: Path, console: Console, preset: str = "custom",
              fresh: bool = False, executor: Optional[Executor] = None) -> List[dict]:
    """Run (or resume) the grid of ``cfg`` into ``out``; return all records.

    ``fresh`` first deletes the arena's files in ``out`` (holding its lock). ``executor`` trains
    the runs (default: ``LocalExecutor``); the records do not depend on it. Raises ValueError,
    with nothing written, for a bad configuration, an unusable ``out``, or an ``out`` that
    another process writes; ``ArenaFailed``; KeyboardInterrupt on Ctrl-C or SIGTERM, once the
    finished runs are recorded.
    """
    executor = executor if executor is not None else LocalExecutor()
    models, tasks = _resolve(cfg)
    out = Path(out)
    store.check_out(out, fresh)
    executor.check(cfg)  # the last check: it may start or join a cluster
    cfg = dataclasses.replace(cfg, models=[m.label for m in models],
                              tasks=[label for label, _ in tasks])
    threads = torch.get_num_threads()
    try:
        with runs.handling(signal.SIGTERM, _interrupt), directory_lock(out, "arena"):
            ours = store.is_results_dir(out)  # before anything is written into it
            if fresh:
                store.clear(out)
            records = store.load_records(out, _warner(console))
            grown = store.check_config(out, cfg.training_fields(), bool(records),
                                       lambda there: _check_new_labels(cfg, there, out))
            if ours:  # temporary files of writers killed or out of disk; never sweep `--out ~`
                remove_stale_temps(out)
            torch.set_num_threads(cfg.threads)
            shown = dataclasses.replace(cfg, **grown)  # the reports show every run in `out`
            return _run_grid(cfg, shown, models, tasks, out, console, preset, records, executor)
    except OSError as err:
        raise ArenaFailed(f"arena: cannot write {err.filename or f'in {out}'}: "
                          f"{err.strerror or err}; the finished runs are kept: fix this and run "
                          f"the same command again to resume") from None
    finally:
        torch.set_num_threads(threads)
        executor.close()


def _resolve(cfg: ArenaConfig):
    """The model and task specs, once every field is checked. Each model is built for each task
    on the meta device (no memory, no compute), so an option that only its constructor checks
    is refused here, not in a run after the directory is written. (The device is the
    executor's to check: it may live on other machines.)"""
    validate(cfg)
    models = [spec.model(m) for m in cfg.models]
    tasks = [spec.task(t) for t in cfg.tasks]
    # (``validate`` has refused labels written twice; these are two labels of one thing)
    spec.check_distinct("--models", "model", cfg.models,
                        [spec.identity(m, cfg.lr) for m in models])
    spec.check_distinct("--tasks", "task", cfg.tasks, [task for _, task in tasks])
    for label, task in tasks:
        _check_lengths(label, task)
    for model in models:
        for label, task in tasks:
            try:
                with torch.device("meta"):
                    build_model(model, task, cfg)
            except (TypeError, ValueError) as err:
                raise ValueError(f"--models: cannot build {model.label!r} for the task "
                                 f"{label!r}: {err}") from None
    return models, tasks


def _check_new_labels(cfg: ArenaConfig, there: dict, out: Path) -> None:
    """Refuse a label new to ``out`` that builds a model or task ``out`` holds under another
    label: the directory would hold the same runs twice. (Labels there that no longer parse,
    from another rnnlab version, are left out of the comparison.)"""
    for field, noun, build in (("models", "model", lambda m: spec.identity(spec.model(m), cfg.lr)),
                               ("tasks", "task", lambda t: spec.task(t)[1])):
        held = []
        for label in there[field]:
            try:
                held.append((label, build(label)))
            except (TypeError, ValueError):
                pass
        for label in getattr(cfg, field):
            if label not in there[field]:
                new = build(label)  # once, not once per label held
                same = next((old for old, built in held if built == new), None)
                if same is not None:
                    raise ValueError(f"{CLI_OPTIONS[field]}: {label!r} is the {noun} {same!r} "
                                     f"that {out} already holds; write {same!r} to run more "
                                     f"of it there")


def _check_lengths(label: str, task) -> None:
    """Draw one sequence at each length a run will use (the shortest and longest train length,
    every test length), so that a task whose options cannot fill a length (a vocabulary too
    small for the sets) is refused before the directory is written, not in every run."""
    for length in sorted({*task.train_lengths, *task.test_lengths}):
        try:
            task.sample(1, length, generator(0, "test"))
        except ValueError as err:
            raise ValueError(f"--tasks: {label!r} cannot draw its length {length} (train "
                             f"{list(task.train_lengths)}, test {list(task.test_lengths)}): "
                             f"{err}") from None


def _warner(console: Console):
    return lambda message: console.print(f"[yellow]warning:[/yellow] {escape(message)}",
                                         soft_wrap=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _run_grid(cfg, shown, models, tasks, out, console, preset, records,
              executor) -> List[dict]:
    """Train the runs of ``cfg``'s grid not finished in ``records``; report those of ``shown``
    (the grid of every command run into ``out``)."""
    grid = [(m, label, task, seed) for label, task in tasks for seed in cfg.seeds for m in models]
    lengths = {label: task.test_lengths for label, task in tasks}
    done = store.finished(records, lengths)
    # A run of this grid's tasks with only some lengths recorded runs again; the records of
    # other tasks (an earlier command's) are kept as they are.
    records = [r for r in records
               if r["task"] not in lengths or (r["model"], r["task"], r["seed"]) in done]
    todo = [g for g in grid if (g[0].label, g[1], g[3]) not in done]
    console.print(f"arena: {len(grid)} runs ({len(models)} models × {len(tasks)} tasks × "
                  f"{len(cfg.seeds)} seeds), {len(grid) - len(todo)} already finished; "
                  f"results in {out}")
    start = time.perf_counter()
    failed: List[str] = []
    try:
        trained = _train(todo, len(grid), cfg, shown, out, console, preset, records, failed,
                         start, executor)
    except KeyboardInterrupt:  # count this grid's runs: `out` may hold other commands' too
        ours = {(m.label, label, seed) for m, label, _, seed in grid}
        recorded = len(ours & store.finished(records, lengths))
        console.print(f"arena: interrupted; {recorded} of {len(grid)} runs are recorded in "
                      f"{out}; run the same command again to resume", markup=False,
                      soft_wrap=True)
        raise
    finally:  # a worker stopped mid-write (a failed or interrupted arena) left a temporary file;
        # every worker has ended here. Only the runs' own directories: `--out` may be ~.
        for model, label, _, seed in todo:
            remove_stale_temps(runs.run_dir(out, model, label, seed))
    if not trained:  # the reports are rewritten after each run; else write them now
        report.write_all(out, shown, records, _meta(shown, preset, start))
    for table in report.rich_tables(shown, records):
        console.print(table)
    console.print(f"arena: {time.perf_counter() - start:.0f}s; wrote results.jsonl, results.csv, "
                  f"results.md, plots/, report.html in {out}")
    if failed:
        raise ArenaFailed(f"arena: {len(failed)} of {len(todo)} runs failed ({'; '.join(failed)})"
                          f"; the others are recorded in {out}; run the same command again to "
                          f"retry the failed ones")
    return records


def _train(todo, n_grid, cfg, shown, out, console, preset, records, failed, start,
           executor) -> int:
    """Train ``todo`` with ``executor``, appending to ``records`` (saved after each run) and to
    ``failed`` (the runs that raised); returns how many runs were recorded."""
    trained = 0
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    warn = _warner(console)
    with Progress(*columns, console=console, transient=True) as progress, \
            contextlib.closing(executor(todo, cfg, out, progress, warn)) as results:
        overall = progress.add_task("grid", total=n_grid, completed=n_grid - len(todo))
        for (model, task_label, task, seed), result, error in results:
            progress.advance(overall)
            title = runs.title(model, task_label, seed)
            if error is not None:
                failed.append(title)
                console.print(f"  {escape(title)}: [red]failed[/red]: {escape(error)}",
                              soft_wrap=True)
                continue
            if result.get("curve") is not None:  # first: a run without records runs again
                depth = result.get("depth_curve")
                store.add_curve(out, {"model": model.label, "task": task_label, "seed": seed,
                                      "metric": task.metric, "curve": result["curve"],
                                      **({"act_depth": depth} if depth else {})}, warn)
            records.extend(_records(model, task_label, task, seed, result, cfg, preset))
            store.save_records(out, records)
            report.write_all(out, shown, records, _meta(shown, preset, start))
            trained += 1
            console.print(f"  {title}: {result['steps']} steps in {result['train_seconds']:.0f}s"
                          f"{' (early stop)' if result['stopped_early'] else ''}; "
                          + ", ".join(f"T={n}: {v:.3f}" for n, v in result["scores"].items()),
                          markup=False)
    return trained


def _meta(cfg: ArenaConfig, preset: str, start: float) -> dict:
    return {"preset": preset, "models": ", ".join(cfg.models), "tasks": ", ".join(cfg.tasks),
            "seeds": cfg.seeds, "size": f"d_model={cfg.d_model}, n_layers={cfg.n_layers}",
            "budget": f"≤{cfg.steps} steps × batch {cfg.batch}, lr {cfg.lr}",
            "machine": f"{platform.machine()} {platform.processor() or ''}, "
                       f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            "wall time so far": f"{time.perf_counter() - start:.0f}s"}
