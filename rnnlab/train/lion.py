"""LION recipe: synthetic point clouds, LION-style group RNNs vs a PointNet-like baseline.

Readable top to bottom: every setting is checked before anything is written; then for each task
(``classify`` one primitive per cloud, ``segment`` label each point of a two-primitive cloud;
``point_clouds``) and each model (``LION`` with a registered linear cell, or ``pointnet``: a
shared per-point MLP + max-pool whose width is chosen to match the first LION model's parameter
count), one model is trained on a fixed training set and tested on held-out clouds. Then the
forward throughput (points per second) of a LION model is measured against the window size,
which sets the group (= sequence) length. Results go to ``out/results.json``, the figure to
``out/lion.png``.

The timing is one run in one process with the threads torch has: read it as ratios between
window sizes, not as a speed claim.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List

import torch
from torch import nn

from ..checks import check_int, check_number
from ..tools.device import check_device
from ..tools.files import write_atomic
from . import point_clouds as pc
from .loop import train_steps
from .options import check_models_and_tasks

BASELINE = "pointnet"


@dataclasses.dataclass
class LIONConfig:
    models: List[str] = dataclasses.field(  # registered linear cells, and "pointnet"
        default_factory=lambda: ["mamba", BASELINE])
    tasks: List[str] = dataclasses.field(default_factory=lambda: list(pc.TASKS))
    points: int = 256  # points per cloud
    noise: float = 0.02  # Gaussian noise std on the surface samples (clouds span ~[-1, 1])
    voxel: float = 0.1  # voxel side
    window: int = 5  # window side in voxels (x-y)
    d_model: int = 32  # LION width
    layers: int = 2  # LION blocks (x-major, y-major, ...)
    steps: int = 300  # optimizer steps per run
    batch: int = 16  # clouds per step
    lr: float = 3e-3  # AdamW peak learning rate (cosine decay)
    train_clouds: int = 2000  # fixed training set
    test_clouds: int = 500  # held-out clouds
    timing_windows: List[int] = dataclasses.field(  # window sides for the throughput sweep
        default_factory=lambda: [1, 2, 5, 10, 20])
    seed: int = 0  # data, model init and batch order
    out: str = "results/lion"  # results.json and lion.png
    device: str = "cpu"  # torch device


def check(cfg: LIONConfig) -> torch.device:
    """Every setting, each error naming its field, before anything is written."""
    owner = "LIONConfig"
    check_models_and_tasks(owner, cfg.models, cfg.tasks, pc.TASKS, BASELINE)
    if all(name == BASELINE for name in cfg.models):
        raise ValueError(f"{owner}: models needs at least one cell (the baseline's size is "
                         f"matched to the first), got {cfg.models!r}")
    for field in ("d_model", "layers", "window", "steps", "batch", "train_clouds",
                  "test_clouds"):
        check_int(owner, field, getattr(cfg, field), 1)
    check_int(owner, "points", cfg.points, 2)
    check_int(owner, "seed", cfg.seed, 0)
    for w in cfg.timing_windows:
        check_int(owner, "timing_windows", w, 1)
    check_number(owner, "noise", cfg.noise, 0, 1)
    check_number(owner, "voxel", cfg.voxel, 0, low_open=True)
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)
    return check_device(cfg.device)


def lion_model(cell: str, cfg: LIONConfig) -> nn.Module:
    from ..models.lion import LION
    n = len(pc.SHAPES)
    return LION(cell, cfg.d_model, cfg.layers, cfg.voxel, cfg.window, n, n)


def build_models(cfg: LIONConfig) -> Dict[str, nn.Module]:
    """Fresh models (seeded), the baseline matched to the first cell's parameter count."""
    from ..models.lion import matched_pointnet, n_params
    models = {}
    for name in cfg.models:
        torch.manual_seed(cfg.seed)
        if name != BASELINE:
            models[name] = lion_model(name, cfg)
    first = next(iter(models.values()))
    if BASELINE in cfg.models:
        torch.manual_seed(cfg.seed)
        n = len(pc.SHAPES)
        models[BASELINE] = matched_pointnet(n_params(first), n_classes=n, n_point_classes=n)
    return {name: models[name] for name in cfg.models}


def loss_of(model: nn.Module, xyz, batch: Dict[str, torch.Tensor], task: str) -> torch.Tensor:
    logits, point_logits = model(xyz)
    if task == "classify":
        return nn.functional.cross_entropy(logits, batch["label"])
    return nn.functional.cross_entropy(point_logits.flatten(0, 1), batch["point_label"].flatten())


def train_one(name: str, model: nn.Module, task: str, cfg: LIONConfig, train, test,
              device) -> dict:
    """One model on one task: metrics, final loss, seconds, parameter count."""
    from ..models.lion import n_params
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches for every model

    def next_loss():
        idx = torch.randint(train["xyz"].shape[0], (cfg.batch,), generator=order)
        batch = {k: v[idx].to(device) for k, v in train.items()}
        return loss_of(model, batch["xyz"], batch, task)

    losses, seconds = train_steps(model, opt, cfg.steps, cfg.lr, next_loss, f"{name} on {task}")
    result = evaluate(model, test, task, cfg, device)
    result.update(loss=round(sum(losses[-20:]) / len(losses[-20:]), 4),
                  seconds=round(seconds, 1), params=n_params(model))
    return result


