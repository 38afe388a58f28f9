"""Memory and time per generated token: recurrent LMs vs attention, 1k vs 10k tokens.

For each model, generate N tokens one at a time from the cache (greedy, after a short prompt) and
measure: the bytes the cache holds after N tokens (exact: the sum of its tensors), the growth of
the process's resident memory while generating (``/proc/self/statm``; includes allocator noise),
and milliseconds per token. A recurrent-only model's cache must not grow with N; full attention's
KV cache grows linearly; sliding-window attention stays at its window.
"""
from __future__ import annotations

import os
import time

import torch

from ..models.lm import LM
from .timing import machine

MODELS = {"gru": dict(cell="gru"), "mamba+conv": dict(cell="mamba", conv=4),
          "mamba2": dict(cell="mamba2"), "gla": dict(cell="gla"), "mlstm": dict(cell="mlstm"),
          "deltanet": dict(cell="deltanet"), "attention": dict(cell="attention"),
          "attention(window=256)": dict(cell="attention", window=256)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cache_bytes(state) -> int:
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    if isinstance(state, (tuple, list)):
        return sum(_cache_bytes(s) for s in state)
    return 0


def _generate(lm: LM, tokens: int) -> dict:
    ids = torch.zeros(1, 8, dtype=torch.long)
    rss0 = _rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        logits, state = lm(ids, lm.initial_state(1))
        for _ in range(tokens):
            token = logits[:, -1:].argmax(-1)
            logits, state = lm(token, state)
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "cache_bytes": _cache_bytes(state),
            "rss_growth_bytes": _rss_bytes() - rss0, "ms_per_token": seconds / tokens * 1e3}


def run(lengths=(1000, 10000), d_model: int = 128, n_layers: int = 2, vocab: int = 256,
        models=tuple(MODELS)) -> dict:
    rows = []
    for name in models:
        torch.manual_seed(0)
        lm = LM(vocab, d_model, n_layers, **MODELS[name]).eval()
        _generate(lm, 50)  # warm-up
        for n in lengths:
            rows.append({"model": name, **_generate(lm, n)})
    return {"benchmark": "generate", "d_model": d_model, "n_layers": n_layers,
            "machine": machine(), "rows": rows}


def print_table(result: dict, console) -> None:
    from rich.table import Table
    table = Table(title=f"generation memory and speed (d_model={result['d_model']}, "
                        f"{result['n_layers']} layers, batch 1)")
    for col in ("model", "tokens", "cache KiB", "RSS growth MiB", "ms/token"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result["rows"]:
        table.add_row(r["model"], str(r["tokens"]), f"{r['cache_bytes'] / 1024:.1f}",
                      f"{r['rss_growth_bytes'] / 2 ** 20:.1f}", f"{r['ms_per_token']:.2f}")
    console.print(table)
