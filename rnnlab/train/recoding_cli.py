"""``rnnlab train recoding``: the recoding recipe's command (``register(train_app)`` adds it)."""
from __future__ import annotations

from typing import Optional

import typer


def register(train_app: typer.Typer) -> None:
    """Add ``recoding`` to the ``rnnlab train`` commands."""
    train_app.command("recoding")(train_recoding)


def train_recoding(data: Optional[str] = typer.Option(
                       None, help="text file or folder [default: the Python standard library's "
                                  "sources]", show_default=False, metavar="<path>"),
                   max_chars: int = typer.Option(1_000_000, help="characters read"),
                   cell: str = typer.Option("lstm", help="registered cell"),
                   d_model: int = typer.Option(64, help="width"),
                   layers: int = typer.Option(1, help="LM blocks"),
                   length: int = typer.Option(32, help="characters per training window"),
                   batch: int = typer.Option(64, help="windows per step"),
                   lr: float = typer.Option(3e-3, help="peak learning rate (warm-up, cosine)"),
                   steps: int = typer.Option(300, help="step budget of every model"),
                   signals: str = typer.Option("entropy,surprisal,mc_dropout",
                                               help="error signals: `entropy`, `surprisal` "
                                                    "(gold), `mc_dropout` (variance)"),
                   step_size: float = typer.Option(1.0, help="recoding step size for training "
                                                             "with recoding"),
                   step_sizes: str = typer.Option("0.01,0.03,0.1,0.3,1",
                                                  help="step sizes of the test-time sweep"),
                   recoding_steps: int = typer.Option(1, help="gradient steps per time step"),
                   create_graph: bool = typer.Option(True, help="backpropagate through the "
                                                                "recoding gradient (second "
                                                                "order)"),
                   redecode: bool = typer.Option(True, help="entropy / MC dropout: predict "
                                                            "from the recoded state (the "
                                                            "paper's code)"),
                   dropout: float = typer.Option(0.3, help="MC-dropout rate"),
                   samples: int = typer.Option(8, help="MC-dropout masks"),
                   eval_windows: int = typer.Option(32, help="validation windows (4 x length "
                                                             "characters each)"),
                   plain_seeds: int = typer.Option(3, help="plain LMs trained at seeds seed, "
                                                           "seed+1, ... (the seed spread)"),
                   seed: int = typer.Option(0, help="model init and data order"),
                   out: str = typer.Option("results/recoding", help="output folder",
                                           metavar="<path>"),
                   device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                   ) -> None:
    """Char LM with and without recoding (Ulmer et al.): held-out bits/char per error signal and
    the step-size sensitivity."""
    from rich.console import Console

    from .. import cli_checks as checks
    from .recoding import RecodingConfig, run
    with checks.user_errors(out):
        cfg = RecodingConfig(
            data=str(checks.path(data, "--data")) if data is not None else None,
            max_chars=max_chars, cell=cell, d_model=d_model, n_layers=layers, length=length,
            batch=batch, lr=lr, steps=steps, signals=tuple(_items(signals, "--signals")),
            step_size=step_size, step_sizes=tuple(_numbers(step_sizes, "--step-sizes")),
            recoding_steps=recoding_steps, create_graph=create_graph, redecode=redecode,
            dropout=dropout,
            samples=samples, eval_windows=eval_windows, plain_seeds=plain_seeds,
            seed=seed,
            out=str(checks.output_dir(out, "--out")), device=device)
        run(cfg, Console())


def _items(text: str, option: str) -> list:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"{option}: expected a comma-separated list, got {text!r}")
    return items


def _numbers(text: str, option: str) -> list:
    values = []
    for item in _items(text, option):
        try:
            values.append(float(item))
        except ValueError:
            raise ValueError(f"{option}: expected comma-separated numbers, e.g. 0.1,1, got "
                             f"{item!r}") from None
    return values
