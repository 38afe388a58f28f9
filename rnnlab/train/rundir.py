"""The output directory of a training run (``train lm``, ``train classify``, ``eval jrt``):
checked before anything is written, tied to the configuration and data that made it, written by
one process at a time.

A run records in ``OUT/config.json`` the settings that change its numbers and a fingerprint of
its data. Once the directory holds a checkpoint, a command whose settings or data differ is
refused before any file is touched, naming the fields: resuming would mix two runs (a changed
``--data`` once rewrote ``vocab.json`` under a model trained on another vocabulary). Budgets
(``steps``, ``minutes``), the device and the output paths are not recorded: raising a budget
continues a run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

import torch
from rich.console import Console
from rich.markup import escape

from ..tools.files import TEMP_SUFFIX, directory_lock, remove_stale_temps, write_atomic

CONFIG = "config.json"


def check_writable(out: Path, name: str = "--out") -> None:
    """``out`` must be a directory, or creatable: the nearest existing ancestor a writable
    directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{name}: expected a directory, got the file {str(out)!r}")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{name}: cannot create {str(out)!r}: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: {str(existing)!r} is not writable (read-only or no "
                         f"permission); choose another output directory")


def fingerprint(*parts) -> str:
    """A short sha256 of strings and tensors, in order: what data a run was trained on."""
    h = hashlib.sha256()
    for part in parts:
        if torch.is_tensor(part):
            h.update(part.contiguous().numpy().tobytes())
        else:
            h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def read_config(out: Path) -> dict:
    """``OUT/config.json``; a ValueError naming the file when it is not a JSON object."""
    path = Path(out) / CONFIG
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a JSON object (damaged); delete it to resume the run "
                         f"with the options given, or use another --out")
    return saved


def check_same_run(out: Path, settings: dict, state: str) -> None:
    """Refuse ``out`` when it holds a run (a file matching the glob ``state``) recorded with
    other ``settings``. A run without ``config.json`` (an older rnnlab) is taken as it is."""
    out = Path(out)
    if not out.is_dir() or not (out / CONFIG).exists() or not any(out.glob(state)):
        return
    saved, now = read_config(out), json.loads(json.dumps(settings))
    differ = [k for k in sorted(saved.keys() | now.keys()) if saved.get(k) != now.get(k)]
    if differ:
        diffs = "; ".join(f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise ValueError(f"--out: {out} holds a run with other settings ({diffs}); use another "
                         f"--out for a new run, or the same settings to resume that one")


@contextlib.contextmanager
def claim(out: Path, settings: dict, state: str, what: str) -> Iterator[Path]:
    """Hold ``out`` for one run: check it (writable; the same run as recorded, see
    ``check_same_run``) before touching it, then lock it against other writers and remove the
    temporary files of killed writers. The caller then loads its checkpoint and ``record``s."""
    check_writable(out)
    check_same_run(out, settings, state)
    with directory_lock(out, what):
        check_same_run(out, settings, state)  # a writer may have finished since the check
        remove_stale_temps(out)
        _remove_stale_dirs(out)
        yield Path(out)


def record(out: Path, settings: dict) -> None:
    """Tie ``out`` to ``settings`` (``OUT/config.json``)."""
    write_atomic(Path(out) / CONFIG, json.dumps(settings, indent=1))


def save_model(model, directory: Path) -> None:
    """``model.save_pretrained(directory)`` with no half-written directory: written beside it
    under a temporary name, then swapped in (the old one is removed only after)."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
                              f"{TEMP_SUFFIX}")
    old = tmp.with_name(tmp.name + ".old")
    try:
        model.save_pretrained(tmp)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        if old.exists() and not directory.exists():
            os.replace(old, directory)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_dirs(out: Path) -> None:
    """The temporary model directories (``save_model``) that killed writers left in ``out``."""
    for path in Path(out).glob(f".*{TEMP_SUFFIX}*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def warner(console: Console) -> Callable[[str], None]:
    """Print a warning as one yellow line (the message is not read as markup)."""
    return lambda message: console.print(f"[yellow]warning:[/yellow] {escape(message)}",
                                         soft_wrap=True)
