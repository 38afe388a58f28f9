"""``rnnlab train conformer``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``conformer`` command to ``train_app``."""
    train_app.command("conformer")(train_conformer)


def train_conformer(
        chunks: str = typer.Option("1,2,4,8", help="attention chunk sizes C in frames (one drawn "
                                                   "per training batch; each evaluated offline "
                                                   "and streamed)"),
        left_context: int = typer.Option(16, help="L: frames before its chunk a frame sees"),
        kernel: int = typer.Option(9, help="causal depthwise conv width"),
        d_model: int = typer.Option(64, help="block width"),
        n_layers: int = typer.Option(3, help="Conformer blocks"),
        heads: int = typer.Option(4, help="attention heads"),
        dropout: float = typer.Option(0.0, help="dropout in every module (fresh data every "
                                                "step: none needed)"),
        steps: int = typer.Option(1000, help="optimizer steps"),
        batch: int = typer.Option(32, help="utterances per step"),
        lr: float = typer.Option(2e-3, help="peak learning rate (cosine decay)"),
        max_digits: int = typer.Option(5, help="digits per utterance: 1..max"),
        snr_low: float = typer.Option(-5.0, help="lowest signal-to-noise ratio (dB)"),
        snr_high: float = typer.Option(20.0, help="highest signal-to-noise ratio (dB)"),
        test_utterances: int = typer.Option(200, help="fixed test utterances"),
        seed: int = typer.Option(0, help="model init, training stream and test set"),
        out: str = typer.Option("results/conformer", help="output folder", metavar="<path>"),
        device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")) -> None:
    """Streaming Conformer (cache-aware, NeMo) with CTC on synthetic spoken digits: error rates
    offline vs streamed chunk by chunk, and the latency per chunk."""
    from rich.console import Console

    from .conformer import ConformerConfig, run
    with checks.user_errors(out):
        run(ConformerConfig(chunks=checks.ints(chunks, "--chunks", "1,2,4,8", 1, 256),
                            left_context=left_context, kernel=kernel, d_model=d_model,
                            n_layers=n_layers, heads=heads, dropout=dropout, steps=steps,
                            batch=batch, lr=lr, max_digits=max_digits, snr_low=snr_low,
                            snr_high=snr_high,
                            test_utterances=test_utterances, seed=seed,
                            out=str(checks.output_dir(out, "--out")), device=device), Console())
