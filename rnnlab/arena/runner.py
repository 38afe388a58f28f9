"""``rnnlab arena``: train every model on every task for every seed, then report.

Readable top to bottom: resolve the specs (all errors before anything is written), tie the output
directory to the configuration, skip the runs that already have records, train the rest with a
progress bar per run and one for the grid, and rewrite the records and reports after each run.
"""
from __future__ import annotations

import dataclasses
import datetime
import multiprocessing
import os
import platform
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import List, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import __version__
from . import report, spec, store
from .config import ArenaConfig, validate
from .train import run_ids, train_run


def _records(model: str, task_label: str, task, seed: int, result: dict, cfg: ArenaConfig,
             mixer: str, preset: str) -> List[dict]:
    base = {"model": model, "task": task_label, "seed": seed, "metric": task.metric,
            "train_length": task.train_lengths[1], "steps": result["steps"],
            "stopped_early": result["stopped_early"], "train_seconds": result["train_seconds"],
            "eval_seconds": result["eval_seconds"], "parameters": result["parameters"],
            "engine": result["engine"], "mixer": mixer, "d_model": cfg.d_model,
            "n_layers": cfg.n_layers, "preset": preset, "rnnlab_version": __version__,
            "torch_version": torch.__version__,
            "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}
    return [{**base, "length": n, "value": round(v, 6)} for n, v in result["scores"].items()]


def run_arena(cfg: ArenaConfig, out: Path, console: Console, preset: str = "custom") -> List[dict]:
    """Run (or resume) the grid of ``cfg`` into ``out``; return all records."""
    validate(cfg)
    models = [spec.model(m) for m in cfg.models]
    tasks = [spec.task(t) for t in cfg.tasks]
    cfg = dataclasses.replace(cfg, models=[m.label for m in models],
                              tasks=[label for label, _ in tasks])
    store.check_config(out, cfg.training_fields())
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_grid(cfg, models, tasks, out, console, preset)
    finally:
        torch.set_num_threads(threads)


def _run_grid(cfg, models, tasks, out, console, preset) -> List[dict]:
    records = store.load_records(out)
    done = store.finished(records)
    grid = [(m, label, task, seed) for label, task in tasks for seed in cfg.seeds for m in models]
    todo = [g for g in grid if (g[0].label, g[1], g[3]) not in done]
    console.print(f"arena: {len(grid)} runs ({len(models)} models × {len(tasks)} tasks × "
                  f"{len(cfg.seeds)} seeds), {len(grid) - len(todo)} already finished; "
                  f"results in {out}")
    start = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        overall = progress.add_task("grid", total=len(grid), completed=len(grid) - len(todo))
        execute = _parallel if cfg.jobs > 1 and len(todo) > 1 else _serial
        for (model, task_label, task, seed), result in execute(todo, cfg, out, progress):
            records += _records(model.label, task_label, task, seed, result, cfg, model.mixer,
                                preset)
            store.save_records(out, records)
            report.write_all(out, cfg, records, _meta(cfg, preset, start))
            progress.advance(overall)
            console.print(f"  {model.label} on {task_label} (seed {seed}): {result['steps']} "
                          f"steps in {result['train_seconds']:.0f}s"
                          f"{' (early stop)' if result['stopped_early'] else ''}; "
                          + ", ".join(f"T={n}: {v:.3f}" for n, v in result["scores"].items()))
    if not todo:
        report.write_all(out, cfg, records, _meta(cfg, preset, start))
    for table in report.rich_tables(cfg, records):
        console.print(table)
    console.print(f"arena: {time.perf_counter() - start:.0f}s; wrote results.jsonl, results.csv, "
                  f"results.md, plots/, report.html in {out}")
    return records


def _run_dir(out: Path, model, task_label: str, seed: int) -> Path:
    return out / "runs" / run_ids([model.label, task_label, str(seed)])


def _serial(todo, cfg, out, progress):
    """Runs one after another in this process, a progress bar each."""
    for item in todo:
        model, task_label, task, seed = item
        title = f"{model.label} on {task_label} (seed {seed})"
        job = progress.add_task(title, total=cfg.steps)

        def on_step(step, loss, val, job=job, title=title):
            extra = f" val {val:.3f}" if val is not None else ""
            progress.update(job, completed=step, description=f"{title} loss {loss:.3f}{extra}")

        result = train_run(model, task, seed, cfg, _run_dir(out, model, task_label, seed),
                           on_step)
        progress.remove_task(job)
        yield item, result


_PROGRESS = None  # in a worker process: the queue its progress goes back through


def _init_worker(parent: int, queue) -> None:
    """Worker initializer: keep the progress queue, and end this process when the arena's
    process is gone (killed), so no orphan keeps training and writing checkpoints."""
    global _PROGRESS
    _PROGRESS = queue

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _worker(model, task_label: str, seed: int, cfg: ArenaConfig, run_dir: Path):
    """One run in a worker process."""
    torch.set_num_threads(cfg.threads)
    _, task = spec.task(task_label)
    key = (model.label, task_label, seed)
    return train_run(model, task, seed, cfg, run_dir,
                     lambda step, loss, val: _PROGRESS.put((key, step)))


def _parallel(todo, cfg, out, progress):
    """``cfg.jobs`` runs at a time in worker processes (same results as serial: every run is
    seeded on its own); results come back as runs finish."""
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch/numba thread pools
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(cfg.jobs, mp_context=ctx, initializer=_init_worker,
                               initargs=(os.getpid(), queue))
    with pool:
        jobs, bars = {}, {}
        for item in todo:
            model, task_label, _, seed = item
            key = (model.label, task_label, seed)
            bars[key] = progress.add_task(f"{model.label} on {task_label} (seed {seed})",
                                          total=cfg.steps)
            jobs[pool.submit(_worker, model, task_label, seed, cfg,
                             _run_dir(out, model, task_label, seed))] = item
        pending = set(jobs)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while not queue.empty():
                key, step = queue.get()
                progress.update(bars[key], completed=step)
            for future in finished:
                model, task_label, _, seed = jobs[future]
                progress.remove_task(bars[(model.label, task_label, seed)])
                yield jobs[future], future.result()


def _meta(cfg: ArenaConfig, preset: str, start: float) -> dict:
    return {"preset": preset, "models": ", ".join(cfg.models), "tasks": ", ".join(cfg.tasks),
            "seeds": cfg.seeds, "size": f"d_model={cfg.d_model}, n_layers={cfg.n_layers}",
            "budget": f"≤{cfg.steps} steps × batch {cfg.batch}, lr {cfg.lr}",
            "machine": f"{platform.machine()} {platform.processor() or ''}, "
                       f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            "wall time so far": f"{time.perf_counter() - start:.0f}s"}


def remove_results(out: Optional[Path]) -> None:
    """``--fresh``: delete a previous results directory."""
    if out is not None and out.exists():
        shutil.rmtree(out)
