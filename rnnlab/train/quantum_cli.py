"""``rnnlab train quantum``: added to the CLI's ``train`` group by ``register(train_app)``."""
from __future__ import annotations

import typer

from .. import cli_checks as checks


def register(train_app: typer.Typer) -> None:
    """Add the ``quantum`` command to ``train_app``."""
    train_app.command("quantum")(train_quantum)


def train_quantum(side: int = typer.Option(8, help="image side after average pooling (1, 2, "
                                                   "4 or 8): side² pixels, one per step"),
                  threshold: float = typer.Option(0.5, help="a pooled pixel in [0, 1] at or "
                                                            "above it is written as |1>"),
                  state_qubits: int = typer.Option(6, help="qubits of the carried state "
                                                           "register (the first is measured)"),
                  input_qubits: int = typer.Option(1, help="qubits each pixel is written into"),
                  order: int = typer.Option(2, help="degree of the neurons' repeat-until-"
                                                    "success circuits (= ancilla qubits)"),
                  epochs: int = typer.Option(40, help="passes over the training images"),
                  batch: int = typer.Option(32, help="images per step"),
                  lr: float = typer.Option(0.01, help="Adam peak learning rate (cosine decay)"),
                  test_fraction: float = typer.Option(0.25, help="images held out for testing"),
                  seed: int = typer.Option(0, help="split, model init and data order"),
                  out: str = typer.Option("results/quantum", help="output folder",
                                          metavar="<path>"),
                  device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda")
                  ) -> None:
    """Quantum RNN (Bausch 2020), statevector-simulated: pixel-by-pixel 0 vs 1 on
    scikit-learn's 8×8 digits, at most 12 qubits."""
    from rich.console import Console

    from .quantum import QuantumConfig, run
    with checks.user_errors(out):
        run(QuantumConfig(side=side, threshold=threshold, state_qubits=state_qubits,
                          input_qubits=input_qubits, order=order, epochs=epochs, batch=batch,
                          lr=lr, test_fraction=test_fraction, seed=seed,
                          out=str(checks.output_dir(out, "--out")), device=device), Console())
