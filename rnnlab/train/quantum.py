"""Quantum RNN recipe: pixel-by-pixel 0-vs-1 classification of scikit-learn's 8×8 digits.

Bausch's QRNN (``cells/quantum.py``, NeurIPS 2020) reads an image one pixel per step (the
paper: MNIST 0 vs 1, 12 qubits, > 95% test accuracy). Here: the bundled 8×8 digits 0 and 1,
average-pooled to ``side``×``side`` and binarised, pixels in row order; each pixel is written
into the input qubit (angle ``w x + b``, starting at ``w = pi``: a black or white pixel becomes
|0> or |1>), and after the last pixel the output qubit is measured: its distribution is the
class distribution, trained by its negative log-likelihood. Readable top to bottom: settings
checked, data split, one model trained with Adam (cosine decay), tested; ``results.json`` and
``quantum.png`` in ``out``.

Reported besides accuracy: the qubits (ancillas, input, state), the parameters, and the
post-selection success: each step conditions on every neuron's ancillas (and the reset input
register) ending in |0>; ``success_per_step`` is the geometric mean over steps and test images
of that step's probability, ``success_per_neuron`` its state_qubits-th root (what one neuron
costs a device in repetitions, without the amplitude amplification Bausch uses).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Dict, Tuple

import torch

from ..cells.quantum import MAX_QUBITS, ORDER_MAX
from ..checks import check_int, check_number
from ..tools.device import check_device
from ..tools.files import write_atomic

PAPER = {"dataset": "MNIST 0 vs 1 (pixel by pixel)", "qubits": 12, "test_accuracy": "> 0.95"}
QUBITS_MAX = 12  # the paper's budget


@dataclasses.dataclass
class QuantumConfig:
    side: int = 8  # image side after average pooling (divides 8): side**2 steps per image
    threshold: float = 0.5  # a pooled pixel (in [0, 1]) >= threshold is written as |1>
    state_qubits: int = 6  # the carried register (its first qubit is measured)
    input_qubits: int = 1  # the register each pixel is written into
    order: int = 2  # degree of the neurons' repeat-until-success circuits (= ancillas)
    epochs: int = 40  # passes over the training images
    batch: int = 32  # images per step
    lr: float = 0.01  # Adam peak learning rate (cosine decay)
    test_fraction: float = 0.25  # images held out for testing
    seed: int = 0  # split, model init and data order
    out: str = "results/quantum"  # results.json and quantum.png
    device: str = "cpu"  # torch device


def check(cfg: QuantumConfig) -> torch.device:
    """Every setting, each error naming its field, before anything is written."""
    owner = "QuantumConfig"
    check_int(owner, "side", cfg.side, 1, 8)
    if 8 % cfg.side:
        raise ValueError(f"{owner}: side must divide 8 (1, 2, 4 or 8), got {cfg.side!r}")
    check_number(owner, "threshold", cfg.threshold, 0, 1)
    check_int(owner, "state_qubits", cfg.state_qubits, 1, MAX_QUBITS)
    check_int(owner, "input_qubits", cfg.input_qubits, 1, MAX_QUBITS)
    check_int(owner, "order", cfg.order, 0, ORDER_MAX)
    total = cfg.state_qubits + cfg.input_qubits + cfg.order
    if total > QUBITS_MAX:
        raise ValueError(f"{owner}: state_qubits + input_qubits + order must be <= {QUBITS_MAX} "
                         f"qubits (the paper's budget), got {cfg.state_qubits} + "
                         f"{cfg.input_qubits} + {cfg.order} = {total}")
    for field in ("epochs", "batch"):
        check_int(owner, field, getattr(cfg, field), 1)
    check_int(owner, "seed", cfg.seed, 0)
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)
    check_number(owner, "test_fraction", cfg.test_fraction, 0, 1, low_open=True,
                 high_open=True)
    return check_device(cfg.device)


def load(cfg: QuantumConfig) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """``{"train"|"test": (pixels (N, side*side, 1) in {0, 1}, labels (N,))}``, digits 0 and 1."""
    from .moving_digits import load_digits_images
    images, labels = load_digits_images()  # (N, 8, 8) in [0, 1]
    keep = labels <= 1
    images, labels = images[keep], labels[keep]
    pooled = torch.nn.functional.avg_pool2d(images[:, None], 8 // cfg.side)[:, 0]  # (N, s, s)
    pixels = (pooled >= cfg.threshold).float().flatten(1).unsqueeze(-1)  # (N, s, s) -> (N, T, 1)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, round(cfg.test_fraction * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return {"train": (pixels[train], labels[train]), "test": (pixels[test], labels[test])}


def build(cfg: QuantumConfig, device: torch.device):
    """The layer: the ``quantum_rnn`` cell (read-out of 2 classes: one measured qubit) on the
    sequential engine, its pixel encoding starting at angle pi * x."""
    from ..cells import get
    from ..nn.recurrent import Recurrent
    torch.manual_seed(cfg.seed)
    cell = get("quantum_rnn", 1, 2, input_qubits=cfg.input_qubits,
               state_qubits=cfg.state_qubits, order=cfg.order)
    with torch.no_grad():
        cell.proj.weight.fill_(math.pi)
        cell.proj.bias.zero_()
    return Recurrent(cell, engine="sequential").to(device)


def nll(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``labels (B,)`` under the distributions ``(B, 2)``."""
    return -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()


