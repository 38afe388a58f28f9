"""Does the hidden-covariance score predict anything here? A random search space of small arena
architectures (cell × width × depth × options), each scored at initialisation on one fixed batch,
then trained for one fixed short budget on one arena task and tested; Kendall τ between the score
and the test loss / accuracy, with a bootstrap 95% interval over architectures.

    OMP_NUM_THREADS=1 python bench/score_search.py --archs 36 --steps 250 \
        --out bench/results/2026-12-03-score_search.json --figure docs/figures/score_search.png

Serianni & Kalita (ACL 2023) report τ = -0.372 between layer-1 hidden covariance and test loss
over 8,794 NAS-Bench-NLP (PTB) architectures: a higher score, a lower loss.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from rnnlab import tasks as _tasks
from rnnlab.arena import spec as arena_spec
from rnnlab.arena.config import ArenaConfig
from rnnlab.arena.train import build_model, learning_rate
from rnnlab.models.block import PUBLISHED
from rnnlab.tools import score as _score
from rnnlab.tools.files import write_atomic
from rnnlab.tools.schedule import optimizer_step

# cells that train in seconds on one CPU thread at these sizes (sequential-engine cells loop in
# Python over T, still fast at T <= 32); the options each may vary
CELLS = {
    "gru": {}, "lstm": {}, "rnn_tanh": {}, "rnn_relu": {}, "indrnn": {}, "slstm": {},
    "mamba": {"allow_neg_eigval": (False, True)}, "mamba2": {"allow_neg_eigval": (False, True)},
    "gla": {}, "deltanet": {"allow_neg_eigval": (False, True)}, "mlstm": {}, "lru": {},
    "s4d": {}, "minmax": {},
}
WIDTHS = (16, 32, 64)
DEPTHS = (1, 2)


def sample_space(n: int, seed: int) -> list[dict]:
    """``n`` distinct random architectures: cell, width, depth, MLP on/off, block (published where
    the family has one) and the cell's options."""
    rng, seen, archs = random.Random(seed), set(), []
    while len(archs) < n:
        cell = rng.choice(sorted(CELLS))
        options = {k: rng.choice(v) for k, v in CELLS[cell].items()}
        block = rng.choice(("default", "published")) if cell in PUBLISHED else "default"
        arch = dict(cell=cell, d_model=rng.choice(WIDTHS), n_layers=rng.choice(DEPTHS),
                    mlp=rng.choice((True, False)), block=block, options=options)
        key = json.dumps(arch, sort_keys=True)
        if key not in seen:
            seen.add(key)
            archs.append(arch)
    return archs


def label(arch: dict) -> str:
    opts = [f"{k}={str(v).lower()}" for k, v in arch["options"].items()]
    opts += ["block=published"] if arch["block"] == "published" else []
    name = f"{arch['cell']}({', '.join(opts)})" if opts else arch["cell"]
    return f"{name} D={arch['d_model']} L={arch['n_layers']}{'' if arch['mlp'] else ' no-mlp'}"


def build(arch: dict, task, seed: int) -> torch.nn.Module:
    opts = ", ".join(f"{k}={v}" for k, v in {**arch["options"], "block": arch["block"]}.items())
    spec = arena_spec.model(f"{arch['cell']}({opts})")
    cfg = ArenaConfig(models=[spec.label], tasks=[task.name], d_model=arch["d_model"],
                      n_layers=arch["n_layers"], mlp=arch["mlp"])
    torch.manual_seed(seed)
    return build_model(spec, task, cfg)


def test_metrics(model, task, test_set) -> tuple[float, float]:
    """Mean test loss and the task's metric on the fixed test set."""
    model.eval()
    with torch.no_grad():
        x, y, mask = test_set
        out = model(x)
        loss, metric = float(task.loss(out, y, mask)), task.score(out, y, mask)
    model.train()
    return loss, metric


