"""``rnnlab train pvrnn``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

from typing import List

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``pvrnn`` command to ``train_app``."""
    train_app.command("pvrnn")(train_pvrnn)


def numbers(text: str, option: str, example: str) -> List[float]:
    """Comma-separated finite numbers ``>= 0`` (each range is checked by the config)."""
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not v >= 0 or v == float("inf") for v in values):
        raise ValueError(f"{option}: expected comma-separated numbers >= 0 such as {example!r}, "
                         f"got {text!r}")
    return values


def train_pvrnn(ws: str = typer.Option("0.001,0.01,0.1,1,10",
                                       help="meta-priors w to compare (one model each)"),
                d_sizes: str = typer.Option("32,16", help="deterministic units per layer, "
                                                          "bottom (fast) to top (slow)"),
                z_sizes: str = typer.Option("3,2", help="latent units per layer"),
                taus: str = typer.Option("2,8", help="MTRNN time constants per layer (>= 1)"),
                train_sequences: int = typer.Option(24, help="training trajectories"),
                test_sequences: int = typer.Option(8, help="held-out trajectories"),
                cycles: int = typer.Option(6, help="primitive cycles per trajectory"),
                period: int = typer.Option(20, help="steps per cycle"),
                switch_prob: float = typer.Option(0.3, help="chance of a new primitive at "
                                                            "each cycle boundary"),
                noise: float = typer.Option(0.01, help="observation noise std"),
                steps: int = typer.Option(1000, help="training steps (full batch)"),
                lr: float = typer.Option(3e-3, help="peak learning rate of the weights "
                                                    "(cosine decay)"),
                posterior_lr: float = typer.Option(0.03, help="peak learning rate of the "
                                                              "adaptive variables"),
                er_window: int = typer.Option(20, help="error-regression window W (steps)"),
                er_steps: int = typer.Option(100, help="error-regression Adam steps K per "
                                                      "window"),
                er_lr: float = typer.Option(0.03, help="error-regression learning rate"),
                horizon: int = typer.Option(10, help="steps predicted past each window"),
                stride: int = typer.Option(10, help="steps the window slides (<= W)"),
                seed: int = typer.Option(0, help="data, init and noise"),
                out: str = typer.Option("results/pvrnn", help="output folder",
                                        metavar="<path>"),
                device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                ) -> None:
    """PV-RNN on Lissajous robot trajectories: the meta-prior w and error regression."""
    from rich.console import Console

    from .pvrnn import PVRNNConfig, run
    with checks.user_errors(out):
        cfg = PVRNNConfig(
            ws=numbers(ws, "--ws", "0.001,0.01"),
            d_sizes=checks.ints(d_sizes, "--d-sizes", "32,16", 1),
            z_sizes=checks.ints(z_sizes, "--z-sizes", "3,2", 1),
            taus=numbers(taus, "--taus", "2,8"), train_sequences=train_sequences,
            test_sequences=test_sequences, cycles=cycles, period=period,
            switch_prob=switch_prob, noise=noise, steps=steps, lr=lr, posterior_lr=posterior_lr,
            er_window=er_window,
            er_steps=er_steps, er_lr=er_lr, horizon=horizon, stride=stride, seed=seed,
            out=str(checks.output_dir(out, "--out")), device=device)
        run(cfg, Console())
