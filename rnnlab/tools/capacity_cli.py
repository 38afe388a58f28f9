"""``rnnlab eval capacity`` and ``rnnlab eval collapse``: the state-capacity and state-collapse
studies of Stuffed Mamba (Chen et al. 2024) at laptop scale (``rnnlab.tools.capacity``,
``rnnlab.tools.collapse``).

``register(app, eval_app)`` adds both commands under ``eval_app`` (``rnnlab/cli.py`` calls it).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import List

import typer
from rich.console import Console

from .. import cli_checks as checks
from ..train.options import SEED_MAX

console = Console(width=None if sys.stdout.isatty() else 140)

CAPACITY_MODELS = ("mamba2(state_size=2,head_dim=16),mamba2(state_size=4,head_dim=16),"
                   "mamba2(state_size=8,head_dim=16),mamba2(state_size=16,head_dim=16),"
                   "mamba2(state_size=32,head_dim=16),gla(heads=2),deltanet(heads=2),gru")
COLLAPSE_MODELS = "mamba2(state_size=32,head_dim=16),gla(heads=2)"
MODELS_HELP = "comma-separated model specs, e.g. `mamba2(state_size=8,head_dim=16),gla(heads=2)`"


def _specs(text: str) -> list:
    from ..arena import spec
    from ..models.block import ATTENTION
    specs = [spec.model(s) for s in checks.specs(text, "--models", "mamba2,gru")]
    for s in specs:
        if s.mixer == ATTENTION:
            raise ValueError(f"--models: {s.label!r} has no recurrent state; choose cells")
    return specs


def _train_config(train_length, steps, batch, lr, d_model, layers, seed):
    from .capacity import TrainConfig
    checks.counts(steps=steps, batch=batch, d_model=d_model, layers=layers)
    checks.counts(0, SEED_MAX, seed=seed)
    if not 0 < lr < 1:
        raise ValueError(f"--lr: must be in (0, 1), got {lr!r}")
    return TrainConfig(length=train_length, steps=steps, batch=batch, lr=lr, d_model=d_model,
                       n_layers=layers, seed=seed)


def capacity(models: str = typer.Option(CAPACITY_MODELS, help=MODELS_HELP),
             train_length: int = typer.Option(64, help="training context length (tokens)"),
             lengths: str = typer.Option("64,128,256,512,1024,2048,4096",
                                         help="comma-separated test context lengths"),
             steps: int = typer.Option(1200, help="training steps per model"),
             batch: int = typer.Option(32, help="sequences per training step"),
             lr: float = typer.Option(1e-2, help="AdamW peak learning rate"),
             d_model: int = typer.Option(32, help="model width"),
             layers: int = typer.Option(2, help="residual blocks"),
             digits: int = typer.Option(5, help="passkey digits (the paper: 5)"),
             examples: int = typer.Option(64, help="test needles per length, at depths "
                                                   "(i + 0.5) / examples"),
             threshold: float = typer.Option(0.9, help="accuracy a length must reach to count "
                                                       "as retrieved"),
             seed: int = typer.Option(0, help="model initialisation and data"),
             threads: int = typer.Option(1, help="torch CPU threads"),
             out: str = typer.Option("results/capacity.json", help="JSON output file",
                                     metavar="<path>"),
             plot: str = typer.Option("results/capacity.png", help="PNG figure",
                                      metavar="<path>")) -> None:
    """Passkey state capacity (Stuffed Mamba): train each model on passkey retrieval (random-
    token haystack) at --train-length, test it at --lengths, and report the longest context
    retrieved with accuracy >= --threshold against the model's state size."""
    import torch

    from .. import tasks
    from ..benchmarks.timing import write_json
    from . import capacity as cap
    with checks.user_errors(Path(out) if out.strip() else None):
        checks.counts(digits=digits, examples=examples)
        checks.counts(1, checks.THREADS_MAX, threads=threads)
        if not 0 <= threshold <= 1:
            raise ValueError(f"--threshold: must be in [0, 1], got {threshold!r}")
        task = tasks.get("passkey", digits=digits)
        checks.counts(task.min_length, None, train_length=train_length)
        tests = checks.ints(lengths, "--lengths", "64,256,1024", task.min_length)
        cfg = _train_config(train_length, steps, batch, lr, d_model, layers, seed)
        json_path = checks.output_file(out, "--out", ".json")
        png_path = checks.output_file(plot, "--plot", ".png")
        specs = _specs(models)
        torch.set_num_threads(threads)
        records = cap.capacity_study(specs, task, cfg, tests, threshold, examples,
                                     log=lambda m: console.print(m, markup=False))
        cap.plot_capacity(records, png_path, train_length, threshold,
                          title=f"passkey ({digits} digits), trained at {train_length}, "
                                f"{steps} steps")
        result = {"paper": "Chen et al. 2024, Stuffed Mamba, arXiv 2410.07145",
                  "task": task.describe(), "threshold": threshold, "examples": examples,
                  "train": dataclasses.asdict(cfg), "lengths": tests,
                  "models": [dataclasses.asdict(r) for r in records]}
        console.print(f"wrote {write_json(result, json_path)} and {png_path}", markup=False)


