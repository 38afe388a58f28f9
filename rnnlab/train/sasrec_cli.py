"""``rnnlab train sasrec``: the SASRec recipe's command (``register(train_app)`` adds it)."""
from __future__ import annotations

from typing import Optional

import typer


def register(train_app: typer.Typer) -> None:
    """Add ``sasrec`` to the ``rnnlab train`` commands."""
    train_app.command("sasrec")(train_sasrec)


def train_sasrec(data: Optional[str] = typer.Option(
                     None, help="MovieLens `ratings.dat` (UserID::MovieID::Rating::Timestamp) "
                                "[default: the synthetic item-graph set]", show_default=False,
                     metavar="<path>"),
                 encoders: str = typer.Option("attention,gru,gla",
                                              help="encoders: `attention` (SASRec) and/or "
                                                   "registered cells"),
                 users: int = typer.Option(2000, help="synthetic: users"),
                 items: int = typer.Option(1000, help="synthetic: items"),
                 length: int = typer.Option(50, help="synthetic: longest user sequence"),
                 degree: int = typer.Option(12, help="synthetic: successors per item"),
                 noise: float = typer.Option(0.1, help="synthetic: probability of a random "
                                                       "jump"),
                 max_len: int = typer.Option(50, help="items read per user (the last ones)"),
                 d_model: int = typer.Option(50, help="embedding width"),
                 layers: int = typer.Option(2, help="encoder blocks"),
                 dropout: float = typer.Option(0.2, help="embedding dropout"),
                 batch: int = typer.Option(128, help="users per step"),
                 lr: float = typer.Option(1e-3, help="Adam learning rate"),
                 epochs: int = typer.Option(200, help="most epochs per encoder"),
                 minutes: float = typer.Option(3.5, help="time budget per encoder (0 or "
                                                         "`inf`: none)"),
                 eval_every: int = typer.Option(5, help="epochs between validations"),
                 negatives: int = typer.Option(100, help="sampled negatives at evaluation"),
                 seed: int = typer.Option(0, help="data, model init and sampling"),
                 out: str = typer.Option("results/sasrec", help="output folder",
                                         metavar="<path>"),
                 device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                 ) -> None:
    """Sequential recommendation (SASRec and recurrent encoders): HR@10 / NDCG@10, leave-one-out,
    on 100 sampled negatives and full ranking."""
    from rich.console import Console

    from .. import cli_checks as checks
    from .sasrec import SASRecConfig, run
    with checks.user_errors(out):
        names = [name.strip() for name in encoders.split(",") if name.strip()]
        cfg = SASRecConfig(
            data=str(checks.path(data, "--data")) if data is not None else None,
            encoders=names, users=users, items=items, length=length, degree=degree,
            noise=noise, max_len=max_len, d_model=d_model, n_layers=layers, dropout=dropout,
            batch=batch, lr=lr, epochs=epochs, minutes=minutes, eval_every=eval_every,
            negatives=negatives, seed=seed, out=str(checks.output_dir(out, "--out")), device=device)
        run(cfg, Console())
