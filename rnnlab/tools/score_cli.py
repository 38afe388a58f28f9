"""``rnnlab score``: rank models at initialisation by the hidden-covariance score
(``rnnlab.tools.score``), on one fixed batch of a task, without training them.

``register(app, eval_app)`` adds the command to the ``rnnlab`` app (``rnnlab/cli.py`` calls it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import cli_checks as checks
from ..train.options import SEED_MAX

console = Console(width=None if sys.stdout.isatty() else 140)

MODELS_HELP = ("comma-separated model specs with a recurrent layer, e.g. "
               "`gru,lstm,mamba[-1,1],deltanet(heads=2)`")
TASK_HELP = ("task spec whose inputs feed the models, e.g. `parity(supervise='all')` or "
             "`mod_arith(brackets=true)`")


def _task(text: str):
    """``(label, task)`` for the spec ``text``; errors name ``--task`` (the arena's say
    ``--tasks``)."""
    from ..arena import spec
    try:
        return spec.task(text)
    except ValueError as err:
        message = str(err)
        raise ValueError(message.replace("--tasks:", "--task:", 1)) from None


def _models(text: str) -> list:
    """The ``ModelSpec`` of each entry of ``--models``; attention has no hidden state to score."""
    from ..arena import spec
    from ..models.block import ATTENTION
    specs = [spec.model(s) for s in checks.specs(text, "--models", "gru,lstm")]
    for s in specs:
        if s.mixer == ATTENTION:
            raise ValueError(f"--models: {s.label!r} has no recurrent layer whose hidden states "
                             f"could be scored; choose cells such as gru,lstm,mamba")
    labels = [s.label for s in specs]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ValueError(f"--models: each model must appear once, got {', '.join(repeated)} "
                         f"more than once in {text!r}")
    # ``gru`` and ``gru()`` (or ``gla`` and ``gla(lr=1e-2)``: no training here) are one model
    spec.check_distinct("--models", "model", labels, [spec.architecture(s) for s in specs])
    return specs


def score_models(specs: list, task_label: str, task, *, d_model: int, n_layers: int,
                 layer: int, batch: int, length: int, seed: int, device: str = "cpu") -> dict:
    """Build each arena model (``rnnlab.arena.train.build_model``, seeded by ``seed``) and score
    layer ``layer`` on one batch of ``task`` (``batch`` sequences of ``length`` from the test
    stream of ``seed``, the same batch for every model). Rows are ranked best first."""
    import torch

    from .. import tasks as _tasks
    from ..arena.config import ArenaConfig
    from ..arena.train import build_model
    from . import score as _score
    cfg = ArenaConfig(models=[s.label for s in specs], tasks=[task_label], d_model=d_model,
                      n_layers=n_layers)
    x = task.sample(batch, length, _tasks.generator(seed, "test"))[0].to(device)
    rows = []
    for s in specs:
        torch.manual_seed(seed)
        model = build_model(s, task, cfg).to(device)
        y = _score.hidden_states(model, x, layer)  # (B, T, H)
        d = _score.hidden_covariance_details(_score.states_matrix(y))
        rows.append({"model": s.label, "score": d.score, "per_unit": d.per_unit,
                     "units": d.units, "samples": d.samples, "dead_units": d.dead_units,
                     "min_eigenvalue": float(d.eigenvalues[0]),
                     "parameters": sum(p.numel() for p in model.parameters())})
    rows.sort(key=lambda r: -r["score"])
    return {"task": task_label, "d_model": d_model, "n_layers": n_layers, "layer": layer,
            "batch": batch, "length": length, "seed": seed, "k": _score.K,
            "formula": "-sum(log(lambda + k) + 1/(lambda + k)), lambda = eig(corrcoef(X)), "
                       "X = layer outputs (H, B*T)",
            "models": rows}


def print_table(result: dict, out: Console = console) -> None:
    table = Table(title=f"hidden-covariance score at initialisation on {result['task']} "
                        f"(layer {result['layer']}, B={result['batch']}, T={result['length']}; "
                        f"higher is better; compare models of one width)")
    for col in ("rank", "model", "score", "per unit", "H", "dead units", "min λ", "parameters"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for i, r in enumerate(result["models"], 1):
        table.add_row(str(i), escape(r["model"]), f"{r['score']:.4g}", f"{r['per_unit']:.4g}",
                      str(r["units"]), str(r["dead_units"]), f"{r['min_eigenvalue']:.2e}",
                      f"{r['parameters']:,}")
    out.print(table)


def score(models: str = typer.Option("gru,lstm,mamba", help=MODELS_HELP),
          task: str = typer.Option("parity(supervise='all')", help=TASK_HELP),
          d_model: int = typer.Option(64, help="width of every block"),
          layers: int = typer.Option(1, help="residual blocks"),
          layer: int = typer.Option(0, help="which recurrent layer is scored, from 0 (the first)"),
          batch: int = typer.Option(32, help="sequences in the scoring batch"),
          length: Optional[int] = typer.Option(
              None, help="steps per sequence [default: the task's longest train length]",
              show_default=False),
          seed: int = typer.Option(0, help="model initialisation and the scoring batch"),
          out: str = typer.Option("results/score.json", help="JSON output file",
                                  metavar="<path>"),
          device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")) -> None:
    """Rank models at initialisation by the hidden-covariance score (Serianni & Kalita 2023):
    `-Σ[log(λ+k) + 1/(λ+k)]` over the eigenvalues λ of the correlation matrix of one recurrent
    layer's outputs on one batch, k = 1e-5. Higher is better; no training."""
    from ..benchmarks.timing import write_json
    with checks.user_errors(Path(out) if out.strip() else None):
        checks.counts(d_model=d_model, layers=layers, batch=batch)
        checks.counts(0, layers - 1, layer=layer)
        checks.counts(0, SEED_MAX, seed=seed)
        path = checks.output_file(out, "--out", what="JSON file")
        specs = _models(models)
        label, the_task = _task(task)
        n = length if length is not None else the_task.train_lengths[1]
        checks.counts(max(2, the_task.min_length), None, length=n)
        result = score_models(specs, label, the_task, d_model=d_model, n_layers=layers,
                              layer=layer, batch=batch, length=n, seed=seed, device=device)
        print_table(result)
        console.print(f"wrote {write_json(result, path)}", markup=False)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``rnnlab score`` to ``app`` (``eval_app`` is unused: the command is top-level)."""
    app.command("score")(score)


__all__: List[str] = ["register", "score", "score_models", "print_table"]
