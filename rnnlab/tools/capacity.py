"""State capacity by passkey retrieval (Chen et al. 2024, "Stuffed Mamba", arXiv 2410.07145).

The paper trains Mamba-2 models of several state sizes on passkey retrieval at one context length,
tests them at growing lengths, and finds that the longest context whose 5-digit passkey is still
retrieved grows exponentially with the state size. Here, at laptop scale, on the random-token
haystack of ``rnnlab.tasks`` ``passkey`` (its text haystack has no CPU-sized equivalent):

- ``passkey_batch``: the task's samples with the needle moved to chosen depths (the paper's
  ``(i + 0.5) / n`` over n samples per length; the task itself draws the depth uniformly), and
  ``decode_passkey``, which reads the digits and the needle position back from the tokens;
- ``train_passkey``: one ``SequenceModel`` (the arena's model) trained at one short length;
- ``accuracy_by_length``: exact-match accuracy (all digits right, teacher forced: the same as
  the reference's greedy decoding) at each test length;
- ``longest_retrieved``: the longest tested length up to which every accuracy is >= a threshold;
- ``state_numbers``: the recurrent state size of a model (numbers per sequence, all layers);
- ``capacity_study`` runs all that per model spec, ``plot_capacity`` draws longest context
  against state size.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..checks import check_int, check_number
from ..tasks import recall
from ..tasks.base import generator

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def paper_depths(n: int) -> torch.Tensor:
    """The reference's needle depths for ``n`` samples: ``(i + 0.5) / n``, ``(n,)`` float64."""
    check_int("paper_depths", "n", n, 1)
    return (torch.arange(n, dtype=torch.float64) + 0.5) / n


def needle_start(task: recall.Passkey, length: int, depth: float) -> int:
    """The marker position for a needle at ``depth`` in [0, 1]: the task's valid starts are
    ``0 .. length - 2k - 1`` (the needle must end before the k-token query tail)."""
    last = length - 2 * task.digits - 1
    return min(int(depth * (last + 1)), last)


def passkey_batch(task: recall.Passkey, length: int, gen: torch.Generator,
                  depths: Optional[Sequence[float]] = None, batch: int = 1,
                  starts: Optional[Sequence[int]] = None) -> Batch:
    """``(inputs, targets, mask, starts)``: ``task.sample`` of ``len(depths)`` sequences (or
    ``len(starts)``, else ``batch``) with each needle (marker + k digits) moved to its depth
    (or to the marker position given in ``starts``); the cells it leaves get fresh filler
    tokens. Returned ``starts (B,)``: the marker positions."""
    if not isinstance(task, recall.Passkey):
        raise TypeError(f"passkey_batch: task must be the passkey task, got "
                        f"{type(task).__name__}")
    if depths is not None and starts is not None:
        raise ValueError("passkey_batch: give depths or starts, not both")
    k, last = task.digits, length - 2 * task.digits - 1
    if depths is not None:
        for d in depths:
            check_number("passkey_batch", "depth", float(d), 0, 1)
        starts = [needle_start(task, length, float(d)) for d in depths]
    n = batch if starts is None else len(starts)
    x, y, mask = task.sample(n, length, gen)
    if starts is None:
        return x, y, mask, (x == task.MARK).int().argmax(dim=1)
    for s in starts:
        check_int("passkey_batch", "start", s, 0, last)
    old = (x == task.MARK).int().argmax(dim=1)  # (B,)
    new = torch.tensor([int(s) for s in starts])  # (B,)
    offsets = torch.arange(k + 1)
    rows = torch.arange(n)[:, None]
    needle = x[rows, old[:, None] + offsets]  # (B, k + 1): marker + digits
    fill = torch.randint(task.FILL, task.vocab_size, (n, k + 1), generator=gen)
    x[rows, old[:, None] + offsets] = fill
    x[rows, new[:, None] + offsets] = needle
    return x, y, mask, new


