"""``rnnlab train plstm``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``plstm`` command to ``train_app``."""
    train_app.command("plstm")(train_plstm)


def _sizes(text: str) -> list:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--test-sizes must be comma-separated ints, got {text!r}") from None


def train_plstm(models: str = typer.Option("plstm,vit,rowscan",
                                           help="plstm (P-mode), plstm_d (D-mode), vit, rowscan"),
                train_size: int = typer.Option(8, help="side of the training images"),
                test_sizes: str = typer.Option("8,12,16", help="sides of the test images"),
                d_model: int = typer.Option(16, help="pixel-feature width"),
                heads: int = typer.Option(2, help="heads of every mixer"),
                layers: int = typer.Option(2, help="mixer + MLP blocks"),
                train_images: int = typer.Option(4000, help="fixed training images"),
                test_images: int = typer.Option(200, help="test images per size"),
                steps: int = typer.Option(2500, help="optimizer steps per model"),
                batch: int = typer.Option(32, help="images per step"),
                lr: float = typer.Option(3e-3, help="peak learning rate (cosine decay)"),
                form: str = typer.Option("wavefront", help="pLSTM's exact form: wavefront "
                                         "(X+Y-1 steps), doubling (log-depth, O((XY)^3)), loop"),
                seed: int = typer.Option(0, help="data, init and batch order"),
                out: str = typer.Option("results/plstm", help="output folder",
                                        metavar="<path>")) -> None:
    """Arrow-pointing extrapolation: 2-D pLSTM vs ViT-style attention vs a row-scanning cell."""
    from .plstm import PLSTMConfig, run
    with checks.user_errors(out):
        run(PLSTMConfig(models=checks.specs(models, "--models", "plstm,vit"),
                        train_size=train_size, test_sizes=_sizes(test_sizes), d_model=d_model,
                        heads=heads, layers=layers, train_images=train_images,
                        test_images=test_images, steps=steps, batch=batch, lr=lr, form=form,
                        seed=seed, out=str(checks.output_dir(out, "--out"))))
