"""Atomic file writes: a kill mid-write never leaves a partial file."""
from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data) -> Path:
    """Write ``data`` (str or bytes) to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
