"""``rnnlab train lrcn``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``lrcn`` command to ``train_app``."""
    train_app.command("lrcn")(train_lrcn)


def train_lrcn(models: str = typer.Option("lstm,mamba,average",
                                          help="registered cells, and `average` (the same CNN "
                                               "with frame features averaged over time)"),
               tasks: str = typer.Option("direction,identity",
                                         help="`direction` of motion and/or digit `identity` "
                                              "under occlusion"),
               frames: int = typer.Option(10, help="frames per clip"),
               canvas: int = typer.Option(20, help="frame side in pixels (the digit is 8×8)"),
               directions: int = typer.Option(4, help="directions of motion: 4 or 8"),
               occluded: int = typer.Option(4, help="consecutive frames with the digit hidden"),
               d_model: int = typer.Option(32, help="frame-feature and state width"),
               pooling: str = typer.Option("last", help="last or mean (per-step logits)"),
               steps: int = typer.Option(600, help="optimizer steps per run"),
               batch: int = typer.Option(64, help="clips per step"),
               lr: float = typer.Option(3e-3, help="peak learning rate (cosine decay)"),
               test_clips: int = typer.Option(1000, help="test clips from unseen digit images"),
               seed: int = typer.Option(0, help="image split, model init and clip stream"),
               out: str = typer.Option("results/lrcn", help="output folder", metavar="<path>"),
               device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")) -> None:
    """LRCN on moving 8×8 digits (scikit-learn's): LSTM vs mamba vs frame averaging."""
    from rich.console import Console

    from .lrcn import LRCNConfig, run
    with checks.user_errors(out):
        run(LRCNConfig(models=checks.specs(models, "--models", "lstm,average"),
                       tasks=checks.specs(tasks, "--tasks", "direction"), frames=frames,
                       canvas=canvas, directions=directions, occluded=occluded,
                       d_model=d_model, pooling=pooling, steps=steps, batch=batch, lr=lr,
                       test_clips=test_clips, seed=seed, out=str(checks.output_dir(out, "--out")),
                       device=device), Console())
