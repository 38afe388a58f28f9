"""The main job until the arena lands: train a small GRU on running parity and report accuracy
at the training length and far beyond it. Readable top to bottom."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torch import nn

from .nn.recurrent import Recurrent
from .tasks import parity


@dataclass
class DemoConfig:
    cell: str = "gru"  # any registered cell name
    hidden_size: int = 32  # H of the recurrent layer
    train_length: int = 20  # T of every training batch
    test_lengths: tuple = (20, 100, 500)  # lengths evaluated after training
    steps: int = 400  # optimizer steps
    batch: int = 64  # sequences per step
    lr: float = 1e-2  # Adam learning rate
    seed: int = 0  # seeds the model and the training data; test data uses seed + 1


class TaggingModel(nn.Module):
    """Tokens -> embedding -> recurrent layer -> per-position logits."""

    def __init__(self, cell: str, vocab: int, hidden: int, classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = Recurrent(cell, input_size=hidden, hidden_size=hidden)
        self.head = nn.Linear(self.rnn.output_size, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embed(tokens))  # (B, T) -> (B, T, H)
        return self.head(y)  # (B, T, classes)


def run(cfg: DemoConfig, console: Console) -> dict:
    torch.manual_seed(cfg.seed)
    model = TaggingModel(cfg.cell, parity.VOCAB, cfg.hidden_size, parity.CLASSES)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    train_gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        job = progress.add_task(f"training {cfg.cell} on parity (T={cfg.train_length})",
                                total=cfg.steps)
        for _ in range(cfg.steps):
            x, y, mask = parity.sample(cfg.batch, cfg.train_length, train_gen)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits[mask], y[mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
            progress.update(job, advance=1, description=f"training {cfg.cell} on parity "
                                                        f"(T={cfg.train_length}) loss {loss:.3f}")
    train_s = time.perf_counter() - start

    test_gen = torch.Generator().manual_seed(cfg.seed + 1)
    results = {}
    model.eval()
    with torch.no_grad():
        for length in cfg.test_lengths:
            x, y, mask = parity.sample(256, length, test_gen)
            results[length] = parity.accuracy(model(x), y, mask)

    console.print(f"{cfg.cell} (H={cfg.hidden_size}) on running parity: trained at "
                  f"T={cfg.train_length} for {cfg.steps} steps in {train_s:.1f}s")
    table = Table()
    table.add_column("test length", justify="right")
    table.add_column("accuracy", justify="right")
    for length, acc in results.items():
        table.add_row(str(length), f"{acc:.3f}")
    console.print(table)
    return {"train_seconds": train_s, "accuracy": results}
