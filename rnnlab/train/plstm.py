"""pLSTM recipe: arrow-pointing extrapolation (Pöppel et al. 2025,
https://arxiv.org/abs/2506.11997). Train on small images, test on larger ones.

Three per-pixel classifiers of one shape (embed each pixel, ``layers`` residual mixer + MLP
blocks, mean-pool, a linear head), different mixers:

- ``plstm``: the 2-D pLSTM (``models/plstm2d.py``), P-mode, four orientations;
  ``plstm_d``: the same in D-mode;
- ``vit``: ViT-style self-attention over the pixels with 2-D sine-cosine positions (they exist
  at every size, so the larger test images need no interpolation);
- ``rowscan``: a 1-D linear cell (GLA) over the pixels in raster order, forwards and backwards.

Every model sees the same training images in the same order. ``out/results.json`` holds the
test accuracy per model and test size; ``out/plstm.png`` plots them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import List

import torch
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..models.plstm2d import FORMS
from ..tools.files import write_atomic
from .arrows import arrows

MODELS = ("plstm", "plstm_d", "vit", "rowscan")


@dataclasses.dataclass
class PLSTMConfig:
    models: List[str] = dataclasses.field(default_factory=lambda: ["plstm", "vit", "rowscan"])
    train_size: int = 8  # side of the training images
    test_sizes: List[int] = dataclasses.field(default_factory=lambda: [8, 12, 16])
    d_model: int = 16  # pixel-feature width
    heads: int = 2
    layers: int = 2
    train_images: int = 4000  # fixed training set
    test_images: int = 200  # per test size
    steps: int = 2500  # optimizer steps per model
    batch: int = 32
    lr: float = 3e-3  # AdamW peak (cosine decay)
    form: str = "wavefront"  # pLSTM's exact form (models/plstm2d.FORMS); the same numbers
    seed: int = 0
    out: str = "results/plstm"


def check(cfg: PLSTMConfig) -> None:
    """Every setting, each error naming its field, before anything is written."""
    owner = "PLSTMConfig"
    if not cfg.models or not cfg.test_sizes:
        raise ValueError(f"{owner}: models and test_sizes must be non-empty, got "
                         f"{cfg.models!r} and {cfg.test_sizes!r}")
    for name in cfg.models:
        check_choice(owner, "models", name, MODELS)
    for size in [cfg.train_size, *cfg.test_sizes]:
        check_int(owner, "train_size/test_sizes", size, 4, 64)
    for field in ("d_model", "heads", "layers", "train_images", "test_images", "steps",
                  "batch"):
        check_int(owner, field, getattr(cfg, field), 1)
    if cfg.d_model % cfg.heads:
        raise ValueError(f"{owner}: heads must divide d_model={cfg.d_model}, got {cfg.heads!r}")
    check_int(owner, "seed", cfg.seed, 0)
    check_choice(owner, "form", cfg.form, tuple(FORMS))
    check_number(owner, "lr", cfg.lr, 0, 1, low_open=True)


def sincos_2d(X: int, Y: int, dim: int) -> torch.Tensor:
    """Fixed 2-D positions ``(X, Y, dim)``: half the channels encode the row, half the column."""
    quarter = max(1, dim // 4)
    freq = 1.0 / 100 ** (torch.arange(quarter) / quarter)  # (quarter,)

    def enc(n):
        a = torch.arange(n)[:, None] * freq  # (n, quarter)
        return torch.cat([a.sin(), a.cos()], -1)  # (n, 2 quarter)

    pos = torch.cat([enc(X)[:, None].expand(X, Y, -1), enc(Y)[None].expand(X, Y, -1)], -1)
    return nn.functional.pad(pos, (0, dim - pos.shape[-1]))  # (X, Y, dim)


class Attention(nn.Module):
    """Self-attention over the pixels of ``(B, X, Y, dim)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        B, X, Y, D = x.shape
        t = x.reshape(B, X * Y, D)  # (B, X, Y, D) -> (B, XY, D)
        return self.attn(t, t, t, need_weights=False)[0].view(B, X, Y, D)


class RowScan(nn.Module):
    """A 1-D cell over the pixels in raster order, forwards plus backwards (Vision-LSTM's
    mLSTM by default, as the paper's row-scanning baseline ViL)."""

    def __init__(self, dim: int, heads: int, cell: str = "mlstm"):
        super().__init__()
        from .. import Recurrent
        self.fwd = Recurrent(cell, input_size=dim, hidden_size=dim, heads=heads, engine="scan")
        self.bwd = Recurrent(cell, input_size=dim, hidden_size=dim, heads=heads, engine="scan")

    def forward(self, x):
        B, X, Y, D = x.shape
        t = x.reshape(B, X * Y, D)  # raster order: (B, XY, D)
        y = self.fwd(t)[0] + self.bwd(t.flip(1))[0].flip(1)
        return y.view(B, X, Y, D)


