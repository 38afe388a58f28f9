"""The results directory: records, the config they belong to, and atomic writes.

Layout of ``--out DIR``::

    config.json        the training fields the results were produced with
    results.jsonl      one record per (model, task, seed, length, metric)
    results.csv        the same records as a table
    results.md         the summary table (markdown)
    curves.jsonl       one learning curve per run: (step, mean training loss, validation),
                       and (step, ACT depth) for a Universal Transformer with ACT
    plots/<task>.png   metric vs test length, one line per model
    plots/curves/<task>.png   validation metric (and ACT depth) vs training step, per run
    plots/overview.png        models x tasks heatmaps (two or more tasks)
    report.html        table and plots in one self-contained file
    runs/<id>/         checkpoint.safetensors of a run in progress / the trained weights

Every file is written to a temporary name and renamed, so a kill never leaves a partial file.
Files that are damaged all the same (by hand, by another program, by an older rnnlab) are
refused in one line naming the file and what to do, never read as something else.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from ..checks import check_choice, is_int, is_number
from ..tools.files import LOCK_NAME, TEMP_SUFFIX, write_atomic

FIELDS = ["model", "task", "seed", "length", "metric", "value", "train_length", "steps",
          "stopped_early", "train_seconds", "eval_seconds", "parameters", "engine", "mixer",
          "d_model", "n_layers", "lr", "preset", "rnnlab_version", "torch_version", "finished_at"]
# what a line of results.jsonl must hold for the tables: field -> accepted types
# (int: not a bool; float: any real number but a bool, as ``rnnlab.checks`` counts them)
REQUIRED = {"model": str, "task": str, "seed": int, "length": int, "metric": str, "value": float}
AGGREGATES = ("mean", "best")  # how ``summary`` combines the seeds of a run
# what the arena writes into --out, and all that --fresh deletes
OWN_ENTRIES = ("config.json", "results.jsonl", "results.csv", "results.md", "report.html",
               "curves.jsonl", "plots", "runs")
CURVE_KEYS = ("model", "task", "seed")  # one curve per run


def check_out(out: Path, fresh: bool) -> None:
    """Refuse an ``--out`` the arena cannot write, or (with ``fresh``) one it must not delete,
    before anything is written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: expected a directory, got the file {str(out)!r}")
    existing = out
    while not existing.exists():  # the directory that the arena would create ``out`` in
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out: cannot create {str(out)!r}: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out: {str(existing)!r} is not writable; choose another --out")
    if fresh and out.exists() and not is_results_dir(out):
        raise ValueError(f"--fresh: {str(out)!r} is not an arena results directory (it has no "
                         f"config.json or results.jsonl, but other files); refusing to delete "
                         f"it: choose another --out")


def is_results_dir(out: Path) -> bool:
    """An arena wrote ``out``, or it holds nothing but the arena's lock and temporary files."""
    if (out / "config.json").exists() or (out / "results.jsonl").exists():
        return True
    return all(p.name.startswith(LOCK_NAME) or p.name.endswith(TEMP_SUFFIX)
               for p in out.iterdir())


def clear(out: Path) -> None:
    """``--fresh``: delete the arena's files in ``out`` (call it holding the directory's lock,
    which stays in place; files the arena does not write are left alone)."""
    for name in OWN_ENTRIES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


GRID = ("models", "tasks", "seeds")  # each run depends on its own cell only: may grow


def check_config(out: Path, training_fields: dict, has_records: bool,
                 check_growth: Optional[Callable[[dict], None]] = None) -> dict:
    """Tie ``out`` to a configuration: refuse to mix results of different ones. The grid
    (``GRID``) may differ: a results directory grows by the runs of each command, and
    config.json records the union, once ``check_growth(the grid there)`` has not raised.
    Returns that union, ``{"models": [...], ...}``."""
    path = out / "config.json"
    fields = json.loads(json.dumps(training_fields))  # as it reads back (tuples -> lists)
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_bytes())
        except ValueError:
            pass
        if not isinstance(old, dict):
            raise ValueError(f"--out: {path} is not a JSON object (a torn write, or another "
                             f"program's file?); use --fresh to start over, or choose another "
                             f"--out")
        if not all(isinstance(old.get(k), list) for k in GRID):
            raise ValueError(f"--out: {path} is not an arena config.json (expected the lists "
                             f"{list(GRID)}, got keys {sorted(old)}); use --fresh to start "
                             f"over, or choose another --out")
    elif has_records:
        raise ValueError(f"--out: {path.parent}/results.jsonl has records but there is no "
                         f"config.json saying what produced them; use --fresh to start "
                         f"over, or choose another --out")
    merged = dict(fields)
    if old is not None:
        changed = sorted(k for k in (set(old) | set(fields)) - set(GRID)
                         if old.get(k) != fields.get(k))
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} there, {fields.get(k)!r} now"
                              for k in changed)
            raise ValueError(f"--out: {out} holds results of a different configuration "
                             f"({diffs}); choose another --out or delete it")
        if check_growth is not None:
            check_growth({k: old[k] for k in GRID})
        merged.update({k: list(dict.fromkeys(old[k] + fields[k])) for k in GRID})
    if merged != old:
        write_atomic(path, json.dumps(merged, indent=1, sort_keys=True))
    return {k: merged[k] for k in GRID}


