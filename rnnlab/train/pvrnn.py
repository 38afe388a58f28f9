"""PV-RNN recipe: the meta-prior trade-off and error regression on robot-like trajectories.

Readable top to bottom: every setting is checked before anything is written; training and
held-out trajectories come from ``trajectories`` (Lissajous primitives chained through a home
point, switching at random); then for each meta-prior w one PV-RNN and its per-sequence adaptive
variables are trained together (the same data, init and noise for every w) and evaluated:

- on the training sequences: the prediction error through the learned posterior, the KL per
  layer, and the prior's mean std (how deterministic the learned prior is);
- on held-out sequences: error regression (frozen weights; K Adam steps on the last W steps'
  adaptive variables; H-step prediction by rolling the prior; slide) against the prior alone
  rolled from the sequence start, both scored on the same future steps.

Results go to ``out/results.json``, the figure to ``out/pvrnn.png``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import List

import torch
from torch import nn

from ..checks import check_int, check_number
from ..tools.device import check_device
from ..tools.files import write_atomic
from . import trajectories as tj


@dataclasses.dataclass
class PVRNNConfig:
    ws: List[float] = dataclasses.field(  # meta-priors to compare (one model each)
        default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])
    d_sizes: List[int] = dataclasses.field(default_factory=lambda: [32, 16])  # per layer
    z_sizes: List[int] = dataclasses.field(default_factory=lambda: [3, 2])  # per layer
    taus: List[float] = dataclasses.field(default_factory=lambda: [2.0, 8.0])  # per layer
    train_sequences: int = 24  # training trajectories (each has its own adaptive variables)
    test_sequences: int = 8  # held-out trajectories for error regression
    cycles: int = 6  # primitive cycles per trajectory
    period: int = 20  # steps per cycle
    switch_prob: float = 0.3  # chance of a new primitive at each cycle boundary
    noise: float = 0.01  # observation noise std
    steps: int = 1000  # training steps (full batch)
    lr: float = 3e-3  # Adam peak learning rate of the weights (cosine decay)
    posterior_lr: float = 0.03  # the same for the adaptive variables (free per-step values)
    er_window: int = 20  # W: error-regression window (steps)
    er_steps: int = 100  # K: Adam steps on the window per slide
    er_lr: float = 0.03  # error-regression Adam learning rate
    horizon: int = 10  # H: steps predicted past each window
    stride: int = 10  # steps the window slides each time
    seed: int = 0  # data, init and noise
    out: str = "results/pvrnn"  # results.json and pvrnn.png
    device: str = "cpu"  # torch device


def check(cfg: PVRNNConfig) -> torch.device:
    """Every setting, each error naming its field, before anything is written."""
    owner = "PVRNNConfig"
    if not cfg.ws:
        raise ValueError(f"{owner}: ws must list at least one meta-prior, got {cfg.ws!r}")
    for w in cfg.ws:
        check_number(owner, "ws", w, 0)
    for field in ("train_sequences", "test_sequences", "cycles", "steps", "er_window",
                  "horizon", "stride"):
        check_int(owner, field, getattr(cfg, field), 1)
    check_int(owner, "er_steps", cfg.er_steps, 0)
    check_int(owner, "seed", cfg.seed, 0)
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)
    check_number(owner, "posterior_lr", cfg.posterior_lr, 0, 10, low_open=True)
    check_number(owner, "er_lr", cfg.er_lr, 0, 10, low_open=True)
    tj.check_args(cfg.train_sequences, cfg.cycles, cfg.period, cfg.switch_prob, cfg.noise)
    from ..models.pvrnn import PVRNN
    PVRNN(2, cfg.d_sizes, cfg.z_sizes, cfg.taus)  # the layer lists, checked by the model
    length = cfg.cycles * cfg.period
    if cfg.er_window + cfg.horizon > length:
        raise ValueError(f"{owner}: er_window + horizon must be <= cycles * period = {length}, "
                         f"got {cfg.er_window} + {cfg.horizon}")
    check_int(owner, "stride", cfg.stride, 1, cfg.er_window)
    return check_device(cfg.device)


def train_one(w: float, cfg: PVRNNConfig, x: torch.Tensor, device) -> dict:
    """One PV-RNN at meta-prior ``w`` -> {"model", "posterior", "losses", "seconds"}: full-batch
    Adam on the weights and the adaptive variables together, each with its own peak rate,
    cosine-decayed, gradients clipped to norm 1."""
    from ..models.pvrnn import PVRNN, AdaptiveVariables, loss
    from ..tools.schedule import warmup_cosine
    torch.manual_seed(cfg.seed)
    model = PVRNN(x.shape[-1], cfg.d_sizes, cfg.z_sizes, cfg.taus).to(device)
    posterior = AdaptiveVariables(model.z_sizes, x.shape[0], x.shape[1]).to(device)
    both = nn.ModuleList([model, posterior])  # one gradient clip over both
    opt = torch.optim.Adam([{"params": model.parameters(), "scale": 1.0},
                            {"params": posterior.parameters(),
                             "scale": cfg.posterior_lr / cfg.lr}])
    noise = torch.Generator().manual_seed(cfg.seed + 3)  # the same ε stream for every w
    start, losses = time.perf_counter(), []
    for step in range(cfg.steps):
        value = loss(model(posterior.window(), noise="sample", generator=noise), x, w)[0]
        if not torch.isfinite(value):
            raise FloatingPointError(f"PV-RNN w={w:g}: the loss became {value.item()}")
        lr = warmup_cosine(cfg.lr, step / cfg.steps, warmup=0.0, floor=0.05)
        for group in opt.param_groups:
            group["lr"] = lr * group["scale"]
        opt.zero_grad(set_to_none=True)
        value.backward()
        nn.utils.clip_grad_norm_(both.parameters(), 1.0)
        opt.step()
        losses.append(value.item())
    return {"model": model, "posterior": posterior, "losses": losses,
            "seconds": time.perf_counter() - start}


def evaluate(w: float, trained: dict, cfg: PVRNNConfig, x: torch.Tensor, test: torch.Tensor,
             example: int = 0) -> dict:
    """The training fit through the posterior, and held-out prediction with and without error
    regression (see the module docstring); the predictions for test sequence ``example`` are
    kept for the figure."""
    from ..models.pvrnn import loss
    from ..models.pvrnn_regression import error_regression, prior_prediction
    model = trained["model"].eval()
    with torch.no_grad():
        run = model(trained["posterior"].window(), noise="mean")
        _, parts = loss(run, x, w)
    er = error_regression(model, test, w, cfg.er_window, cfg.er_steps, cfg.er_lr, cfg.horizon,
                          cfg.stride)
    prior = prior_prediction(model, test, er["times"], cfg.horizon)
    # windows ending where a cycle (perhaps a new primitive) starts: the switch is unknowable
    boundary = torch.tensor([t % cfg.period == 0 for t in er["times"]])
    per_window = ((er["predictions"] - er["targets"]) ** 2).sum(-1).mean((1, 2))  # (n_windows,)
    first = [h[0] for h in er["window_loss"]]
    last = [h[-1] for h in er["window_loss"]]
    return {"train_prediction_error": parts["prediction"].item(),
            "train_kl": [k.item() for k in parts["kl"]],
            "prior_sigma": [s.mean().item() for s in run.prior_sigma],
            "er_prediction_error": er["error"], "prior_prediction_error": prior["error"],
            "er_error_at_cycle_starts": split_mean(per_window, boundary),
            "er_error_mid_cycle": split_mean(per_window, ~boundary),
            "er_window_loss_before": sum(first) / len(first),
            "er_window_loss_after": sum(last) / len(last),
            "final_train_loss": sum(trained["losses"][-20:]) / len(trained["losses"][-20:]),
            "seconds": round(trained["seconds"], 1),
            "example": {"er": er["predictions"][:, example].tolist(),
                        "prior": prior["predictions"][:, example].tolist(),
                        "times": er["times"]}}


def split_mean(values: torch.Tensor, mask: torch.Tensor):
    """The mean of ``values[mask]``, None when the mask is empty."""
    return values[mask].mean().item() if mask.any() else None


@torch.no_grad()
def prior_samples(model, steps: int, seed: int) -> torch.Tensor:
    """One trajectory generated from the prior with sampled z ``(T, O)``."""
    g = torch.Generator().manual_seed(seed)
    return model(None, steps=steps, noise="sample", generator=g).out[0].cpu()


def run(cfg: PVRNNConfig, console=None) -> dict:
    """Train and evaluate one PV-RNN per meta-prior; write ``results.json`` and ``pvrnn.png``."""
    device = check(cfg)
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(cfg.out)
    kw = dict(cycles=cfg.cycles, period=cfg.period, switch_prob=cfg.switch_prob, noise=cfg.noise)
    train = tj.make_trajectories(cfg.train_sequences, generator=torch.Generator().manual_seed(
        cfg.seed), **kw)
    test = tj.make_trajectories(cfg.test_sequences, generator=torch.Generator().manual_seed(
        cfg.seed + 1), **kw)
    x, xt = train["x"].to(device), test["x"].to(device)
    # the figure's example: the first held-out trajectory that switches primitive, if any
    switches = (test["primitive"][:, 1:] != test["primitive"][:, :-1]).any(1)
    example = int(switches.nonzero()[0, 0]) if switches.any() else 0
    started, results, samples = time.perf_counter(), {}, {}
    for w in cfg.ws:
        trained = train_one(w, cfg, x, device)
        r = evaluate(w, trained, cfg, x, xt, example)
        samples[f"{w:g}"] = prior_samples(trained["model"], x.shape[1], cfg.seed + 4).tolist()
        results[f"{w:g}"] = r
        say(f"w={w:<8g} train err {r['train_prediction_error']:.4f}  KL {r['train_kl']}  "
            f"prior σ {[round(s, 3) for s in r['prior_sigma']]}  held-out: error regression "
            f"{r['er_prediction_error']:.4f}, prior only {r['prior_prediction_error']:.4f}  "
            f"({r['seconds']:.0f} s)")
    best = min(results, key=lambda k: results[k]["er_prediction_error"])
    report = {"config": dataclasses.asdict(cfg), "results": results, "best_w": best,
              "primitives": list(tj.NAMES), "example": example,
              "example_trajectory": test["x"][example].tolist(),
              "example_primitives": test["primitive"][example].tolist(),
              "prior_samples": samples,
              "wall_seconds": round(time.perf_counter() - started, 1),
              "torch_threads": torch.get_num_threads()}
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    figure(report, out / "pvrnn.png")
    say(f"best held-out error-regression prediction at w={best}; results in "
        f"{out / 'results.json'}, figure {out / 'pvrnn.png'}")
    return report


def figure(report: dict, path: Path) -> None:
    """Drawn from the report alone. Top: one trajectory sampled from each w's prior. Bottom
    left: errors against w. Bottom right: a held-out trajectory's x coordinate with the best
    w's H-step predictions (dotted verticals: primitive switches)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    ws = list(results)
    fig = plt.figure(figsize=(9, 6))
    grid = fig.add_gridspec(2, max(2, len(ws)), height_ratios=[1, 1.5])
    for k, w in enumerate(ws):
        ax = fig.add_subplot(grid[0, k])
        xy = report["prior_samples"][w]
        ax.plot([p[0] for p in xy], [p[1] for p in xy], lw=0.7)
        ax.set_aspect("equal")
        ax.set_xlim(-1.2, 1.2)
        ax.set_ylim(-1.2, 1.2)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"prior sample, w={w}", fontsize=8)
    half = max(2, len(ws)) // 2
    ax = fig.add_subplot(grid[1, :half])
    values = [float(w) for w in ws]
    for key, label, style in (("er_prediction_error", "held-out, error regression", "o-"),
                              ("er_error_mid_cycle", "  the same, mid-cycle windows", "o--"),
                              ("prior_prediction_error", "held-out, prior only", "s-"),
                              ("train_prediction_error", "training fit (posterior)", "^-")):
        points = [(v, results[w][key]) for v, w in zip(values, ws) if results[w][key]]
        ax.plot(*zip(*points), style, label=label, ms=4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("meta-prior w")
    ax.set_ylabel("squared error per step")
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax = fig.add_subplot(grid[1, half:])
    best = report["best_w"]
    ex = results[best]["example"]
    ax.plot([p[0] for p in report["example_trajectory"]], color="gray", lw=0.8,
            label="observed x")
    ids = report["example_primitives"]
    for t in range(1, len(ids)):
        if ids[t] != ids[t - 1]:
            ax.axvline(t, color="k", lw=0.6, ls=":")
    for j, t in enumerate(ex["times"]):
        steps = range(t, t + len(ex["er"][j]))
        ax.plot(steps, [p[0] for p in ex["er"][j]], color="C0", lw=1.2,
                label="error regression" if j == 0 else None)
        ax.plot(steps, [p[0] for p in ex["prior"][j]], color="C2", lw=0.8, ls=":",
                label="prior only" if j == 0 else None)
    ax.set_xlabel("step")
    ax.set_title(f"held-out trajectory, {len(ex['er'][0])}-step predictions, w={best}",
                 fontsize=8)
    ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
