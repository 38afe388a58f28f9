"""Chunked (WY/UT) gated delta rule vs its loop-over-time reference.

Measures forward and forward+backward (autograd through each) of
``rnnlab.ops.delta_rule.delta_rule`` and ``delta_rule_reference`` on the same inputs
(default B=4, T=4096, H=4, K=V=64, C=64, fp32, with a log-decay g), in one process so their
ratios are comparable. The reference's forward+backward costs seconds at T=4096, so by default
it is timed once (``reference_repeats``) with no warm-up run of its own (its forward, timed just
before, warms it up); the chunked op gets one warm-up run and ``repeats`` timed runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.delta import delta_rule, delta_rule_reference
from .timing import best_ms, machine


def _inputs(batch: int, steps: int, heads: int, dk: int, dv: int, gated: bool, seed: int):
    """q, k ``(B, T, H, K)`` (k L2-normalized), v ``(B, T, H, V)``, beta, g ``(B, T, H)``,
    initial state ``(B, H, K, V)``, all fp32 leaves requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, steps, heads, dk, generator=gen)
    k = F.normalize(torch.randn(batch, steps, heads, dk, generator=gen), dim=-1)
    v = torch.randn(batch, steps, heads, dv, generator=gen)
    beta = torch.rand(batch, steps, heads, generator=gen)
    g = F.logsigmoid(torch.randn(batch, steps, heads, generator=gen) + 4) if gated else None
    h0 = torch.randn(batch, heads, dk, dv, generator=gen)
    return {n: (x.requires_grad_() if x is not None else None)
            for n, x in dict(q=q, k=k, v=v, beta=beta, g=g, initial_state=h0).items()}


def run(batch: int = 4, steps: int = 4096, heads: int = 4, dk: int = 64, dv: int = 64,
        repeats: int = 3, chunk_size: int = 64, gated: bool = True,
        reference_repeats: int = 1, seed: int = 0) -> dict:
    """Best-of-``repeats`` ms of the chunked op and best-of-``reference_repeats`` ms of the
    reference, forward (no grad) and forward+backward (loss on o and the final state)."""
    inputs = _inputs(batch, steps, heads, dk, dv, gated, seed)
    impls = {"chunked": (lambda **kw: delta_rule(**kw, chunk_size=chunk_size), repeats, 1),
             "reference": (delta_rule_reference, reference_repeats, 0)}
    ms = {}
    for name, (fn, reps, warmup) in impls.items():
        def fwd():
            with torch.no_grad():
                return fn(**inputs, output_final_state=True)

        def fwdbwd():
            for x in inputs.values():
                if x is not None:
                    x.grad = None
            o, S = fn(**inputs, output_final_state=True)
            (o.sum() + S.sum()).backward()

        ms[f"{name}_fwd_ms"] = best_ms(fwd, reps, warmup)
        ms[f"{name}_fwdbwd_ms"] = best_ms(fwdbwd, reps, warmup)
    ratios = {f"reference_over_chunked_{kind}": ms[f"reference_{kind}_ms"] /
              ms[f"chunked_{kind}_ms"] for kind in ("fwd", "fwdbwd")}
    return {"benchmark": "delta_rule", "batch": batch, "steps": steps, "heads": heads,
            "dk": dk, "dv": dv, "chunk_size": chunk_size, "gated": gated, "dtype": "float32",
            "repeats": repeats, "warmup": 1, "reference_repeats": reference_repeats,
            "reference_warmup": 0,
            "machine": machine(), "ms": ms, "ratios": ratios}


def print_table(result: dict, console) -> None:
    """Print ``run``'s result as a rich table (ms per implementation) plus the speedups."""
    from rich.table import Table
    r = result
    console.print(f"delta rule B={r['batch']} T={r['steps']} H={r['heads']} K={r['dk']} "
                  f"V={r['dv']} C={r['chunk_size']} {'gated ' if r['gated'] else ''}"
                  f"{r['dtype']}, {r['machine']['threads']} threads; best of {r['repeats']} "
                  f"(reference: best of {r['reference_repeats']})")
    table = Table()
    for col in ("implementation", "fwd ms", "fwd+bwd ms"):
        table.add_column(col, justify="right" if "ms" in col else "left")
    for impl in ("chunked", "reference"):
        table.add_row(impl, f"{r['ms'][impl + '_fwd_ms']:.1f}",
                      f"{r['ms'][impl + '_fwdbwd_ms']:.1f}")
    table.add_row("reference / chunked", f"{r['ratios']['reference_over_chunked_fwd']:.1f}x",
                  f"{r['ratios']['reference_over_chunked_fwdbwd']:.1f}x")
    console.print(table)
