"""Files a run writes: atomic writes, leftover temporary files, one writer per directory.

- ``write_atomic`` writes to a temporary file with a unique name beside the target and renames
  it, so a kill never leaves a partial file and concurrent writers never share a temp file; on
  any error (a full disk, a read-only directory) the temporary file is removed.
- ``remove_stale_temps`` deletes the temporary files a killed writer left behind.
- ``directory_lock`` makes a process the only writer of a directory (a second arena on the same
  ``--out`` is refused, naming the first), released when the process ends, however it ends.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import filelock

from ..errors import DirectoryLocked

TEMP_SUFFIX = ".rnnlab-tmp"
LOCK_NAME = ".rnnlab.lock"


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path``, unique to this writer (pid and a random part)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def write_atomic(path: Path, data) -> Path:
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno and err.filename != str(path):  # name the file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    return path


def remove_stale_temps(directory: Path) -> int:
    """Delete the temporary files left under ``directory`` by writers that were killed or met
    a full disk; returns how many. Call it while holding ``directory_lock(directory)``, when no
    writer of this directory can be running."""
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    stale = [p for p in directory.rglob(f"*{TEMP_SUFFIX}") if p.is_file()]
    stale += [p for p in directory.rglob(".*.tmp") if p.is_file()]  # older rnnlab versions
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()
    return len(stale)


@contextlib.contextmanager
def directory_lock(directory: Path, what: str = "rnnlab") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if missing) for the ``with`` block.

    Raises ``DirectoryLocked`` (a ValueError) naming the holder when another process, or
    another ``with`` block of this one, holds it. The operating system releases the lock when
    its holder dies, so a killed run never leaves the directory locked.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(directory / LOCK_NAME), timeout=0)
    owner = directory / f"{LOCK_NAME}.owner"
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DirectoryLocked(f"{directory} is in use by another rnnlab process "
                              f"({_holder(owner)}); wait for it to finish, stop it, or "
                              f"choose another output directory") from None
    try:
        write_atomic(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                        "what": what, "command": " ".join(sys.argv),
                                        "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield directory
    finally:
        with contextlib.suppress(OSError):
            owner.unlink()
        lock.release()


def _holder(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        return (f"pid {info['pid']} on {info['host']}, {info['what']} since {info['since']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
