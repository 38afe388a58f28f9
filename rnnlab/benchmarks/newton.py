"""The Newton engine against the sequential engine on the same cell and inputs: forward (no grad)
and forward+backward, eager (``compile=False``) and compiled (``compile=True``), and ELK
(compiled, forward only), with iteration counts, for ParaGRU and ParaLSTM by default (B=8,
H=64, T = 1024, 4096, 16384, fp32). Everything is measured in one process and interleaved
(round after round over all candidates, best of ``repeats``), so the ratios compare even on a
busy machine. Each candidate's first run is a warm-up (the compiled ones pay their compile
there)."""
from __future__ import annotations

import time

import torch

from ..cells import available
from ..cells import get as get_cell
from ..cells.base import as_tuple
from ..cells.registry import did_you_mean
from ..engines import Newton, Sequential
from .timing import machine


def _candidates():
    """(label, engine, forward-only?) in the order they are timed."""
    return [("sequential", Sequential(), False), ("eager", Newton(compile=False), False),
            ("compiled", Newton(compile=True), False),
            ("elk", Newton(compile=True, damping="elk"), True)]


def _runs(cell, engine, x, fwd_only):
    def fwd():
        with torch.no_grad():
            engine(cell, x)

    def fwdbwd():
        y, h = engine(cell, x.requires_grad_())
        (y.sum() + sum(t.sum() for t in as_tuple(h))).backward()

    return {"fwd": fwd} if fwd_only else {"fwd": fwd, "fwdbwd": fwdbwd}


def _interleaved_best_ms(fns: dict, repeats: int) -> dict:
    """Best wall time (ms) of each function, timed round-robin after one warm-up run each."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], (time.perf_counter() - start) * 1e3)
    return best


def check_cells(names) -> list:
    """``names`` if each is a registered cell; else a ValueError naming ``--cells``."""
    unknown = [n for n in names if n not in available()]
    if unknown or not names:
        raise ValueError(f"--cells: expected names from {', '.join(available())}, got "
                         f"{', '.join(map(repr, unknown)) or 'none'}"
                         f"{did_you_mean(unknown[0], available()) if unknown else ''}")
    return list(names)


def run(cells=("paragru", "paralstm"), batch: int = 8, hidden: int = 64,
        lengths=(1024, 4096, 16384), repeats: int = 3, seed: int = 0) -> dict:
    rows = []
    for name in check_cells(cells):
        torch.manual_seed(seed)
        cell = get_cell(name, hidden, hidden)
        for T in lengths:
            x = torch.randn(batch, T, hidden)
            cands = _candidates()
            fns = {f"{label}_{mode}_ms": fn for label, engine, fwd_only in cands
                   for mode, fn in _runs(cell, engine, x, fwd_only).items()}
            row = {"cell": name, "T": T, **_interleaved_best_ms(fns, repeats)}
            for label, engine, _ in cands[1:]:
                row[f"{label}_iterations"] = engine.stats["iterations"]
                row[f"{label}_residual"] = engine.stats["residual"]
            for label in ("eager", "compiled"):
                for mode in ("fwd", "fwdbwd"):
                    row[f"speedup_{label}_{mode}"] = (row[f"sequential_{mode}_ms"]
                                                      / row[f"{label}_{mode}_ms"])
            row["speedup_elk_fwd"] = row["sequential_fwd_ms"] / row["elk_fwd_ms"]
            rows.append(row)
    return {"benchmark": "newton", "batch": batch, "hidden": hidden, "dtype": "float32",
            "repeats": repeats, "machine": machine(), "rows": rows}


def print_table(result: dict, console) -> None:
    from rich.table import Table
    console.print(f"Newton vs sequential, B={result['batch']} H={result['hidden']} fp32, "
                  f"{result['machine']['threads']} threads, best of {result['repeats']} "
                  f"interleaved runs (ms; x = sequential / Newton, same run)")
    table = Table()
    cols = ("cell", "T", "iters", "seq fwd", "eager", "compiled", "elk (iters)", "seq f+b",
            "eager", "compiled", "x f+b eager", "x f+b compiled")
    for col in cols:
        table.add_column(col, justify="left" if col == "cell" else "right")
    for r in result["rows"]:
        table.add_row(r["cell"], str(r["T"]), str(r["compiled_iterations"]),
                      f"{r['sequential_fwd_ms']:.0f}", f"{r['eager_fwd_ms']:.0f}",
                      f"{r['compiled_fwd_ms']:.0f}",
                      f"{r['elk_fwd_ms']:.0f} ({r['elk_iterations']})",
                      f"{r['sequential_fwdbwd_ms']:.0f}", f"{r['eager_fwdbwd_ms']:.0f}",
                      f"{r['compiled_fwdbwd_ms']:.0f}", f"{r['speedup_eager_fwdbwd']:.1f}",
                      f"{r['speedup_compiled_fwdbwd']:.1f}")
    console.print(table)