def mixer(name: str, cfg: PLSTMConfig) -> nn.Module:
    from ..models.plstm2d import PLSTM2D
    if name in ("plstm", "plstm_d"):
        # K = V / 2 keeps the per-edge states (the cost of every sweep step) small
        return PLSTM2D(cfg.d_model, heads=cfg.heads, key_dim=max(1, cfg.d_model // cfg.heads // 2),
                       mode="P" if name == "plstm" else "D", form=cfg.form)
    if name == "vit":
        return Attention(cfg.d_model, cfg.heads)
    return RowScan(cfg.d_model, cfg.heads)


class GridClassifier(nn.Module):
    """Embed pixels, residual (mixer, MLP) blocks, mean-pool, a linear head."""

    def __init__(self, name: str, cfg: PLSTMConfig, channels: int = 3, classes: int = 2):
        super().__init__()
        D = cfg.d_model
        self.positions = name in ("vit", "rowscan")  # a raster scan alone loses the 2-D geometry
        self.embed = nn.Linear(channels, D)
        self.mixers = nn.ModuleList(mixer(name, cfg) for _ in range(cfg.layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(D), nn.Linear(D, 2 * D), nn.GELU(),
                                                nn.Linear(2 * D, D)) for _ in range(cfg.layers))
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(cfg.layers))
        self.head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, classes))

    def forward(self, img):
        x = self.embed(img.permute(0, 2, 3, 1))  # (B, C, X, Y) -> (B, X, Y, D)
        if self.positions:
            x = x + sincos_2d(x.shape[1], x.shape[2], x.shape[3]).to(x)
        for norm, mix, mlp in zip(self.norms, self.mixers, self.mlps):
            x = x + mix(norm(x))
            x = x + mlp(x)
        return self.head(x.mean((1, 2)))  # (B, classes)


@torch.no_grad()
def accuracy(model: nn.Module, images, labels, batch: int = 100) -> float:
    model.eval()
    hits = sum((model(images[i:i + batch]).argmax(-1) == labels[i:i + batch]).sum().item()
               for i in range(0, len(images), batch))
    model.train()
    return hits / len(images)


def train_one(name: str, cfg: PLSTMConfig, train, tests) -> dict:
    torch.manual_seed(cfg.seed)
    model = GridClassifier(name, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    order = torch.Generator().manual_seed(cfg.seed)  # the same batches for every model
    images, labels = train
    start, losses = time.time(), []
    for _ in range(cfg.steps):
        idx = torch.randint(len(images), (cfg.batch,), generator=order)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    acc = {str(size): accuracy(model, *data) for size, data in tests.items()}
    return dict(accuracy=acc, final_loss=sum(losses[-20:]) / min(20, len(losses)),
                parameters=sum(p.numel() for p in model.parameters()),
                seconds=round(time.time() - start, 1))


def run(cfg: PLSTMConfig, say=print) -> dict:
    """Train every model; write ``results.json`` and ``plstm.png`` in ``cfg.out``."""
    check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train = arrows(cfg.train_images, cfg.train_size, cfg.seed)
    tests = {s: arrows(cfg.test_images, s, cfg.seed + 1000 + s) for s in cfg.test_sizes}
    results = {}
    for name in cfg.models:
        results[name] = train_one(name, cfg, train, tests)
        say(f"{name}: " + ", ".join(f"{s}x{s} {a:.3f}"
                                    for s, a in results[name]["accuracy"].items())
            + f" ({results[name]['seconds']} s)")
    report = dict(config=dataclasses.asdict(cfg), results=results)
    write_atomic(out / "results.json", json.dumps(report, indent=2) + "\n")
    figure(report, out / "plstm.png")
    say(f"results in {out / 'results.json'}, figure {out / 'plstm.png'}")
    return report


def figure(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg = report["config"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, res in report["results"].items():
        sizes = [int(s) for s in res["accuracy"]]
        ax.plot(sizes, list(res["accuracy"].values()), marker="o", label=name)
    ax.axvline(cfg["train_size"], color="grey", ls=":", lw=1)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("test image side (training: dotted)")
    ax.set_ylabel("accuracy")
    ax.set_title("Arrow pointing: extrapolation to larger images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