def run_arch(arch: dict, task, args, score_batch, test_set) -> dict:
    model = build(arch, task, args.seed)
    row = {"label": label(arch), **arch,
           "parameters": sum(p.numel() for p in model.parameters())}
    for layer in range(arch["n_layers"]):
        d = _score.hidden_covariance_details(
            _score.states_matrix(_score.hidden_states(model, score_batch, layer)))
        row.setdefault("score_layers", []).append(d.score)
        if layer == 0:
            row.update(score=d.score, per_unit=d.per_unit, units=d.units,
                       dead_units=d.dead_units, near_zero_eigs=int((d.eigenvalues < 1e-3).sum()))
    row["init_loss"], _ = test_metrics(model, task, test_set)
    cfg = ArenaConfig(models=["x"], tasks=["x"], steps=args.steps, lr=args.lr)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = _tasks.generator(args.seed, "train")
    t0 = time.perf_counter()
    for step in range(args.steps):
        x, y, mask = task.sample(args.batch, args.length, data)
        loss = task.loss(model(x), y, mask)
        if not torch.isfinite(loss):
            row["diverged_at"] = step
            break
        optimizer_step(model, opt, loss, learning_rate(cfg, step), cfg.clip)
    row["train_seconds"] = round(time.perf_counter() - t0, 1)
    row["test_loss"], row["test_metric"] = test_metrics(model, task, test_set)
    return row


def canonical(arch: dict) -> str:
    """One key per distinct network: a published block whose family has no MLP (Mamba, Mamba-2,
    mLSTM) is the same network with ``mlp`` on or off, so the sampler can draw it twice."""
    arch = {k: arch[k] for k in ("cell", "d_model", "n_layers", "mlp", "block", "options")}
    if arch["block"] == "published" and PUBLISHED[arch["cell"]][1] == "none":
        arch["mlp"] = None
    return json.dumps(arch, sort_keys=True)


def distinct(rows: list[dict]) -> list[dict]:
    """The first run of each distinct network (``canonical``)."""
    seen, out = set(), []
    for r in rows:
        if canonical(r) not in seen:
            seen.add(canonical(r))
            out.append(r)
    return out


def correlations(rows: list[dict], resamples: int) -> dict:
    """τ of each score form against test loss and the task's metric, over distinct networks
    whose training stayed finite."""
    ok = [r for r in distinct(rows) if math.isfinite(r["test_loss"]) and "diverged_at" not in r]
    out = {}
    for form in ("score", "per_unit"):
        for target in ("test_loss", "test_metric"):
            out[f"{form}_vs_{target}"] = _score.kendall_tau_bootstrap(
                [r[form] for r in ok], [r[target] for r in ok], resamples)
    # a baseline proxy (more parameters, lower loss?) and the score within each family, to see
    # whether it says more than "nonlinear cell or linear recurrence"
    out["parameters_vs_test_loss"] = _score.kendall_tau_bootstrap(
        [r["parameters"] for r in ok], [r["test_loss"] for r in ok], resamples)
    for name, linear in (("nonlinear", False), ("linear", True)):
        group = [r for r in ok if is_linear(r["cell"]) == linear]
        for form in ("score", "per_unit") if len(group) >= 3 else ():
            out[f"{form}_vs_test_loss_{name}_cells_only"] = _score.kendall_tau_bootstrap(
                [r[form] for r in group], [r["test_loss"] for r in group], resamples)
    deep = [r for r in ok if len(r["score_layers"]) > 1]  # the paper's layer-2 row
    if len(deep) >= 3:
        out["layer2_score_vs_test_loss"] = _score.kendall_tau_bootstrap(
            [r["score_layers"][1] for r in deep], [r["test_loss"] for r in deep], resamples)
    return out


def is_linear(cell: str) -> bool:
    """Whether the cell's recurrence is linear in the state (a ``Linear`` structure)."""
    from rnnlab import cells
    from rnnlab.cells.base import Linear
    return isinstance(cells.get(cell, 4, 4, device="meta").structure, Linear)


