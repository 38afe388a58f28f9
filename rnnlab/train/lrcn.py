"""LRCN recipe: moving-digit clips, LRCN with recurrent cells vs a frame-averaging baseline.

Readable top to bottom: every setting is checked before anything is written; then for each task
(``direction`` of motion, digit ``identity`` with an occluder hiding the digit for a band of
frames) and each model (a registered cell inside ``LRCN``, or ``average``: the same CNN with its
frame features averaged over time), one model is trained on fresh clips from the training digit
images and tested on a fixed set of clips from unseen digit images. All models of a task see the
same clips in the same order. Results go to ``out/results.json``, the figure to
``out/lrcn.png``.

What the comparison shows: the averaging baseline cannot order frames, so its direction accuracy
is capped at 50% (it tells the axis, not the sign; ``moving_digits``); a recurrent cell reads
the order. For identity, ``pooling="last"`` makes the recurrent models carry the digit across
the occluded band when it covers the last frames (``identity_last_hidden`` in the results).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..tools.device import check_device
from ..tools.files import write_atomic
from . import moving_digits as md
from .loop import train_steps
from .options import check_models_and_tasks

TASKS = ("direction", "identity")
BASELINE = "average"


@dataclasses.dataclass
class LRCNConfig:
    models: List[str] = dataclasses.field(  # registered cells, and "average" (the baseline)
        default_factory=lambda: ["lstm", "mamba", BASELINE])
    tasks: List[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    frames: int = 10  # frames per clip
    canvas: int = 20  # frame side in pixels (the digit is 8×8)
    directions: int = 4  # 4 or 8 directions of motion
    occluded: int = 4  # consecutive frames with the digit hidden, per clip
    d_model: int = 32  # frame-feature and recurrent-state width
    channels: int = 16  # CNN channels (twice that in its second stage)
    pooling: str = "last"  # "last" or "mean" over the per-step logits
    steps: int = 600  # optimizer steps per run
    batch: int = 64  # clips per step
    lr: float = 3e-3  # AdamW peak learning rate (cosine decay)
    test_clips: int = 1000  # fixed test clips from unseen digit images
    seed: int = 0  # image split, model init and clip stream
    out: str = "results/lrcn"  # results.json and lrcn.png
    device: str = "cpu"  # torch device


def check(cfg: LRCNConfig) -> torch.device:
    """Every setting, each error naming its field, before anything is written."""
    owner = "LRCNConfig"
    check_models_and_tasks(owner, cfg.models, cfg.tasks, TASKS, BASELINE)
    md.check_geometry(cfg.frames, cfg.canvas, cfg.directions, cfg.occluded, 1)
    for field in ("d_model", "channels", "steps", "batch", "test_clips"):
        check_int(owner, field, getattr(cfg, field), 1)
    check_int(owner, "seed", cfg.seed, 0)
    check_choice(owner, "pooling", cfg.pooling, ("last", "mean"))
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)
    return check_device(cfg.device)


def build_model(name: str, cfg: LRCNConfig, n_classes: int) -> nn.Module:
    from ..models.lrcn import LRCN, FrameAverage
    if name == BASELINE:
        return FrameAverage(cfg.canvas, n_classes, cfg.d_model, cfg.channels)
    return LRCN(name, cfg.canvas, n_classes, cfg.d_model, cfg.pooling, cfg.channels)


def n_classes(task: str, cfg: LRCNConfig) -> int:
    return cfg.directions if task == "direction" else 10


def clips(split, n: int, generator: torch.Generator, cfg: LRCNConfig) -> Dict[str, torch.Tensor]:
    return md.make_clips(*split, n, generator, frames=cfg.frames, canvas=cfg.canvas,
                         directions=cfg.directions, occluded=cfg.occluded)


def label(batch: Dict[str, torch.Tensor], task: str) -> torch.Tensor:
    return batch["direction"] if task == "direction" else batch["digit"]


def train_one(name: str, task: str, cfg: LRCNConfig, data, test, device) -> dict:
    """One model on one task: ``{"accuracy", "engine", "accuracy_last_hidden" (on the test
    clips whose last frame is occluded), "loss" (mean of the last 20 steps), "seconds"}``."""
    torch.manual_seed(cfg.seed)
    model = build_model(name, cfg, n_classes(task, cfg)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    stream = torch.Generator().manual_seed(cfg.seed + 1)  # the same clips for every model

    def next_loss():
        batch = clips(data["train"], cfg.batch, stream, cfg)
        return nn.functional.cross_entropy(model(batch["clips"].to(device)),
                                           label(batch, task).to(device))

    losses, seconds = train_steps(model, opt, cfg.steps, cfg.lr, next_loss, f"{name} on {task}")
    correct = evaluate(model, test, task, cfg, device)
    last_hidden = test["hidden"][:, -1]
    engine = getattr(getattr(model, "rnn", None), "stats", {}).get("engine", "-")
    return {"accuracy": correct.float().mean().item(), "engine": engine,
            "accuracy_last_hidden": correct[last_hidden].float().mean().item()
            if last_hidden.any() else None,
            "loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": round(seconds, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, test: Dict[str, torch.Tensor], task: str, cfg: LRCNConfig,
             device) -> torch.Tensor:
    """Per-clip correctness on the test clips ``(n,)`` bool."""
    model.eval()
    preds = [model(chunk.to(device)).argmax(-1).cpu()
             for chunk in test["clips"].split(cfg.batch * 4)]
    return torch.cat(preds) == label(test, task)


def run(cfg: LRCNConfig, console=None) -> dict:
    """Train every model on every task; write ``results.json`` and ``lrcn.png`` in ``out``."""
    device = check(cfg)
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(cfg.out)
    data = md.load_split(cfg.seed)
    test = clips(data["test"], cfg.test_clips, torch.Generator().manual_seed(cfg.seed + 2), cfg)
    started, results = time.perf_counter(), {}
    for task in cfg.tasks:
        for name in cfg.models:
            r = train_one(name, task, cfg, data, test, device)
            results.setdefault(task, {})[name] = r
            say(f"{task:9s} {name:8s} accuracy {r['accuracy']:.3f}  loss {r['loss']:.3f}  "
                f"({r['seconds']:.0f} s)")
    report = {"config": dataclasses.asdict(cfg), "results": results,
              "chance": {"direction": 1 / cfg.directions, "identity": 0.1},
              "average_direction_ceiling": 0.5,
              "wall_seconds": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    figure(report, test, out / "lrcn.png")
    say(f"results in {out / 'results.json'}, figure {out / 'lrcn.png'}")
    return report


def figure(report: dict, test: Dict[str, torch.Tensor], path: Path,
           example: Optional[int] = None) -> None:
    """One test clip (occluded frames marked) above the accuracy bars per task and model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = test["clips"].shape[1]
    i = example if example is not None else int(test["hidden"][:, -1].nonzero()[0, 0]) \
        if test["hidden"][:, -1].any() else 0
    fig = plt.figure(figsize=(8, 4.6))
    grid = fig.add_gridspec(2, frames, height_ratios=[1, 3.2])
    for t in range(frames):
        ax = fig.add_subplot(grid[0, t])
        ax.imshow(test["clips"][i, t].numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t={t}{'*' if test['hidden'][i, t] else ''}", fontsize=7)
    direction = md.DIRECTION_NAMES[int(test["direction"][i])]
    fig.text(0.5, 0.7, f"a test clip: digit {int(test['digit'][i])} moving {direction}; "
             "* = occluded frame", ha="center", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    tasks = list(report["results"])
    models = list(report["results"][tasks[0]])
    width = 0.8 / len(models)
    for k, name in enumerate(models):
        acc = [report["results"][task][name]["accuracy"] for task in tasks]
        xs = [j + (k - (len(models) - 1) / 2) * width for j in range(len(tasks))]
        bars = ax.bar(xs, acc, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    for j, task in enumerate(tasks):
        ax.hlines(report["chance"][task], j - 0.45, j + 0.45, colors="gray", linestyles=":")
    if "direction" in tasks:
        j = tasks.index("direction")
        ax.hlines(0.5, j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=0.8,
                  label="order-blind ceiling")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(["direction of motion" if t == "direction" else
                        "identity under occlusion" for t in tasks])
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("test accuracy (unseen digit images)")
    ax.legend(fontsize=7, loc="upper center", ncol=len(models) + 1)
    fig.subplots_adjust(top=0.93, hspace=0.45, bottom=0.08)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
