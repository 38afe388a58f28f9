"""The results directory: records, the config they belong to, and atomic writes.

Layout of ``--out DIR``::

    config.json        the training fields the results were produced with
    results.jsonl      one record per (model, task, seed, length, metric)
    results.csv        the same records as a table
    results.md         the summary table (markdown)
    plots/<task>.png   metric vs test length, one line per model
    report.html        table and plots in one self-contained file
    runs/<id>/         checkpoint.safetensors of a run in progress / the trained weights

Every file is written to a temporary name and renamed, so a kill never leaves a partial file.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List

from ..tools.files import write_atomic  # noqa: F401  (re-exported for the arena)

FIELDS = ["model", "task", "seed", "length", "metric", "value", "train_length", "steps",
          "stopped_early", "train_seconds", "eval_seconds", "parameters", "engine", "mixer",
          "d_model", "n_layers", "preset", "rnnlab_version", "torch_version", "finished_at"]


def check_config(out: Path, training_fields: dict) -> None:
    """Tie ``out`` to a configuration: refuse to mix results of different ones."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(training_fields)):
            changed = sorted(k for k in set(old) | set(training_fields)
                             if old.get(k) != json.loads(json.dumps(training_fields)).get(k))
            raise ValueError(f"--out: {out} holds results of a different configuration "
                             f"(differs in {changed}); choose another --out or delete it")
    else:
        write_atomic(path, json.dumps(training_fields, indent=1, sort_keys=True))


def load_records(out: Path) -> List[dict]:
    path = out / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(records: Iterable[dict]) -> set:
    """``(model, task, seed)`` of the runs that have records."""
    return {(r["model"], r["task"], r["seed"]) for r in records}


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
    runs: Dict[tuple, Dict[int, Dict[int, float]]] = {}
    for r in records:
        key = (r["model"], r["task"], r["metric"])
        runs.setdefault(key, {}).setdefault(r["seed"], {})[r["length"]] = r["value"]
    out = {}
    for key, by_seed in runs.items():
        if aggregate == "best":
            out[key] = max(by_seed.values(), key=lambda v: sum(v.values()) / len(v))
        elif aggregate == "mean":
            lengths = list(dict.fromkeys(n for v in by_seed.values() for n in v))
            out[key] = {n: sum(v[n] for v in by_seed.values() if n in v)
                        / sum(n in v for v in by_seed.values()) for n in lengths}
        else:
            raise ValueError(f"aggregate must be 'mean' or 'best', got {aggregate!r}")
    return out