@torch.no_grad()
def evaluate(layer, pixels: torch.Tensor, labels: torch.Tensor, device) -> dict:
    """Accuracy, loss, P(class 1) at every step ``(N, T)`` and the mean log post-selection
    success per step ``(N,)`` (the cell's ``trace``: the same steps as the sequential engine)."""
    y, _, success = layer.cell.trace(pixels.to(device))  # y: (N, T, 2), success: (N, T)
    probs = y[:, -1].cpu()
    return {"accuracy": (probs.argmax(-1) == labels).float().mean().item(),
            "loss": nll(probs, labels).item(), "p1": y[..., 1].cpu(),
            "log_success_per_step": success.log().mean(1).cpu()}


def train(layer, data, cfg: QuantumConfig, device, say) -> dict:
    """Adam over ``epochs`` passes; the loss per step and the test accuracy per epoch."""
    from ..tools.schedule import warmup_cosine
    opt = torch.optim.Adam(layer.parameters(), lr=cfg.lr)
    x, labels = data["train"]
    stream = torch.Generator().manual_seed(cfg.seed + 1)
    per_epoch = math.ceil(len(labels) / cfg.batch)
    total, step, curve = cfg.epochs * per_epoch, 0, {"loss": [], "test_accuracy": []}
    for epoch in range(cfg.epochs):
        for idx in torch.randperm(len(labels), generator=stream).split(cfg.batch):
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(cfg.lr, step / total, warmup=0.0, floor=0.05)
            y, _ = layer(x[idx].to(device))  # (b, T, 2)
            loss = nll(y[:, -1].cpu(), labels[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"quantum: the loss became {loss.item()}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve["loss"].append(loss.item())
            step += 1
        acc = evaluate(layer, *data["test"], device)["accuracy"]
        curve["test_accuracy"].append(acc)
        say(f"epoch {epoch + 1:3d}  loss {sum(curve['loss'][-per_epoch:]) / per_epoch:.4f}  "
            f"test accuracy {acc:.3f}")
    return curve


def run(cfg: QuantumConfig, console=None) -> dict:
    """Train and test; write ``results.json`` and ``quantum.png`` in ``out``."""
    device = check(cfg)
    say = console.print if console is not None else (lambda *a, **k: None)
    out = Path(cfg.out)
    data = load(cfg)
    layer = build(cfg, device)
    cell = layer.cell
    say(f"quantum RNN: {cell.qubits} qubits (ancillas {cell.order}, input {cell.input_qubits}, "
        f"state {cell.state_qubits}), {sum(p.numel() for p in layer.parameters())} parameters, "
        f"{len(data['train'][1])} training / {len(data['test'][1])} test images of "
        f"{cfg.side}x{cfg.side} pixels")
    started = time.perf_counter()
    curve = train(layer, data, cfg, device, say)
    seconds = time.perf_counter() - started
    test = evaluate(layer, *data["test"], device)
    train_acc = evaluate(layer, *data["train"], device)["accuracy"]
    per_step = test["log_success_per_step"].mean().exp().item()
    report = {
        "config": dataclasses.asdict(cfg), "paper": PAPER,
        "test_accuracy": test["accuracy"], "train_accuracy": train_acc,
        "test_loss": test["loss"], "test_images": len(data["test"][1]),
        "train_images": len(data["train"][1]), "steps_per_image": cfg.side ** 2,
        "qubits": {"total": cell.qubits, "ancillas": cell.order, "input": cell.input_qubits,
                   "state": cell.state_qubits, "measured": cell.output_qubits},
        "parameters": sum(p.numel() for p in layer.parameters()),
        "success_per_step": per_step, "success_per_neuron": per_step ** (1 / cell.state_qubits),
        "curve": curve, "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads()}
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    figure(report, test, data["test"][1], out / "quantum.png")
    say(f"test accuracy {report['test_accuracy']:.3f} (paper: > 0.95 on MNIST 0 vs 1, 12 qubits)"
        f"; post-selection success per step {per_step:.3f}, per neuron "
        f"{report['success_per_neuron']:.3f}; results in {out / 'results.json'}")
    return report


def figure(report: dict, test: dict, labels: torch.Tensor, path: Path) -> None:
    """Learning curves, and the measured P(class 1) over the pixels of the test images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    curve = report["curve"]
    per_epoch = len(curve["loss"]) // len(curve["test_accuracy"])
    epochs = [(i + 1) / per_epoch for i in range(len(curve["loss"]))]
    left.plot(epochs, curve["loss"], lw=0.7, color="tab:blue", label="training NLL (per step)")
    left.set_xlabel("epoch")
    left.set_ylabel("NLL")
    twin = left.twinx()
    twin.plot(range(1, len(curve["test_accuracy"]) + 1), curve["test_accuracy"], "o-", ms=3,
              color="tab:red", label="test accuracy")
    twin.set_ylim(0.4, 1.02)
    twin.set_ylabel("test accuracy", color="tab:red")
    left.set_title(f"{report['qubits']['total']} qubits, {report['parameters']} parameters: "
                   f"test {report['test_accuracy']:.3f}", fontsize=9)
    steps = torch.arange(1, test["p1"].shape[1] + 1)
    for digit, color in ((0, "tab:green"), (1, "tab:purple")):
        p = test["p1"][labels == digit]  # (n, T)
        right.plot(steps, p.T, color=color, lw=0.3, alpha=0.3)
        right.plot(steps, p.mean(0), color=color, lw=2, label=f"test digits {digit} (mean)")
    right.axhline(0.5, color="gray", ls=":", lw=0.8)
    right.set_xlabel("pixel (step)")
    right.set_ylabel("P(measured class = 1)")
    right.set_title(f"measured at every step; post-selection success per step "
                    f"{report['success_per_step']:.2g}", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
