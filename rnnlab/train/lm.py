"""``rnnlab train lm``: a character-level language model on a text file, readable top to bottom.

Load the text (default: the Python standard library's sources), build the character vocabulary,
split off the last ``val_fraction`` for validation, train ``rnnlab.models.LM`` on random windows
with AdamW (warm-up, cosine over the step or time budget, whichever ends first), report
validation bits per character, write a loss-curve PNG, a resumable checkpoint, the final model
(``save_pretrained``) and metrics JSON, and print samples.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import List, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..models.lm import LM
from ..tools import checkpoint
from ..tools.files import write_atomic
from ..tools.schedule import optimizer_step, warmup_cosine
from .text import Vocab, load_text, windows


@dataclasses.dataclass
class LMConfig:
    data: Optional[str] = None  # text file or folder; None: the Python stdlib's sources
    max_chars: int = 3_000_000  # characters read from the corpus
    val_fraction: float = 0.05  # the last part of the text, held out
    cell: str = "gru"  # any registered cell, or "attention"
    d_model: int = 256  # width
    n_layers: int = 2  # LM blocks
    conv: int = 0  # short causal conv width before each mixer (0: none)
    cell_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"allow_neg_eigval": True}
    length: int = 128  # characters per training window (T)
    batch: int = 32  # windows per step
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    steps: int = 100_000  # step budget
    minutes: float = 10.0  # time budget (training only); whichever budget ends first
    eval_every: int = 200  # steps between validation estimates
    eval_windows: int = 64  # validation windows per estimate (length 4 * `length`)
    seed: int = 0  # model init and data order
    out: str = "results/lm"  # checkpoint, model, metrics, loss curve
    sample_chars: int = 400  # characters sampled at the end
    device: str = "cpu"  # torch device


def bits_per_char(lm: LM, data: torch.Tensor, cfg: LMConfig, n_windows: int) -> float:
    """Mean cross-entropy in bits on fixed validation windows (the same ones every time)."""
    gen = torch.Generator().manual_seed(12345)
    lm.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n_windows, 16):
            x, y = windows(data, min(16, n_windows - start), 4 * cfg.length, gen)
            logits = lm(x.to(cfg.device))
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.to(cfg.device).flatten(), reduction="sum").item()
            count += y.numel()
    lm.train()
    return total / count / math.log(2)


def plot_curve(history: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    train = [(h["step"], h["train_bpc"]) for h in history if "train_bpc" in h]
    val = [(h["step"], h["val_bpc"]) for h in history if "val_bpc" in h]
    if train:
        ax.plot(*zip(*train), label="train (running mean)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def run(cfg: LMConfig, console: Console) -> dict:
    out = Path(cfg.out)
    text, source = load_text(Path(cfg.data) if cfg.data else None, cfg.max_chars)
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    split = int(len(data) * (1 - cfg.val_fraction))
    train, val = data[:split], data[split:]
    if len(val) < 4 * cfg.length + 2:
        raise ValueError(f"LM: the validation part ({len(val)} characters) is shorter than one "
                         f"validation window ({4 * cfg.length + 1}); give more text or a larger "
                         f"val_fraction")
    console.print(f"corpus: {source}, {len(text):,} characters, vocabulary {len(vocab)}; "
                  f"train {len(train):,} / validation {len(val):,}")
    torch.manual_seed(cfg.seed)
    lm = LM(len(vocab), cfg.d_model, cfg.n_layers, cell=cfg.cell, conv=cfg.conv,
            cell_options=cfg.cell_options or None).to(cfg.device)
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gens = {"data": torch.Generator().manual_seed(cfg.seed)}
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab.json")
    meta = checkpoint.load(out / "checkpoint.safetensors", lm, opt, gens) or {
        "step": 0, "seconds": 0.0, "history": []}
    if meta["step"]:
        console.print(f"resuming from step {meta['step']} ({meta['seconds']:.0f}s trained)")
    step, history = meta["step"], meta["history"]
    budget = cfg.minutes * 60
    start = time.perf_counter() - meta["seconds"]
    running = None
    columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        job = progress.add_task(f"training {cfg.cell}", total=1.0)
        while True:
            elapsed = time.perf_counter() - start
            done = max(step / cfg.steps, elapsed / budget)
            if done >= 1:
                break
            x, y = windows(train, cfg.batch, cfg.length, gens["data"])
            logits = lm(x.to(cfg.device))
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                     y.to(cfg.device).flatten())
            optimizer_step(lm, opt, loss, warmup_cosine(cfg.lr, done), 1.0)
            step += 1
            bpc = loss.item() / math.log(2)
            running = bpc if running is None else 0.98 * running + 0.02 * bpc
            if step % cfg.eval_every == 0:
                val_bpc = bits_per_char(lm, val, cfg, cfg.eval_windows)
                history.append({"step": step, "train_bpc": running, "val_bpc": val_bpc,
                                "seconds": time.perf_counter() - start})
                checkpoint.save(out / "checkpoint.safetensors", lm, opt, gens,
                                {"step": step, "seconds": time.perf_counter() - start,
                                 "history": history})
            progress.update(job, completed=done, description=(
                f"training {cfg.cell}: step {step}, train {running:.3f} bpc"
                + (f", val {history[-1]['val_bpc']:.3f}" if history else "")))
    seconds = time.perf_counter() - start
    val_bpc = bits_per_char(lm, val, cfg, 4 * cfg.eval_windows)
    history.append({"step": step, "val_bpc": val_bpc, "seconds": seconds})
    checkpoint.save(out / "checkpoint.safetensors", lm, opt, gens,
                    {"step": step, "seconds": seconds, "history": history})
    lm.save_pretrained(out / "model")
    plot_curve(history, out / "loss.png")
    prompt = text[split:split + 40]
    ids = vocab.encode(prompt)[None].to(cfg.device)
    sample = lm.generate(ids, cfg.sample_chars, temperature=0.8, top_k=20,
                         generator=torch.Generator().manual_seed(cfg.seed))
    result = {"cell": cfg.cell, "val_bpc": round(val_bpc, 4), "steps": step,
              "train_seconds": round(seconds, 1), "parameters": sum(
                  p.numel() for p in lm.parameters()),
              "vocab": len(vocab), "corpus": source, "config": dataclasses.asdict(cfg),
              "sample": vocab.decode(sample[0].tolist())}
    write_atomic(out / "metrics.json", json.dumps(result, indent=1))
    console.print(f"{cfg.cell}: validation {val_bpc:.3f} bits/char after {step} steps "
                  f"({seconds:.0f}s, {result['parameters']:,} parameters); wrote {out}/"
                  f"{{metrics.json, loss.png, model/, checkpoint.safetensors}}")
    console.print("[bold]sample[/bold] (prompt from the validation text, then generated):")
    console.print(result["sample"], markup=False, highlight=False)
    return result
