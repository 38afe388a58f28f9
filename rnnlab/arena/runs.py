"""How the arena's runs are executed: one after another in this process (``serial``), or
``cfg.jobs`` at a time in worker processes (``parallel``). Both yield ``(item, result, None)``
for a finished run and ``(item, None, error)`` for one that raised; an OSError (writing the
results directory failed) is raised, since it ends the arena rather than one run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Optional

import torch
from rich.markup import escape

from . import spec
from .train import run_ids, train_run


@contextlib.contextmanager
def handling(signum: int, handler):
    """``handler`` for ``signum`` within the block. Only the main thread may set handlers; in
    another thread the block runs with the handler as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, signal.SIG_DFL if previous is None else previous)


def title(model, task_label: str, seed: int) -> str:
    return f"{model.label} on {task_label} (seed {seed})"


def run_dir(out: Path, model, task_label: str, seed: int) -> Path:
    return out / "runs" / run_ids([model.label, task_label, str(seed)])


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and its message."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def serial(todo, cfg, out, progress, warn):
    """Runs one after another in this process, a progress bar each; yields
    ``(item, result, None)``, or ``(item, None, error)`` for a run that raised."""
    for item in todo:
        model, task_label, task, seed = item
        name = title(model, task_label, seed)
        job = progress.add_task(escape(name), total=cfg.steps)

        def on_step(step, loss, val, job=job, name=name):
            extra = f" val {val:.3f}" if val is not None else ""
            progress.update(job, completed=step,
                            description=escape(f"{name} loss {loss:.3f}{extra}"))

        result, error = None, None
        try:
            result = train_run(model, task, seed, cfg, run_dir(out, model, task_label, seed),
                               on_step, warn)
        except OSError:  # writing the directory failed: the arena stops, not one run
            raise
        except Exception as err:  # one run's failure does not stop the others
            error = one_line(err)
        finally:
            progress.remove_task(job)
        yield item, result, error


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    pipe: Connection  # the arena's end: runs go out, progress and outcomes come back
    item: Optional[tuple] = None  # the run it trains; None while idle
    bar: Optional[int] = None  # that run's progress bar


def parallel(todo, cfg, out, progress, warn):
    """``cfg.jobs`` runs at a time, each in a worker process (same results as serial: every run
    is seeded on its own); yields as ``serial`` does, as runs finish.

    A worker gets one run at a time, so stopping never waits for queued runs, and talks to the
    arena through its own pipe, so no queue's feeder thread can block its exit. Workers ignore
    SIGINT; whatever ends this generator (the grid done, Ctrl-C, SIGTERM, an error) ends them.
    """
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch/numba thread pools
    pending = list(reversed(todo))  # pop() takes them in order
    workers = {}  # pipe -> _Worker
    try:
        while pending or any(w.item is not None for w in workers.values()):
            idle = [w for w in workers.values() if w.item is None]
            while len(idle) < len(pending) and len(workers) < cfg.jobs:
                worker = _start_worker(ctx)
                workers[worker.pipe] = worker
                idle.append(worker)
            for worker in idle[:len(pending)]:
                _assign(worker, pending.pop(), cfg, out, progress)
            busy = [w.pipe for w in workers.values() if w.item is not None]
            for pipe in wait(busy, timeout=1.0):
                worker = workers[pipe]
                outcome = _receive(worker, progress, warn)
                if outcome is None:
                    continue
                item, worker.item = worker.item, None
                progress.remove_task(worker.bar)
                if worker.process.exitcode is not None:  # it died: a new one takes its place
                    del workers[pipe]
                yield (item, *outcome)
    finally:
        _stop(workers.values())


def _start_worker(ctx) -> _Worker:
    pipe, child = ctx.Pipe()
    process = ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True)
    # SIGINT ignored is inherited through exec, so a Ctrl-C to the terminal's process group
    # cannot raise in a worker that is still starting (importing torch) either.
    with handling(signal.SIGINT, signal.SIG_IGN):
        process.start()
    child.close()  # this process keeps only its end, so it reads EOF if the worker dies
    return _Worker(process, pipe)


def _assign(worker: _Worker, item, cfg, out, progress) -> None:
    model, task_label, _, seed = item
    worker.item = item
    worker.bar = progress.add_task(escape(title(model, task_label, seed)), total=cfg.steps)
    with contextlib.suppress(OSError):  # a worker that just died: _receive reads its EOF
        worker.pipe.send((model, task_label, seed, cfg, run_dir(out, model, task_label, seed)))


def _receive(worker: _Worker, progress, warn):
    """Handle what ``worker`` sent: ``(result, error)`` once its run ended, else None. A worker's
    OSError (a full disk) is raised here: it ends the arena, not one run."""
    while worker.pipe.poll():
        try:
            kind, payload = worker.pipe.recv()
        except (EOFError, OSError):
            _end(worker.process)
            return None, f"its worker process died ({_exit_reason(worker.process.exitcode)})"
        if kind == "step":
            progress.update(worker.bar, completed=payload)
        elif kind == "warn":
            warn(payload)
        elif kind == "done":
            return payload, None
        elif isinstance(payload, OSError):
            raise payload
        else:
            return None, payload
    return None


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name
    return f"killed by {name}" + (": out of memory?" if -code == signal.SIGKILL else "")


def _stop(workers) -> None:
    """End every worker: an idle one is told to exit, a busy one is terminated (its run goes on
    from its last checkpoint next time)."""
    for worker in workers:
        if worker.item is None:
            with contextlib.suppress(OSError):
                worker.pipe.send(None)
        else:
            worker.process.terminate()
    for worker in workers:
        _end(worker.process)
        worker.pipe.close()


def _end(process, timeout: float = 5.0) -> None:
    """Wait for ``process`` to exit; kill it if it does not within ``timeout`` seconds."""
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()


def _worker_main(pipe: Connection, parent: int) -> None:
    """A worker process: train the runs the arena sends, one at a time, until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the arena's to handle
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    with contextlib.suppress(EOFError, BrokenPipeError):  # the arena is gone: no one to tell
        for model, task_label, seed, cfg, run_dir in iter(pipe.recv, None):
            torch.set_num_threads(cfg.threads)
            try:
                _, task = spec.task(task_label)
                result = train_run(model, task, seed, cfg, run_dir,
                                   lambda step, loss, val: pipe.send(("step", step)),
                                   lambda message: pipe.send(("warn", message)))
            except Exception as err:
                pipe.send(("failed", err if isinstance(err, OSError) else one_line(err)))
            else:
                pipe.send(("done", result))


def _exit_with(parent: int) -> None:
    """End this worker when the arena's process is gone (killed), so that no orphan keeps
    training and writing checkpoints."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