def figure(rows: list[dict], stats: dict, task_label: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.1), dpi=90)
    groups = (("nonlinear cell", "tab:red", False), ("linear recurrence", "tab:blue", True))
    for ax, target, name in ((axes[0], "test_loss", "test loss"),
                             (axes[1], "test_metric", "test accuracy")):
        for legend, colour, linear in groups:
            pts = [r for r in rows if is_linear(r["cell"]) == linear]
            ax.scatter([-r["score"] for r in pts], [r[target] for r in pts], c=colour,
                       s=[r["d_model"] / 2 for r in pts], alpha=0.75, label=legend)
        s = stats[f"score_vs_{target}"]
        ax.set_xscale("log")
        ax.set_xlabel("−score at init (log scale; left is better)")
        ax.set_ylabel(f"{name} after training")
        ax.set_title(f"Kendall τ = {s['tau']:+.3f}, 95% CI [{s['ci'][0]:+.2f}, "
                     f"{s['ci'][1]:+.2f}]", fontsize=10)
    axes[0].legend(fontsize=8, title="marker size: width", title_fontsize=8)
    fig.suptitle(f"Hidden-covariance score at init vs trained result: {len(rows)} "
                 f"architectures on {task_label}\n(paper: τ = −0.372 vs test loss on "
                 "NAS-Bench-NLP)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="word_problem(group='S3')")
    p.add_argument("--archs", type=int, default=36)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=24, help="train, score and test length")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--test-examples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", default="bench/results/2026-12-03-score_search.json")
    p.add_argument("--figure", default="docs/figures/score_search.png")
    p.add_argument("--from-json", default=None, help="recompute statistics and the figure "
                   "from a previous --out (no training)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.from_json:
        return reanalyse(args)
    task_label, task = arena_spec.task(args.task)
    score_batch = task.sample(args.batch, args.length, _tasks.generator(args.seed + 1, "test"))[0]
    test_set = task.sample(args.test_examples, args.length, _tasks.generator(args.seed, "test"))
    rows, t0 = [], time.perf_counter()
    if args.archs < 3:
        p.error("--archs must be >= 3 (a rank correlation needs three points)")
    for i, arch in enumerate(sample_space(args.archs, args.seed)):
        rows.append(run_arch(arch, task, args, score_batch, test_set))
        r = rows[-1]
        print(f"{i + 1:3d} {r['label']:48s} score {r['score']:11.4g} loss {r['test_loss']:.3f} "
              f"metric {r['test_metric']:.3f} ({r['train_seconds']}s)", flush=True)
    result = {"task": task_label, "settings": vars(args), "k": _score.K,
              "wall_seconds": round(time.perf_counter() - t0, 1), "runs": rows}
    finish(result, args)


def finish(result: dict, args) -> None:
    """Statistics, the JSON and the figure from ``result["runs"]``."""
    rows = result["runs"]
    stats = correlations(rows, args.resamples)
    result.update(correlations=stats, distinct_networks=len(distinct(rows)),
                  paper={"tau_vs_test_loss_layer1": -0.372, "pearson_layer1": -0.405,
                         "source": "Serianni & Kalita, ACL 2023, NAS-Bench-NLP (8,794 PTB "
                                   "architectures), recomputed from data/RNN_results.csv"})
    write_atomic(Path(args.out), json.dumps(result, indent=1))
    figure(distinct(rows), stats, result["task"], Path(args.figure))
    for key, s in stats.items():
        print(f"{key:28s} tau {s['tau']:+.3f}  95% CI [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]  "
              f"p {s['p_value']:.3g}  n {s['n']}")


def reanalyse(args) -> None:
    result = json.loads(Path(args.from_json).read_text())
    result["settings"]["resamples"] = args.resamples
    finish(result, args)


if __name__ == "__main__":
    main()