def decode_passkey(task: recall.Passkey, inputs: torch.Tensor) -> Tuple[str, int]:
    """``(digits, marker position)`` of one sequence ``inputs (T,)``, read from the tokens: the
    k tokens after the one marker. Raises if there is not exactly one marker."""
    where = (inputs == task.MARK).nonzero().flatten().tolist()
    if len(where) != 1:
        raise ValueError(f"decode_passkey: expected one marker token {task.MARK}, found "
                         f"{len(where)}")
    p = where[0]
    return "".join(str(int(t)) for t in inputs[p + 1:p + 1 + task.digits]), p


@dataclass
class TrainConfig:
    """Training at one short length (flat; the CLI maps its options onto these fields)."""
    length: int = 64  # training context length (tokens)
    steps: int = 1500  # optimizer steps
    batch: int = 32  # sequences per step
    lr: float = 3e-3  # AdamW peak learning rate (cosine to 10%)
    d_model: int = 32  # model width
    n_layers: int = 2  # residual blocks
    seed: int = 0  # model init and data seed


def build(spec, task: recall.Passkey, cfg: TrainConfig, **extra) -> torch.nn.Module:
    """The arena's ``SequenceModel`` for ``spec`` (a ``rnnlab.arena.spec.ModelSpec``) on the
    passkey task, with cell options ``extra`` on top of the spec's (the mitigations)."""
    from ..models import SequenceModel
    return SequenceModel(task.vocab_size, task.n_outputs, d_model=cfg.d_model,
                         n_layers=cfg.n_layers, mixer=spec.mixer, kind=task.kind,
                         block=spec.block, **{**spec.options, **extra})


