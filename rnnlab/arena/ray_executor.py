"""``rnnlab arena --executor ray [--address ADDR]``: the grid's runs as Ray tasks.

One run is one task asking for ``cfg.threads`` CPUs (and one GPU with ``--device cuda``); Ray
places the tasks on the cluster's nodes as resources free up (``--jobs`` plays no part). A task
only trains and returns its result: this process, the driver, gathers the results as they come
and alone writes the records and reports, exactly as with the local executor, so the files, the
records and resuming are the same.

A task whose worker process dies (killed, out of memory, its node lost) is run again by Ray,
up to ``max_retries`` times, and goes on from the run's last checkpoint in
``OUT/runs/<id>/checkpoint.safetensors``. The tasks write those checkpoints at the absolute path
of ``--out``: on a cluster it must be a directory that every node sees at the same path (NFS or
another shared file system); otherwise a run retried on another node starts again from step 0.
Every node needs the same Python environment with rnnlab installed.

Without ``--address`` Ray joins the cluster named by ``RAY_ADDRESS``, else the one that
``ray start`` runs on this machine, else starts a local instance for the arena and stops it at
the end. A process that has already called ``ray.init`` (a notebook, a test) keeps its Ray
session as it is.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch

from ..checks import check_choice
from . import spec
from .runner import LocalExecutor, Outcome
from .runs import one_line, run_dir
from .train import train_run

INSTALL = "pip install 'rnnlab[ray]'"
EXECUTORS = ("local", "ray")
MAX_RETRIES = 3  # runs of a task whose worker died, after the first
POLL_SECONDS = 1.0  # the longest wait for a result, so Ctrl-C and SIGTERM are handled promptly


def from_options(executor: str, address: Optional[str]):
    """The executor that ``rnnlab arena --executor E --address A`` asks for; ValueError naming
    the option for a bad one, or for ``ray`` when Ray is not installed."""
    check_choice(None, "--executor", executor, EXECUTORS)
    if executor == "local":
        if address is not None:
            raise ValueError(f"--address: only with --executor ray, got {address!r}")
        return LocalExecutor()
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ValueError(f"--executor ray: Ray is not installed; {INSTALL}") from None
    return RayExecutor(address)


class RayExecutor:
    """The runs as Ray tasks (see the module docstring). ``train`` is what a task calls, as
    ``train_run`` is called (tests plant faults through it)."""

    def __init__(self, address: Optional[str] = None, max_retries: int = MAX_RETRIES,
                 train=train_run):
        self.address, self.max_retries, self.train = address, max_retries, train
        self._started = False  # whether this executor started Ray, and so stops it

    def check(self, cfg) -> None:
        """Join (or start) Ray and make sure some node can hold one run."""
        import ray
        device = _device(cfg.device)
        if not ray.is_initialized():
            if self.address is not None:
                _check_address(self.address, "--address")
            elif os.environ.get("RAY_ADDRESS"):
                _check_address(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = f"at {self.address!r}" if self.address else "(local instance)"
                raise ValueError(f"--address: cannot start or join Ray {where}: "
                                 f"{_first_line(err)} (is it up: ray status? A cluster with "
                                 f"token authentication also needs RAY_AUTH_MODE=token and "
                                 f"its token here: ray get-auth-token)") from None
            self._started = True
        cpus, gpus = _largest_node()
        if cpus < cfg.threads or (device.type == "cuda" and gpus < 1):
            self.close()
            need = f"{cfg.threads} CPUs" + (" and 1 GPU" if device.type == "cuda" else "")
            raise ValueError(f"--threads/--device: each run asks Ray for {need}, but no node of "
                             f"the cluster has that much (largest: {cpus:g} CPUs, {gpus:g} GPUs)"
                             f"; a task would wait for ever")

    def __call__(self, todo, cfg, out: Path, progress, warn) -> Iterator[Outcome]:
        """Submit every run, then yield their outcomes as they finish; closing the generator
        (the grid done, Ctrl-C, SIGTERM, an error) cancels the runs still going."""
        import ray
        task = ray.remote(_run_task).options(
            num_cpus=cfg.threads, num_gpus=1 if _device(cfg.device).type == "cuda" else 0,
            max_retries=self.max_retries, retry_exceptions=False)  # worker deaths only
        out = Path(out).resolve()  # the tasks' working directory is not ours
        pending = {}
        for item in todo:
            model, task_label, _, seed = item
            ref = task.remote(self.train, model, task_label, seed, cfg,
                              str(run_dir(out, model, task_label, seed)))
            pending[ref] = item
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    yield (pending.pop(ref), *self._outcome(ref, warn))
        finally:
            for ref in pending:  # killed where they run; each goes on from its checkpoint
                ray.cancel(ref, force=True)

    def _outcome(self, ref, warn) -> Tuple[Optional[dict], Optional[str]]:
        import ray
        try:
            kind, payload, notes = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # raised outside train (unpickling, exit)
            return None, one_line(err.cause) if err.cause is not None else _first_line(err)
        except ray.exceptions.RayError as err:  # its worker died max_retries + 1 times, ...
            return None, (f"its Ray worker died {self.max_retries + 1} times "
                          f"({type(err).__name__}: {_first_line(err)})")
        for note in notes:
            warn(note)
        if kind == "done":
            return payload, None
        if isinstance(payload, OSError):  # writing OUT/runs failed: that ends the arena
            raise payload
        return None, payload

    def close(self) -> None:
        if self._started:
            import ray
            ray.shutdown()
            self._started = False


def _run_task(train, model, task_label: str, seed: int, cfg, path: str) -> tuple:
    """One run, in a Ray worker: ``(kind, payload, warnings)`` with ``("done", result)`` or
    ``("failed", one-line error or the OSError)``, as the local workers report it."""
    torch.set_num_threads(cfg.threads)
    notes: List[str] = []
    try:
        _, task = spec.task(task_label)
        result = train(model, task, seed, cfg, Path(path), None, notes.append)
    except OSError as err:
        return "failed", err, notes
    except Exception as err:  # one run's failure does not stop the others
        return "failed", one_line(err), notes
    return "done", result, notes


def _device(value) -> torch.device:
    """``--device`` for Ray: ``cpu``, or ``cuda`` (Ray gives each run its GPU and makes it the
    task's only visible one, so an index would name the wrong device)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda") or device.index is not None:
        raise ValueError(f"--device: with --executor ray, expected cpu or cuda (Ray picks each "
                         f"run's GPU), got {value!r}")
    return device


def _check_address(address: str, name: str) -> None:
    """Refuse a malformed address, and a HOST:PORT where nothing listens: ``ray.init`` would
    retry that for minutes. ``name`` says where the address came from."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{name}: expected auto, HOST:PORT or ray://HOST:PORT, got "
                         f"{address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ValueError(f"{name}: nothing answers at {address} ({err.strerror or err}); "
                         f"start the cluster's head there: ray start --head --port={port}") \
            from None


def _largest_node() -> Tuple[float, float]:
    """The most CPUs and GPUs that one live node of the cluster has."""
    import ray
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return (max((n.get("CPU", 0) for n in nodes), default=0),
            max((n.get("GPU", 0) for n in nodes), default=0))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(err).__name__
