"""Sequential engine vs torch's own recurrent modules on the same weights.

Measures forward and forward+backward of a GRU (default B=8, T=1024, D=H=128, fp32) run as
``rnnlab.Recurrent(gru, "sequential")``, as ``torch.nn.GRU`` (its fused CPU kernel) and as a
naive ``torch.nn.GRUCell`` loop, interleaved in one process so their ratios are comparable.
"""
from __future__ import annotations

import torch

from ..cells import get as get_cell
from ..nn.recurrent import Recurrent
from .timing import best_ms, machine


def run(batch: int = 8, steps: int = 1024, hidden: int = 128, repeats: int = 5,
        seed: int = 0) -> dict:
    torch.manual_seed(seed)
    ref = torch.nn.GRU(hidden, hidden, batch_first=True)
    ours = Recurrent(get_cell("gru", hidden, hidden), engine="sequential")
    ours.cell.load_state_dict({k[:-3]: v for k, v in ref.state_dict().items()})  # drop "_l0"
    loop_cell = torch.nn.GRUCell(hidden, hidden)
    loop_cell.load_state_dict(ours.cell.state_dict())
    x = torch.randn(batch, steps, hidden, requires_grad=True)

    def loop(x):
        h, ys = x.new_zeros(batch, hidden), []
        for t in range(steps):
            h = loop_cell(x[:, t], h)
            ys.append(h)
        return torch.stack(ys, 1), h

    impls = {"rnnlab_sequential": lambda x: ours(x),
             "torch_nn_GRU": lambda x: ref(x),
             "torch_GRUCell_loop": loop}
    ms = {}
    for name, f in impls.items():
        with torch.no_grad():
            ms[f"{name}_fwd_ms"] = best_ms(lambda: f(x), repeats)
        ms[f"{name}_fwdbwd_ms"] = best_ms(lambda: f(x)[0].sum().backward(), repeats)
    ratios = {f"rnnlab_over_{other}_{kind}": ms[f"rnnlab_sequential_{kind}_ms"] /
              ms[f"{other}_{kind}_ms"]
              for other in ("torch_nn_GRU", "torch_GRUCell_loop") for kind in ("fwd", "fwdbwd")}
    return {"benchmark": "sequential_gru", "batch": batch, "steps": steps, "hidden": hidden,
            "input": hidden, "dtype": "float32", "repeats": repeats, "machine": machine(),
            "ms": ms, "ratios": ratios}


def print_table(result: dict, console) -> None:
    """Print ``run``'s result as a rich table (ms per implementation) plus the ratios."""
    from rich.table import Table
    r, ms = result, result["ms"]
    console.print(f"GRU B={r['batch']} T={r['steps']} H={r['hidden']} fp32, "
                  f"{r['machine']['threads']} threads, best of {r['repeats']}")
    table = Table()
    for col in ("implementation", "fwd ms", "fwd+bwd ms"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    for impl in ("rnnlab_sequential", "torch_nn_GRU", "torch_GRUCell_loop"):
        table.add_row(impl, f"{ms[impl + '_fwd_ms']:.1f}", f"{ms[impl + '_fwdbwd_ms']:.1f}")
    console.print(table)
    for k, v in r["ratios"].items():
        console.print(f"{k}: {v:.2f}x")