def train_passkey(spec, task: recall.Passkey, cfg: TrainConfig,
                  log: Optional[Callable[[int, float], None]] = None) -> torch.nn.Module:
    """Train the model of ``spec`` on passkey at ``cfg.length`` (random depths): AdamW,
    warm-up then cosine, gradient clipping at 1. Returns it in eval mode."""
    torch.manual_seed(cfg.seed)
    model = build(spec, task, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    gen = generator(cfg.seed, "train")
    warm = max(1, cfg.steps // 20)
    for step in range(cfg.steps):
        frac = min(1.0, (step + 1) / warm)
        cosine = 0.55 + 0.45 * math.cos(math.pi * max(0, step - warm) / max(1, cfg.steps - warm))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * frac * cosine
        x, y, mask = task.sample(cfg.batch, cfg.length, gen)
        loss = task.loss(model(x), y, mask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
            log(step, loss.item())
    return model.eval()


def accuracy_by_length(model: torch.nn.Module, task: recall.Passkey, lengths: Sequence[int],
                       examples: int = 64, seed: int = 0, chunk: int = 64) -> Dict[int, float]:
    """Exact-match passkey accuracy at each length, over ``examples`` needles at the paper's
    depths ``(i + 0.5) / examples`` (test stream of ``seed``; the same needles for every model)."""
    depths = paper_depths(examples).tolist()
    out = {}
    with torch.no_grad():
        for length in lengths:
            gen = generator(seed, "test")
            hits = 0.0
            for lo in range(0, examples, chunk):
                x, y, mask, _ = passkey_batch(task, length, gen, depths[lo:lo + chunk])
                hits += task.score(model(x), y, mask) * x.shape[0]
            out[int(length)] = hits / examples
    return out


def longest_retrieved(scores: Dict[int, float], threshold: float) -> int:
    """The longest tested length L such that accuracy >= ``threshold`` at every tested length
    <= L; 0 when the shortest already fails."""
    best = 0
    for length in sorted(scores):
        if scores[length] < threshold:
            break
        best = length
    return best


def state_numbers(model: torch.nn.Module) -> int:
    """Numbers in the recurrent state of one sequence, summed over the model's recurrent layers
    (the cell's own state: a window's ring is not counted)."""
    from ..nn import Recurrent
    total = 0
    for layer in model.modules():
        if isinstance(layer, Recurrent):
            shapes = layer.cell.state_shapes()
            if getattr(layer.cell, "window", 0):  # drop the ring leaves
                shapes = shapes[:len(shapes) - len(layer.cell.window_shapes())]
            total += sum(math.prod(s) for s in shapes)
    return total


@dataclass
class CapacityRecord:
    """One model of the study."""
    label: str  # the model spec as written
    mixer: str  # its cell
    state: int  # state numbers per sequence (all layers)
    scores: Dict[int, float]  # test length -> exact-match accuracy
    longest: int  # longest_retrieved at the study's threshold
    train_loss: float  # last logged training loss
    seconds: float  # wall time of training + testing (not a speed claim)
    params: int = 0  # trainable parameters
    extra: Dict[str, object] = field(default_factory=dict)


def capacity_study(specs: Sequence, task: recall.Passkey, cfg: TrainConfig,
                   lengths: Sequence[int], threshold: float = 0.9, examples: int = 64,
                   log: Optional[Callable[[str], None]] = None) -> List[CapacityRecord]:
    """Train each model spec at ``cfg.length`` and test it at ``lengths``."""
    check_number("capacity_study", "threshold", threshold, 0, 1)
    records = []
    for spec in specs:
        start = time.time()
        losses: List[float] = []
        model = train_passkey(spec, task, cfg, log=lambda s, v: losses.append(v))
        scores = accuracy_by_length(model, task, lengths, examples, seed=cfg.seed)
        rec = CapacityRecord(spec.label, spec.mixer, state_numbers(model), scores,
                             longest_retrieved(scores, threshold), losses[-1],
                             time.time() - start, sum(p.numel() for p in model.parameters()))
        records.append(rec)
        if log is not None:
            acc = " ".join(f"{k}:{v:.2f}" for k, v in scores.items())
            log(f"{rec.label}: state {rec.state}, loss {rec.train_loss:.3f}, longest "
                f"{rec.longest} ({acc})")
    return records


def plot_capacity(records: Sequence[CapacityRecord], path, train_length: int,
                  threshold: float, title: str = "") -> None:
    """Longest retrieved context against state size (log-log), one marker per cell family;
    the training length as a dashed line. A model below ``threshold`` already at the training
    length did not learn the task (no capacity to read): hollow, at the bottom. Writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    markers = dict(mamba2="o", gla="s", deltanet="^", gru="D", mamba="v", gated_deltanet="P")
    floor = train_length / 2
    for i, mixer in enumerate(dict.fromkeys(r.mixer for r in records)):
        rows = sorted((r for r in records if r.mixer == mixer), key=lambda r: r.state)
        learned = [r for r in rows if r.longest > 0]
        failed = [r for r in rows if r.longest == 0]
        m, c = markers.get(mixer, "x"), f"C{i}"
        ax.plot([r.state for r in learned], [r.longest for r in learned], m + "-", c=c,
                label=mixer)
        ax.plot([r.state for r in failed], [floor] * len(failed), m, mfc="none", c=c)
    ax.axhline(train_length, ls="--", c="gray", lw=1, label="train length")
    ax.axhline(floor, ls=":", c="gray", lw=0.8)
    ax.text(min(r.state for r in records), floor * 1.06,
            "hollow: below threshold already at the train length", fontsize=7, va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="state size (numbers per sequence, all layers)",
           ylabel=f"longest context, accuracy >= {threshold:g}")
    ax.legend(fontsize=8)
    for r in records:
        ks = sorted(r.scores)
        bx.plot(ks, [r.scores[k] for k in ks], marker=".", label=f"{r.label} ({r.state})")
    bx.axvline(train_length, ls="--", c="gray", lw=1)
    bx.set(xscale="log", xlabel="test context length", ylabel="passkey accuracy")
    bx.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
