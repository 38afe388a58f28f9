"""Newton engine (eager, and with ``compile=True``) vs the sequential engine on the same cell and
inputs: forward (no grad) and forward+backward, with the Newton iteration counts, for ParaGRU and
ParaLSTM by default (B=8, H=64, T = 1024, 4096, 16384, fp32), measured in one process so the
ratios compare. The compiled engine's compile time is paid in its warm-up run."""
from __future__ import annotations

import torch

from ..cells import get as get_cell
from ..cells.base import as_tuple
from ..engines import Newton, Sequential
from .timing import best_ms, machine


def _time(cell, engine, x, repeats):
    def fwd():
        with torch.no_grad():
            engine(cell, x)

    def fwdbwd():
        y, h = engine(cell, x.requires_grad_())
        (y.sum() + sum(t.sum() for t in as_tuple(h))).backward()

    return best_ms(fwd, repeats), best_ms(fwdbwd, repeats)


def run(cells=("paragru", "paralstm"), batch: int = 8, hidden: int = 64,
        lengths=(1024, 4096, 16384), repeats: int = 3, seed: int = 0) -> dict:
    rows = []
    for name in cells:
        torch.manual_seed(seed)
        cell = get_cell(name, hidden, hidden)
        for T in lengths:
            x = torch.randn(batch, T, hidden)
            newton, compiled = Newton(), Newton(compile=True)
            seq_f, seq_fb = _time(cell, Sequential(), x, repeats)
            new_f, new_fb = _time(cell, newton, x, repeats)
            com_f, com_fb = _time(cell, compiled, x, repeats)  # warm-up run pays the compile
            rows.append({"cell": name, "T": T, "iterations": newton.stats["iterations"],
                         "residual": newton.stats["residual"],
                         "sequential_fwd_ms": seq_f, "sequential_fwdbwd_ms": seq_fb,
                         "newton_fwd_ms": new_f, "newton_fwdbwd_ms": new_fb,
                         "newton_compiled_fwd_ms": com_f, "newton_compiled_fwdbwd_ms": com_fb,
                         "speedup_fwd": seq_f / new_f, "speedup_fwdbwd": seq_fb / new_fb,
                         "speedup_compiled_fwd": seq_f / com_f,
                         "speedup_compiled_fwdbwd": seq_fb / com_fb})
    return {"benchmark": "newton", "batch": batch, "hidden": hidden, "dtype": "float32",
            "repeats": repeats, "machine": machine(), "rows": rows}


def print_table(result: dict, console) -> None:
    from rich.table import Table
    console.print(f"Newton vs sequential, B={result['batch']} H={result['hidden']} fp32, "
                  f"{result['machine']['threads']} threads, best of {result['repeats']} (ms)")
    table = Table()
    cols = ("cell", "T", "iters", "seq fwd", "newton", "compiled", "seq f+b", "newton",
            "compiled", "x (f+b, compiled)")
    for col in cols:
        table.add_column(col, justify="left" if col == "cell" else "right")
    for r in result["rows"]:
        table.add_row(r["cell"], str(r["T"]), str(r["iterations"]),
                      f"{r['sequential_fwd_ms']:.0f}", f"{r['newton_fwd_ms']:.0f}",
                      f"{r['newton_compiled_fwd_ms']:.0f}", f"{r['sequential_fwdbwd_ms']:.0f}",
                      f"{r['newton_fwdbwd_ms']:.0f}", f"{r['newton_compiled_fwdbwd_ms']:.0f}",
                      f"{r['speedup_compiled_fwdbwd']:.1f}")
    console.print(table)