@torch.no_grad()
def predict(model: nn.Module, test, cfg: LIONConfig, device):
    model.eval()
    logits, point_logits = zip(*(model(chunk.to(device))
                                 for chunk in test["xyz"].split(cfg.batch * 4)))
    return torch.cat(logits).argmax(-1).cpu(), torch.cat(point_logits).argmax(-1).cpu()


def miou(pred: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Mean over classes present in ``target`` or ``pred`` of intersection / union."""
    ious = []
    for c in range(classes):
        p, t = pred == c, target == c
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return sum(ious) / len(ious)


def evaluate(model: nn.Module, test, task: str, cfg: LIONConfig, device) -> dict:
    label, point_label = predict(model, test, cfg, device)
    if task == "classify":
        return {"accuracy": (label == test["label"]).float().mean().item()}
    return {"point_accuracy": (point_label == test["point_label"]).float().mean().item(),
            "miou": miou(point_label, test["point_label"], len(pc.SHAPES))}


@torch.no_grad()
def throughput(model: nn.Module, xyz: torch.Tensor, windows: List[int], repeats: int = 3
               ) -> List[dict]:
    """Forward points per second (median of ``repeats`` after a warm-up, partitioning
    included) and the mean group length for each window side."""
    from ..models.lion import partition
    model.eval()
    rows, keep = [], model.window
    for w in windows:
        model.window = w
        model(xyz)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(xyz)
            times.append(time.perf_counter() - start)
        part = partition(xyz, model.voxel, w, "x")
        rows.append({"window": w, "groups": part.groups,
                     "mean_group": round(part.lengths.float().mean().item(), 1),
                     "max_group": part.max_len,
                     "points_per_second": round(xyz.shape[0] * xyz.shape[1]
                                                / sorted(times)[len(times) // 2])})
    model.window = keep
    return rows


def run(cfg: LIONConfig, console=None) -> dict:
    """Train every model on every task, time the group sizes; write ``results.json`` and
    ``lion.png`` in ``out``."""
    device = check(cfg)
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(cfg.out)
    started, results = time.perf_counter(), {}
    for t, task in enumerate(cfg.tasks):
        train = pc.make_clouds(task, cfg.train_clouds, cfg.points, cfg.seed * 10 + 2 * t,
                               cfg.noise)
        test = pc.make_clouds(task, cfg.test_clouds, cfg.points, cfg.seed * 10 + 2 * t + 1,
                              cfg.noise)
        for name, model in build_models(cfg).items():
            r = train_one(name, model, task, cfg, train, test, device)
            results.setdefault(task, {})[name] = r
            metric = "accuracy" if task == "classify" else "miou"
            say(f"{task:8s} {name:8s} {metric} {r[metric]:.3f}  loss {r['loss']:.3f}  "
                f"params {r['params']}  ({r['seconds']:.0f} s)")
        if task == "segment":
            example = {"xyz": test["xyz"][0], "point_label": test["point_label"][0]}
    cell = next(name for name in cfg.models if name != BASELINE)
    torch.manual_seed(cfg.seed)
    timing = throughput(lion_model(cell, cfg).to(device),
                        pc.make_clouds("segment", cfg.batch, cfg.points, cfg.seed + 99,
                                       cfg.noise)["xyz"].to(device), cfg.timing_windows)
    for row in timing:
        say(f"window {row['window']:3d}: mean group {row['mean_group']:6.1f} points, "
            f"{row['points_per_second']} points/s")
    report = {"config": dataclasses.asdict(cfg), "results": results,
              "chance": {"classify": 1 / len(pc.SHAPES)},
              "timing": {"cell": cell, "rows": timing},
              "wall_seconds": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    figure(report, example if "segment" in cfg.tasks else None, out / "lion.png")
    say(f"results in {out / 'results.json'}, figure {out / 'lion.png'}")
    return report


def figure(report: dict, example, path: Path) -> None:
    """Scores per task and model; throughput against mean group length; a segment example."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if example is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.4))
    ax = axes[0]
    tasks = list(report["results"])
    models = list(report["results"][tasks[0]])
    width = 0.8 / len(models)
    for k, name in enumerate(models):
        score = [report["results"][t][name]["accuracy" if t == "classify" else "miou"]
                 for t in tasks]
        xs = [j + (k - (len(models) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar_label(ax.bar(xs, score, width, label=name), fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(["classify (accuracy)" if t == "classify" else "segment (mIoU)"
                        for t in tasks], fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=7, loc="upper center", ncol=len(models))
    ax.set_title("test scores", fontsize=9)
    rows = report["timing"]["rows"]
    ax = axes[1]
    ax.plot([r["mean_group"] for r in rows], [r["points_per_second"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"w={r['window']}", (r["mean_group"], r["points_per_second"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("mean group length (points)", fontsize=8)
    ax.set_ylabel("forward points / s", fontsize=8)
    ax.set_title(f"LION ({report['timing']['cell']}) throughput", fontsize=9)
    if example is not None:
        ax = axes[2]
        xyz = example["xyz"]
        ax.scatter(xyz[:, 0], xyz[:, 1], c=example["point_label"], cmap="tab10", vmin=0,
                   vmax=9, s=4)
        ax.set_aspect("equal")
        ax.set_title("a segment cloud (x-y), colour = primitive", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
