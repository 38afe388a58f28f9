"""``rnnlab train meters``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``meters`` command to ``train_app``."""
    train_app.command("meters")(train_meters)


def train_meters(runs: str = typer.Option(
                     "one_hot/lstm/uni,one_hot/lstm/bi,one_hot/gru/uni,one_hot/gru/bi,"
                     "binary/lstm/bi,two_hot/lstm/bi",
                     help="encoding/cell/direction runs (encodings one_hot, binary, two_hot; "
                          "a registered cell; uni or bi), comma-separated, or `all` for the "
                          "12-run grid of {one_hot,binary,two_hot}×{lstm,gru}×{uni,bi}"),
                 train_lines: int = typer.Option(2000, help="training lines per meter"),
                 test_lines: int = typer.Option(500, help="test lines per meter"),
                 feet: int = typer.Option(3, help="fewest feet per line"),
                 max_feet: int = typer.Option(5, help="most feet per line"),
                 lexicon: int = typer.Option(1000, help="words sampled from cmudict"),
                 hidden: int = typer.Option(48, help="state width per direction"),
                 layers: int = typer.Option(2, help="stacked recurrent layers"),
                 dropout: float = typer.Option(0.1, help="between layers and before the head"),
                 steps: int = typer.Option(700, help="optimizer steps per run"),
                 batch: int = typer.Option(64, help="lines per step"),
                 lr: float = typer.Option(5e-3, help="peak learning rate (cosine decay)"),
                 seed: int = typer.Option(0, help="lexicon, lines, model init and batch order"),
                 out: str = typer.Option("results/meters", help="output folder",
                                         metavar="<path>"),
                 device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                 ) -> None:
    """Poem meters from characters (Yousef et al.): one-hot/binary/two-hot × (Bi)LSTM/GRU on
    English lines generated from cmudict stress patterns."""
    from rich.console import Console

    from .meters import MetersConfig, all_runs, run
    with checks.user_errors(out):
        chosen = all_runs() if runs.strip() == "all" else \
            checks.specs(runs, "--runs", "one_hot/lstm/bi")
        run(MetersConfig(runs=chosen, train_lines=train_lines, test_lines=test_lines,
                         feet=feet, max_feet=max_feet, lexicon=lexicon, hidden=hidden,
                         n_layers=layers, dropout=dropout, steps=steps, batch=batch, lr=lr,
                         seed=seed, out=str(checks.output_dir(out, "--out")), device=device),
            Console())
