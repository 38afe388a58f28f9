"""Every registered cell on every engine that runs it, at one or more sizes: the standing
performance dashboard behind ``rnnlab bench cells``.

For each size ``(B, T, D)``, cell (``rnnlab.cells.available()``) and engine (``sequential``,
``scan``, ``newton``, ``quasi``, and ``auto`` where it chooses per call, i.e. for the cells that
declare ``newton_wins``, its rows recording what it ran in ``auto_picked``; only the pairs where
``rnnlab.engines.resolve(engine, cell)`` accepts the cell), the layer is built as a new user
would, ``rnnlab.Recurrent(name, engine=engine, input_size=D, hidden_size=D)`` with the cell's
default options, fp32, after ``torch.manual_seed(seed)`` (so every engine of a cell gets the
same weights and the same ``x: (B, T, D)``, which requires grad as a layer's input inside a model
would). Measured:

- ``fwd_ms``: ``layer(x)`` under ``torch.no_grad()``, best of ``repeats`` after one warm-up call
  (which pays numba / ``torch.compile`` compiles).
- ``fwdbwd_ms``: ``y, h = layer(x)`` then ``(y.sum() + sum(leaf.real.sum() for every leaf of
  h)).backward()``, the same ``x`` each call, gradients reset to None before it; best of
  ``repeats`` after one warm-up call.
- ``saved_bytes`` (CPU and CUDA; torch has no peak counter on CPU): in the warm-up fwd+bwd,
  between forward and backward, the bytes of every distinct storage (deduplicated by
  ``data_ptr``) held by the outputs ``y``, ``h`` and by every node of their autograd graph: the
  ``_saved_*`` tensors of built-in nodes, the ``saved_tensors`` and tensor attributes of
  ``autograd.Function`` contexts; storages of ``x`` and of the parameters are left out (they
  live anyway). That is the activation memory a training step holds between forward and
  backward; transient workspace inside the forward or the backward is not in it. (The graph is
  walked rather than ``saved_tensors_hooks`` used: ``torch.func``, which the Newton engine runs
  in its forward, refuses those hooks.) ``saved_bytes_per_token`` = ``saved_bytes / (B T)``.
- ``peak_bytes`` (CUDA only, else None): ``torch.cuda.max_memory_allocated()`` during the last
  timed fwd+bwd, minus what was allocated before it.
- Ratios, from the times of this run: ``x_own_sequential_*`` = t(cell, sequential) /
  t(cell, engine) (so 1 on the sequential row), ``x_gru_sequential_*`` = t(gru, sequential) /
  t(cell, engine), for ``fwd`` and ``fwdbwd``; None where a time is missing. The sequential
  engine and the GRU are always measured, since every ratio needs them.

A row never aborts the table: an exception (``ConvergenceError``, an unsupported size, ...) gives
``status = "error"`` and the message in ``detail``. Time budget: when one call (the warm-up
included) takes longer than ``max_seconds``, no further calls of that measurement run, the row
gets ``status = "over_budget"`` and the time is of the calls made (``*_runs`` timed calls; 0
means only the warm-up ran, and its time, compiles included, is the one reported).
"""
from __future__ import annotations

import gc
import threading
import time
import warnings
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import cells as _cells
from .. import engines as _engines
from ..cells.base import Linear
from ..checks import check_int, did_you_mean, is_int
from ..nn.recurrent import Recurrent
from ..tools.device import check_device
from .memory import held_bytes
from .timing import machine

DEFAULT_SIZES = ((8, 1024, 128), (32, 128, 256))
REFERENCE_CELL = "gru"  # every row's second ratio is against this cell's sequential engine
MIB = 2 ** 20
SIZE_MAX = 2 ** 31 - 1  # beyond, torch cannot even allocate the input


def parse_sizes(text: str) -> Tuple[Tuple[int, int, int], ...]:
    """``"8x1024x128,32x128x256"`` -> ``((8, 1024, 128), (32, 128, 256))`` (each ``BxTxD``)."""
    sizes = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        parts = item.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and 1 <= int(p) <= SIZE_MAX for p in parts):
            raise ValueError(f"--sizes: expected comma-separated BxTxD with integers in [1, "
                             f"{SIZE_MAX}], e.g. '8x1024x128', got {item!r}")
        sizes.append(tuple(int(p) for p in parts))
    if not sizes:
        raise ValueError(f"--sizes: expected at least one BxTxD, got {text!r}")
    return tuple(sizes)


