"""``rnnlab train lion``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``lion`` command to ``train_app``."""
    train_app.command("lion")(train_lion)


def train_lion(models: str = typer.Option("mamba,pointnet",
                                          help="registered linear cells (each in a LION model), "
                                               "and `pointnet` (per-point MLP + max-pool, its "
                                               "size matched to the first LION model)"),
               tasks: str = typer.Option("classify,segment",
                                         help="`classify` one primitive per cloud and/or "
                                              "`segment` the points of two primitives"),
               points: int = typer.Option(256, help="points per cloud"),
               noise: float = typer.Option(0.02, help="noise std on the surface samples"),
               voxel: float = typer.Option(0.1, help="voxel side (clouds span about [-1, 1])"),
               window: int = typer.Option(5, help="window side in voxels (x-y)"),
               d_model: int = typer.Option(32, help="LION width"),
               layers: int = typer.Option(2, help="LION blocks (x-major, y-major, ...)"),
               steps: int = typer.Option(300, help="optimizer steps per run"),
               batch: int = typer.Option(16, help="clouds per step"),
               lr: float = typer.Option(3e-3, help="peak learning rate (cosine decay)"),
               train_clouds: int = typer.Option(2000, help="training clouds per task"),
               test_clouds: int = typer.Option(500, help="held-out clouds per task"),
               timing_windows: str = typer.Option("1,2,5,10,20",
                                                  help="window sides for the throughput sweep"),
               seed: int = typer.Option(0, help="data, model init and batch order"),
               out: str = typer.Option("results/lion", help="output folder", metavar="<path>"),
               device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")) -> None:
    """LION-style group RNNs on synthetic point clouds vs a PointNet-like baseline."""
    from rich.console import Console

    from .lion import LIONConfig, run
    with checks.user_errors(out):
        run(LIONConfig(models=checks.specs(models, "--models", "mamba,pointnet"),
                       tasks=checks.specs(tasks, "--tasks", "classify"), points=points,
                       noise=noise, voxel=voxel, window=window, d_model=d_model, layers=layers,
                       steps=steps, batch=batch, lr=lr, train_clouds=train_clouds,
                       test_clouds=test_clouds,
                       timing_windows=checks.ints(timing_windows, "--timing-windows", "1,5,20",
                                                  1),
                       seed=seed, out=str(checks.output_dir(out, "--out")), device=device),
            Console())