def load_records(out: Path, warn: Callable[[str], None]) -> List[dict]:
    """The records of ``out/results.jsonl``. A torn last line (a write cut short, by an older
    rnnlab or a full disk) is dropped after ``warn``: its run runs again. Any other line that is
    not a record is an error naming it."""
    path = out / "results.jsonl"
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_bytes().split(b"\n"), 1)
             if line.strip()]
    records = []
    for i, line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # also undecodable bytes
            if i == lines[-1][0]:
                warn(f"{path}: its last line (line {i}) is not a complete JSON record (torn "
                     f"write?); ignoring it, so that run runs again")
                break
            raise ValueError(f"{path}: line {i} is not a JSON record (torn write?); delete that "
                             f"line or use --fresh") from None
        problem = _record_problem(record)
        if problem:
            raise ValueError(f"{path}: line {i} is not an arena record ({problem}); delete that "
                             f"line or use --fresh")
        records.append(record)
    return records


def _record_problem(record) -> str:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key, kind in REQUIRED.items():
        value = record.get(key)
        if not _is(value, kind):
            return f"{key!r} is {value!r}"
    return ""


def _is(value, kind: type) -> bool:
    """Whether a JSON value is of ``kind``: an int that is no bool, a real number that is no
    bool, or a string."""
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value)
    return isinstance(value, kind)


def finished(records: Iterable[dict], test_lengths: Dict[str, Iterable[int]]) -> set:
    """``(model, task, seed)`` of the runs whose records cover every test length of their task
    (``test_lengths``: task label -> lengths); a run with only some records runs again."""
    covered: Dict[tuple, set] = {}
    for r in records:
        covered.setdefault((r["model"], r["task"], r["seed"]), set()).add(r["length"])
    return {key for key, lengths in covered.items()
            if key[1] in test_lengths and lengths >= set(test_lengths[key[1]])}


def save_records(out: Path, records: List[dict]) -> None:
    """Rewrite results.jsonl and results.csv with all ``records``."""
    write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    write_atomic(out / "results.csv", buf.getvalue())


def summary(records: List[dict], aggregate: str = "mean") -> Dict[tuple, Dict[int, float]]:
    """``(model, task, metric) -> {length: value}`` over seeds, in record order.

    ``aggregate="mean"`` averages the seeds; ``"best"`` keeps the seed whose mean over the test
    lengths is highest (Grazzi et al. report the best of 3 seeds).
    """
    check_choice("arena", "aggregate", aggregate, AGGREGATES)
    runs: Dict[tuple, Dict[int, Dict[int, float]]] = {}
    for r in records:
        key = (r["model"], r["task"], r["metric"])
        runs.setdefault(key, {}).setdefault(r["seed"], {})[r["length"]] = r["value"]
    out = {}
    for key, by_seed in runs.items():
        if aggregate == "best":
            out[key] = max(by_seed.values(), key=lambda v: sum(v.values()) / len(v))
        else:  # "mean"
            lengths = list(dict.fromkeys(n for v in by_seed.values() for n in v))
            out[key] = {n: sum(v[n] for v in by_seed.values() if n in v)
                        / sum(n in v for v in by_seed.values()) for n in lengths}
    return out


def load_curves(out: Path) -> List[dict]:
    """The learning curves of ``out/curves.jsonl``: ``{"model", "task", "seed", "metric",
    "curve": [[step, loss, val], ...]}`` per run. Curves only illustrate the records, so a line
    that is not one (a torn write, an edit by hand) is left out rather than stopping the arena;
    ``add_curve`` says so when it drops it."""
    return _read_curves(out / "curves.jsonl")[0]


def _read_curves(path: Path):
    """``(curves, lines that are not one)`` of a curves file (none when it is absent)."""
    if not path.exists():
        return [], 0
    curves, bad = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if _is_curve(entry):
            curves.append(entry)
        else:
            bad += 1
    return curves, bad


def _is_curve(entry) -> bool:
    return (isinstance(entry, dict) and all(_is(entry.get(k), REQUIRED[k]) for k in CURVE_KEYS)
            and isinstance(entry.get("metric"), str) and _are_points(entry.get("curve"), 3)
            and ("act_depth" not in entry or _are_points(entry["act_depth"], 2)))


def _are_points(points, width: int) -> bool:
    """``points`` is a list of ``[step, value, ...]`` with ``width`` numbers each."""
    return isinstance(points, list) and all(
        isinstance(p, list) and len(p) == width and is_int(p[0])
        and all(is_number(v) for v in p[1:]) for p in points)


def add_curve(out: Path, entry: dict, warn: Callable[[str], None]) -> None:
    """Record one run's curve in ``out/curves.jsonl``, replacing an older curve of that run."""
    path = out / "curves.jsonl"
    curves, dropped = _read_curves(path)  # one read of the file
    if dropped:
        warn(f"{path}: {dropped} line(s) are not learning curves (torn write?); dropping them")
    key = tuple(entry[k] for k in CURVE_KEYS)
    kept = [c for c in curves if tuple(c[k] for k in CURVE_KEYS) != key] + [entry]
    write_atomic(path, "".join(json.dumps(c) + "\n" for c in kept))