def _choose(names: Optional[Iterable[str]], known: List[str], what: str,
            always: str) -> List[str]:
    """The selected names (all when None), checked against ``known``, plus ``always``."""
    chosen = list(known) if names is None else [n.strip() for n in names if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        hint = did_you_mean(unknown[0], known) if unknown else ""
        raise ValueError(f"{what}: expected names from {', '.join(known)}, got "
                         f"{', '.join(unknown) if unknown else 'none'}{hint}")
    return [n for n in known if n in chosen or n == always]


def _leaves(state) -> List[torch.Tensor]:
    """Every tensor of a state (a tensor or nested tuples/lists of tensors)."""
    if torch.is_tensor(state):
        return [state]
    return [leaf for part in (state or ()) for leaf in _leaves(part)]


def _fwdbwd_call(layer: Recurrent, x: torch.Tensor) -> Callable[[], tuple]:
    """One training-like call: forward, scalar loss over y and the final state, backward."""
    params = list(layer.parameters())

    def call():
        x.grad = None
        for p in params:
            p.grad = None
        y, h = layer(x)
        loss = y.real.sum() + sum(leaf.real.sum() for leaf in _leaves(h))
        loss.backward()
        return y, h
    return call


def _saved_bytes(layer: Recurrent, x: torch.Tensor) -> Tuple[int, float]:
    """:func:`_count_saved` in a thread with a 1 GiB stack: once the walk has made Python
    objects of a long graph's nodes and saved tensors (T = 4096 steps of a sequential engine),
    freeing that graph recurses deeper than the main thread's 8 MiB stack allows."""
    out: list = []
    old = threading.stack_size(1 << 30)
    try:
        worker = threading.Thread(target=lambda: out.append(_count_saved(layer, x)))
        worker.start()
        worker.join()
    finally:
        threading.stack_size(old)
    if not out:
        raise RuntimeError("counting the saved bytes failed (see the error printed above)")
    return out[0]


def _count_saved(layer: Recurrent, x: torch.Tensor) -> Tuple[int, float]:
    """Run one fwd+bwd; before the backward, count the bytes the outputs and their autograd
    graph hold (``x`` and the parameters excluded; see the module docstring). -> (bytes, ms the
    counting took)."""
    params = list(layer.parameters())
    x.grad = None
    for p in params:
        p.grad = None
    y, h = layer(x)
    outputs = [y, *_leaves(h)]
    start = time.perf_counter()
    nbytes = held_bytes(outputs, [x, *params])
    counting_ms = (time.perf_counter() - start) * 1e3
    (y.real.sum() + sum(leaf.real.sum() for leaf in outputs[1:])).backward()
    return nbytes, counting_ms


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn: Callable, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def _best_ms(fn: Callable, warm_ms: float, repeats: int, budget_ms: float,
             device: torch.device, peak: Optional[list] = None) -> Tuple[float, int, bool]:
    """(best ms, timed calls, over budget?) of ``fn`` after a warm-up call that took
    ``warm_ms``; stops at the first call over ``budget_ms`` (the warm-up's time stands when it
    alone is over). ``peak``: gets the CUDA peak bytes of the last call appended."""
    if warm_ms > budget_ms:
        return warm_ms, 0, True
    best = float("inf")
    for runs in range(1, repeats + 1):
        if peak is not None:
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        ms = _timed_ms(fn, device)
        if peak is not None:
            peak.append(torch.cuda.max_memory_allocated(device) - base)
        best = min(best, ms)
        if ms > budget_ms:
            return best, runs, True
    return best, repeats, False


def _measure(row: dict, repeats: int, max_seconds: float, seed: int,
             device: torch.device) -> None:
    """Fill ``row`` (cell, engine, B, T, D given) with times, memory and iterations."""
    B, T, D = row["B"], row["T"], row["D"]
    torch.manual_seed(seed)
    layer = Recurrent(row["cell"], engine=row["engine"], input_size=D, hidden_size=D).to(device)
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    budget_ms, cuda = max_seconds * 1e3, device.type == "cuda"

    def fwd():
        with torch.no_grad():
            layer(x)

    warm = _timed_ms(fwd, device)
    row["fwd_ms"], row["fwd_runs"], over_fwd = _best_ms(fwd, warm, repeats, budget_ms, device)
    picked = [getattr(layer.engine, "last", None)]  # what "auto" ran, per measurement
    counted = []  # the warm-up fwd+bwd also counts the saved bytes (not in its time)
    warm = _timed_ms(lambda: counted.append(_saved_bytes(layer, x)), device) - counted[0][1]
    row["saved_bytes"] = counted[0][0]
    row["saved_bytes_per_token"] = counted[0][0] / (B * T)
    peak = [] if cuda else None
    row["fwdbwd_ms"], row["fwdbwd_runs"], over_fb = _best_ms(
        _fwdbwd_call(layer, x), warm, repeats, budget_ms, device, peak)
    row["peak_bytes"] = peak[-1] if peak else None
    row["iterations"] = getattr(layer.engine, "stats", {}).get("iterations")
    if isinstance(layer.engine, _engines.Auto):
        row["auto_picked"] = {"fwd": picked[0], "fwdbwd": layer.engine.last}
    if over_fwd or over_fb:
        row["status"] = "over_budget"
        row["detail"] = (f"a call took over {max_seconds:g} s: fwd {row['fwd_runs']}, fwd+bwd "
                         f"{row['fwdbwd_runs']} timed call(s) of {repeats}")


def _row(size: Tuple[int, int, int], cell: str, engine: str, repeats: int, max_seconds: float,
         seed: int, device: torch.device) -> dict:
    """One measured row; errors and warnings are recorded in it, never raised."""
    B, T, D = size
    row = {"size": f"{B}x{T}x{D}", "B": B, "T": T, "D": D, "cell": cell, "engine": engine,
           "status": "ok", "detail": None, "fwd_ms": None, "fwdbwd_ms": None, "fwd_runs": 0,
           "fwdbwd_runs": 0, "saved_bytes": None, "saved_bytes_per_token": None,
           "peak_bytes": None, "iterations": None, "warnings": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _measure(row, repeats, max_seconds, seed, device)
        except Exception as err:  # noqa: BLE001 - one failing row must not abort the table
            row["status"], row["detail"] = "error", f"{type(err).__name__}: {err}"
    row["warnings"] = sorted({str(w.message) for w in caught if not issubclass(
        w.category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning))})
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _supported(size: Tuple[int, int, int], cell: str, engine: str) -> Optional[str]:
    """None when ``engine`` runs ``cell`` at this size (or the cell cannot be built there: that
    row then records the error), else why not."""
    try:
        built = _cells.get(cell, size[2], size[2], device="meta")
    except Exception:  # noqa: BLE001 - measured (and reported) as an error row
        return None
    try:
        chosen = _engines.resolve(engine, built)
    except ValueError as err:
        return str(err)
    if engine == "auto" and not isinstance(chosen, _engines.Auto):
        return f"auto is {chosen.name} for this cell (its own row)"
    if isinstance(chosen, _engines.Newton) and isinstance(built.structure, Linear):
        return ("a linear cell: its parallel engine is scan (Newton runs it as a check of both "
                "engines, not for speed)")
    return None


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return None if num is None or den is None or den <= 0 else num / den


def _add_ratios(rows: Sequence[dict]) -> None:
    """Speed-ups of each row (one size) over its cell's sequential row and the GRU's."""
    seq = {r["cell"]: r for r in rows if r["engine"] == "sequential"}
    for r in rows:
        own, gru = seq.get(r["cell"], {}), seq.get(REFERENCE_CELL, {})
        for kind in ("fwd", "fwdbwd"):
            key = f"{kind}_ms"
            r[f"x_own_sequential_{kind}"] = _ratio(own.get(key), r[key])
            r[f"x_gru_sequential_{kind}"] = _ratio(gru.get(key), r[key])


def run(sizes: Sequence[Tuple[int, int, int]] = DEFAULT_SIZES,
        cells: Optional[Sequence[str]] = None, engines: Optional[Sequence[str]] = None,
        repeats: int = 2, threads: Optional[int] = None, max_seconds: float = 60.0,
        seed: int = 0, device: str = "cpu") -> dict:
    """Measure every (size, cell, engine) row; JSON-able ``{"benchmark": "cells", "machine",
    "rows", "unsupported", ...}``. ``cells`` / ``engines``: names (default all; the GRU and the
    sequential engine are always added, the ratios need them)."""
    sizes = tuple(tuple(s) for s in sizes)
    if not sizes or not all(len(s) == 3 and all(is_int(n) and n >= 1 for n in s)
                            for s in sizes):
        raise ValueError(f"sizes: expected (B, T, D) triples of positive ints, got {sizes!r}")
    cell_names = _choose(cells, _cells.available(), "--cells", REFERENCE_CELL)
    engine_names = _choose(engines, _engines.available() + ["auto"], "--engines", "sequential")
    engine_names.sort(key=lambda e: e != "sequential")  # the reference first within a cell
    check_int(None, "--repeats", repeats, 1)
    check_int(None, "--threads", threads, 1, optional=True)
    if not max_seconds > 0:
        raise ValueError(f"--max-seconds: expected a number > 0, got {max_seconds!r}")
    dev = check_device(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        info = machine()
        if dev.type == "cuda":
            info.update(device=str(dev), gpu=torch.cuda.get_device_name(dev))
        rows, unsupported = [], []
        for size in sizes:
            size_rows = []
            for cell in cell_names:
                for engine in engine_names:
                    why = _supported(size, cell, engine)
                    if why is not None:
                        unsupported.append({"size": "x".join(map(str, size)), "cell": cell,
                                            "engine": engine, "reason": why})
                        continue
                    size_rows.append(_row(size, cell, engine, repeats, max_seconds, seed, dev))
            _add_ratios(size_rows)
            rows.extend(size_rows)
    finally:
        torch.set_num_threads(old_threads)
    return {"benchmark": "cells", "dtype": "float32", "repeats": repeats,
            "max_seconds": max_seconds, "seed": seed, "machine": info,
            "memory": "saved_bytes: storages autograd saves for backward + outputs, "
                      "x and parameters excluded; peak_bytes: CUDA max_memory_allocated delta",
            "rows": rows, "unsupported": unsupported}


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _status(r: dict) -> str:
    """The status cell of the table: ok / over budget / the error, with iterations."""
    from rich.markup import escape
    if r["status"] == "error":
        detail = r["detail"] or ""
        return f"[red]{escape(detail if len(detail) <= 48 else detail[:45] + '...')}[/red]"
    text = "ok" if r["status"] == "ok" else f"[yellow]over budget ({r['fwdbwd_runs']} runs)[/]"
    if r["iterations"] is not None:
        text += f", {r['iterations']} it"
    if r.get("auto_picked"):
        text += ", ran {fwd} / {fwdbwd}".format(**r["auto_picked"])
    return text + (", warned" if r["warnings"] else "")


def _speedup(r: dict, key: str) -> str:
    """A ratio, red where a parallel engine is slower than its own cell's loop."""
    text = _fmt(r[key], ".2f")
    slow = r["engine"] != "sequential" and key.startswith("x_own") and (r[key] or 1) < 1
    return f"[red]{text}[/red]" if slow else text


def print_table(result: dict, console) -> None:
    """Print ``run``'s result as one rich table (sizes in sections)."""
    from rich.table import Table
    m = result["machine"]
    table = Table(title=f"cells x engines: fp32, {m['device']}, {m['threads']} threads, best of "
                        f"{result['repeats']}",
                  caption="x = fwd+bwd speed-up, t_sequential / t_engine, same run; saved = "
                          "saved-for-backward MiB (what autograd holds for backward + outputs, "
                          "x and parameters excluded)")
    cols = ("size", "cell", "engine", "fwd ms", "fwd+bwd\nms", "x own\nsequential",
            "x GRU\nsequential", "saved\nMiB", "saved\nKiB/token", "status")
    for col in cols:
        table.add_column(col, justify="left" if col in ("size", "cell", "engine", "status")
                         else "right", min_width=22 if col == "status" else None)
    size = None
    for r in result["rows"]:
        if size is not None and r["size"] != size:
            table.add_section()
        size = r["size"]
        saved, per_token = r["saved_bytes"], r["saved_bytes_per_token"]
        table.add_row(r["size"], r["cell"], r["engine"], _fmt(r["fwd_ms"], ".1f"),
                      _fmt(r["fwdbwd_ms"], ".1f"), _speedup(r, "x_own_sequential_fwdbwd"),
                      _speedup(r, "x_gru_sequential_fwdbwd"),
                      _fmt(None if saved is None else saved / MIB, ".2f"),
                      _fmt(None if per_token is None else per_token / 1024, ".2f"),
                      _status(r))
    console.print(table)
    if result["unsupported"]:
        pairs = sorted({f"{u['cell']}/{u['engine']}" for u in result["unsupported"]})
        console.print(f"[dim]not run (engine does not support the cell, or auto is another "
                      f"row's engine): {', '.join(pairs)}[/dim]")
