"""Darji's pruning experiments on the Reber task, at laptop scale (``rnnlab prune ...``):
one-shot sweeps, the lattice study beside magnitude pruning, and their figures."""
from __future__ import annotations

import json
from pathlib import Path

from .files import write_atomic


# --- shared -----------------------------------------------------------------------------------
def reber_data(train_size: int, test_size: int, length: int, seed: int):
    """``(task, train, test)``: fixed Reber sets, train and test from disjoint streams."""
    from .. import tasks
    task = tasks.get("reber")
    train = task.sample(train_size, length, tasks.generator(seed, "train"))
    test = task.sample(test_size, length, tasks.generator(seed, "test"))
    return task, train, test


def write_json(result: dict, path: Path) -> Path:
    """Write the result atomically (``files.write_atomic``)."""
    return write_atomic(path, json.dumps(result, indent=1))


def _model(cell: str, task, hidden: int, layers: int, engine: str, seed: int):
    import torch

    from .prune import StackedRNN
    torch.manual_seed(seed)
    return StackedRNN(cell, task.vocab_size, task.n_outputs, hidden, layers, engine)


# --- one-shot sweep ---------------------------------------------------------------------------
def oneshot(cells, percentiles, group: str, train_size: int, test_size: int, length: int,
            hidden: int, layers: int, epochs: int, retrain_epochs: int, lr: float, seed: int,
            engine: str, log=print) -> dict:
    """Train each cell once, then per percentile: prune a copy, score, retrain, score."""
    from . import prune
    task, train, test = reber_data(train_size, test_size, length, seed)
    out = {"task": task.describe(), "group": group, "train_size": train_size,
           "test_size": test_size, "max_length": length, "hidden": hidden, "layers": layers,
           "epochs": epochs, "retrain_epochs": retrain_epochs, "lr": lr, "batch": 32,
           "clip": 5.0, "seed": seed, "cells": {}}
    for cell in cells:
        base = _model(cell, task, hidden, layers, engine, seed)
        prune.fit(base, task, train, epochs, lr=lr, seed=seed)
        dense = prune.evaluate(base, task, test)
        rows = []
        for p in percentiles:
            model = _model(cell, task, hidden, layers, engine, seed)
            model.load_state_dict(base.state_dict())
            prune.prune_magnitude(model, p, group)
            before = prune.evaluate(model, task, test)
            prune.fit(model, task, train, retrain_epochs, lr=lr, seed=seed + 1)
            rows.append({"percentile": p, "sparsity": prune.sparsity(model, group),
                         "accuracy": before, "retrained": prune.evaluate(model, task, test)})
            log(f"{cell} p={p:g}: acc {before:.3f} -> {rows[-1]['retrained']:.3f} after "
                f"{retrain_epochs} epoch(s)")
        out["cells"][cell] = {"dense_accuracy": dense, "sweep": rows,
                              "holds_to": holds_to(rows, dense, "accuracy"),
                              "holds_to_retrained": holds_to(rows, dense, "retrained"),
                              "holds_to_rule": "largest sparsity whose accuracy, and that of "
                                               "every smaller one, is within 0.05 of dense"}
    return out


def holds_to(rows, dense: float, key: str, drop: float = 0.05) -> float:
    """The largest sparsity up to which accuracy stays within ``drop`` of the dense model's
    (every smaller percentile too)."""
    best = 0.0
    for row in sorted(rows, key=lambda r: r["sparsity"]):
        if row[key] < dense - drop:
            break
        best = row["sparsity"]
    return best


def plot_oneshot(result: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = result["cells"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, key, title in ((axes[0], "accuracy", "after pruning"),
                           (axes[1], "retrained", f"after {result['retrain_epochs']} "
                                                  f"retraining epoch(s)")):
        for cell, res in cells.items():
            rows = res["sweep"]
            ax.plot([100 * r["sparsity"] for r in rows], [r[key] for r in rows], "o-", ms=3,
                    label=cell)
        ax.set_title(title, fontsize=10)
        what = "i2h + h2h" if result["group"] == "both" else result["group"]
        ax.set_xlabel(f"sparsity of {what} weights (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Reber test accuracy")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"one-shot global magnitude pruning, {result['layers']} x {result['hidden']} "
                 f"layers", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_graphs(result: dict, path: Path) -> Path:
    """Accuracy against source nodes and against edges, one colour per graph kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, prop in zip(axes, ("source_nodes", "edges")):
        for kind in sorted({r["kind"] for r in result["runs"]}):
            runs = [r for r in result["runs"] if r["kind"] == kind]
            ax.scatter([r[prop] for r in runs], [r["accuracy"] for r in runs], s=14, label=kind)
        ax.set_xlabel(f"{prop} (r = {result['pearson'][prop]:+.2f})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Reber test accuracy")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"random-graph {result['cell']} RNNs", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def lattice_study(cell: str, percentiles, central: float, train_size: int, test_size: int,
                  length: int, epochs: int, retrain_epochs: int, lr: float, seed: int,
                  log=print) -> dict:
    """Per θ: magnitude pruning and lattice pruning of the same trained model, side by side."""
    from . import prune
    from .lattice import prune_lattice
    task, train, test = reber_data(train_size, test_size, length, seed)
    base = _model(cell, task, 50, 3, "auto", seed)
    prune.fit(base, task, train, epochs, lr=lr, seed=seed)
    rows = []
    for p in percentiles:
        row = {"percentile": p}
        for method in ("magnitude", "lattice", "lattice_unrolled"):
            model = _model(cell, task, 50, 3, "auto", seed)
            model.load_state_dict(base.state_dict())
            if method != "magnitude":
                order = "unrolled" if method == "lattice_unrolled" else "collapse"
                row[f"{method}_counts"] = prune_lattice(model, p, central, order)
            else:
                prune.prune_magnitude(model, p)
            before = prune.evaluate(model, task, test)
            prune.fit(model, task, train, retrain_epochs, lr=lr, seed=seed + 1)
            row[method] = {"sparsity": prune.sparsity(model), "accuracy": before,
                           "retrained": prune.evaluate(model, task, test)}
            log(f"{cell} {method} p={p:g}: sparsity {row[method]['sparsity']:.3f}, acc "
                f"{before:.3f} -> {row[method]['retrained']:.3f}")
        rows.append(row)
    return {"cell": cell, "central": central, "epochs": epochs, "retrain_epochs": retrain_epochs,
            "train_size": train_size, "test_size": test_size, "lr": lr,
            "dense_accuracy": prune.evaluate(base, task, test), "rows": rows}