def collapse(models: str = typer.Option(COLLAPSE_MODELS, help=MODELS_HELP),
             train_length: int = typer.Option(64, help="training context length L (tokens)"),
             lengths: str = typer.Option("64,128,256,512,1024,2048,4096",
                                         help="comma-separated test context lengths"),
             trace_length: int = typer.Option(4096, help="steps of the state traces"),
             decay_scale: str = typer.Option("1.25,2", help="comma-separated s of the "
                                             "forget-more runs: a -> a^s"),
             window: int = typer.Option(0, help="the sliding-window run's W [default: 0 = L]"),
             steps: int = typer.Option(1200, help="training steps per model"),
             batch: int = typer.Option(32, help="sequences per training step"),
             lr: float = typer.Option(1e-2, help="AdamW peak learning rate"),
             d_model: int = typer.Option(32, help="model width"),
             layers: int = typer.Option(2, help="residual blocks"),
             digits: int = typer.Option(5, help="passkey digits"),
             examples: int = typer.Option(32, help="test needles per length"),
             threshold: float = typer.Option(0.9, help="accuracy below which a length counts "
                                                       "as collapsed"),
             seed: int = typer.Option(0, help="model initialisation and data"),
             threads: int = typer.Option(1, help="torch CPU threads"),
             out: str = typer.Option("results/collapse.json", help="JSON output file",
                                     metavar="<path>"),
             plot_prefix: str = typer.Option("results/collapse", help="PNG per model: "
                                             "PREFIX_CELL.png", metavar="<path>")) -> None:
    """State collapse (Stuffed Mamba): train each model on passkey at --train-length, then trace
    its state norm per step far beyond it and test passkey with the needle always in the last L
    tokens, plain and with each training-free mitigation (decay_scale, state_norm calibrated at
    L, window); the collapse point is the first length below --threshold."""
    import torch

    from .. import tasks
    from ..benchmarks.timing import write_json
    from . import capacity as cap
    from . import collapse as col
    with checks.user_errors(Path(out) if out.strip() else None):
        checks.counts(digits=digits, examples=examples)
        checks.counts(0, None, window=window)
        checks.counts(1, checks.THREADS_MAX, threads=threads)
        if not 0 <= threshold <= 1:
            raise ValueError(f"--threshold: must be in [0, 1], got {threshold!r}")
        scales = _scales(decay_scale)
        task = tasks.get("passkey", digits=digits)
        checks.counts(task.min_length, None, train_length=train_length)
        checks.counts(train_length, None, trace_length=trace_length)
        tests = checks.ints(lengths, "--lengths", "64,256,1024", task.min_length)
        cfg = _train_config(train_length, steps, batch, lr, d_model, layers, seed)
        json_path = checks.output_file(out, "--out", ".json")
        prefix = checks.path(plot_prefix, "--plot-prefix")
        checks.output_file(str(prefix) + "_x.png", "--plot-prefix", ".png")
        specs = _specs(models)
        for s in specs:
            if s.mixer not in MITIGATED:
                raise ValueError(f"--models: {s.label!r}: the mitigations are options of "
                                 f"{', '.join(MITIGATED)} only")
        torch.set_num_threads(threads)
        results = []
        for s in specs:
            model = cap.train_passkey(s, task, cfg)
            r = col.collapse_study(s, model, task, cfg, tests, trace_length, scales,
                                   window or None, threshold, examples)
            png = Path(f"{prefix}_{s.mixer}.png")
            col.plot_collapse(r, png)
            for name, run in r["runs"].items():
                console.print(f"{s.label} {name}: collapse point {run['collapse_point']} "
                              f"({' '.join(f'{k}:{v:.2f}' for k, v in run['accuracy'].items())})",
                              markup=False)
            results.append(r)
        result = {"paper": "Chen et al. 2024, Stuffed Mamba, arXiv 2410.07145",
                  "task": task.describe(), "train": dataclasses.asdict(cfg), "models": results}
        console.print(f"wrote {write_json(result, json_path)} and {prefix}_*.png", markup=False)


def _scales(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(0 < v < float("inf") for v in values):
        raise ValueError(f"--decay-scale: expected comma-separated numbers > 0 such as "
                         f"'1.25,2', got {text!r}")
    return values


MITIGATED = ("mamba2", "gla", "mamba")  # the cells with decay_scale / state_norm / window


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``rnnlab eval capacity`` and ``rnnlab eval collapse`` to ``eval_app``."""
    eval_app.command("capacity")(capacity)
    eval_app.command("collapse")(collapse)


__all__: List[str] = ["register", "capacity", "collapse"]
