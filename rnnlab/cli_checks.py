"""What the CLI does with what a user types: option strings parsed, each error naming the option,
the expected form and what was given, and every failure turned into one line and an exit code
(``user_errors``: a mistake 2, a file that cannot be written or a failed run 1, Ctrl-C 130)."""
from __future__ import annotations

import contextlib
import errno
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .train.options import INT_MAX, check_int

errors = Console(stderr=True, soft_wrap=True)  # one line per message, however long
# Wide tables stay readable when output goes to a file or a pipe (rich would assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 140)
MARKUP = "markdown"  # rich markup would take "[default: ...]" in a help text for a style tag

THREADS_MAX = 1024  # threads or processes: more than any CPU has cores
# OSErrors of the file system (not of a network or a process): a run cannot write its outputs
FILE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
               errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ENOENT,
               errno.EEXIST, errno.ENOTEMPTY, errno.EMLINK, errno.EMFILE, errno.ENFILE}


@contextlib.contextmanager
def user_errors(where: Optional[Path] = None, interrupted: Optional[str] = "interrupted",
                 failures: tuple = ()):
    """Errors as one red line on stderr: a user's mistake (ValueError, TypeError; rnnlab's
    DirectoryLocked and CheckpointError are ValueErrors) exits 2; a file-system error (named by
    its file, else by ``where``), memory exhausted, a non-finite loss or one of ``failures``
    exits 1; Ctrl-C prints ``interrupted`` (None: the command said it already) and exits 130."""
    try:
        yield
    except (ValueError, TypeError) as err:
        error(str(err), 2)
    except OSError as err:
        if err.errno not in FILE_ERRNOS:
            raise
        error(f"cannot write {err.filename or where or 'a file'}: {err.strerror}", 1)
    except KeyboardInterrupt:
        if interrupted is not None:
            error(interrupted, 130)
        raise typer.Exit(130) from None
    except (FloatingPointError, *failures) as err:  # a run diverged or failed: it says why
        error(str(err), 1)
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        error(f"out of memory ({str(err).splitlines()[0] if str(err) else 'MemoryError'}); "
               f"choose smaller sizes", 1)


def error(message: str, code: int):
    errors.print(f"[red]error:[/red] {escape(' '.join(message.split()))}")
    raise typer.Exit(code)


def out_of_memory(err: Exception) -> bool:
    """Python's or torch's allocator failing (CUDA's OutOfMemoryError, the CPU allocator's
    message)."""
    import torch
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) \
        or "can't allocate memory" in str(err)


# --- option parsing: each error names the option, the expected form and what was given -----
def path(text: str, option: str) -> Path:
    if not text.strip():
        raise ValueError(f"{option}: expected a path, got {text!r}")
    return Path(text)


def output_dir(text: str, option: str = "--out") -> Path:
    """An output folder: an existing directory, or one that can be created in a writable
    place; refused before any work starts (not after an hour of training)."""
    from .train.rundir import check_writable
    out = path(text, option)
    check_writable(out, option)
    return out


def output_file(text: str, option: str = "--out", suffix: Optional[str] = None,
                what: str = "file") -> Path:
    """An output file (with ``suffix`` when given, e.g. ``".json"``; ``what`` names it in the
    error): not a directory, its folder existing or creatable and writable; refused before any
    work starts."""
    from .train.rundir import check_writable
    out = path(text, option)
    if out.is_dir() or not out.name:
        raise ValueError(f"{option}: expected a {what} path, got the directory {text!r}")
    if suffix is not None and out.suffix != suffix:
        raise ValueError(f"{option}: expected a {suffix} file path, got {text!r}")
    check_writable(out.parent, option)
    return out


def specs(text: Optional[str], option: str, example: str) -> Optional[List[str]]:
    """Comma-separated specs (None when the option is not given); an empty list is refused."""
    from .arena.spec import split_list
    if text is None:
        return None
    specs = split_list(text)
    if not specs:
        raise ValueError(f"{option}: expected comma-separated specs such as {example!r}, "
                         f"got {text!r}")
    return specs


def ints(text: str, option: str, example: str, low: int, high: Optional[int] = None
          ) -> List[int]:
    """Comma-separated integers in ``[low, high]`` (default: ``INT_MAX``)."""
    high = INT_MAX if high is None else high
    try:
        values = [int(s) for s in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not low <= v <= high for v in values):
        raise ValueError(f"{option}: expected comma-separated integers in [{low}, {high}] such "
                         f"as {example!r}, got {text!r}")
    return values


def names(text: Optional[str], option: str) -> Optional[List[str]]:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ValueError(f"{option}: expected comma-separated names, got {text!r}")
    return names


def counts(low: int = 1, high: Optional[int] = None, **values: Optional[int]) -> None:
    """Each integer option (named by its keyword, ``_`` for ``-``) in ``[low, high]`` (default:
    ``INT_MAX``); None stands for an option not given."""
    for name, value in values.items():
        if value is not None:
            check_int(f"--{name.replace('_', '-')}", value, low,
                      INT_MAX if high is None else high)
