"""``rnnlab train recoding``: the character LM of ``rnnlab train lm`` with and without recoding
(``rnnlab.nn.recoding``, Ulmer et al. 2021), readable top to bottom.

Same corpus, split, model, init, data order and step budget as ``train lm`` (its ``LMConfig``,
``load_data``, ``build``, ``train_loop`` and ``bits_per_char`` are called, not copied). Then:

1. train the plain LM (``train lm``'s loop) and measure held-out bits/char without recoding and
   with test-time recoding, per error signal, over a grid of step sizes (the sensitivity);
2. per error signal, train the same LM (same seed, same steps) with recoding in the forward
   pass (the loss backpropagates through the recoding step) and measure it with and without
   recoding.

``LMCell`` makes the LM's stack of recurrent blocks one cell whose state is every layer's state,
so ``Recoding`` recodes all layers at once (the paper recodes every layer's h and c) and the
prediction of a step is the LM's own head. Writes ``metrics.json`` and ``recoding.png`` to
``out``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from rich.console import Console
from torch import nn

from ..cells.base import as_tuple
from ..checks import check_choice
from ..models.block import RecurrentMixer
from ..models.lm import LM
from ..nn.recoding import SIGNALS, Recoding
from ..tools.files import write_atomic
from ..tools.schedule import lr_at, optimizer_step
from . import lm as _lm
from . import options as _options
from .rundir import warner
from .text import windows

EVAL_SEED = 12345  # bits_per_char's: both measure the same validation windows


@dataclasses.dataclass
class RecodingConfig:
    data: Optional[str] = None  # text file or folder; None: the Python stdlib's sources
    max_chars: int = 1_000_000  # characters read from the corpus
    cell: str = "lstm"  # a registered cell (the paper: LSTM)
    d_model: int = 64  # width
    n_layers: int = 1  # LM blocks (the paper: 2 LSTM layers; 1 keeps the default run short)
    length: int = 32  # characters per training window
    batch: int = 64  # windows per step
    lr: float = 3e-3  # AdamW peak learning rate (warm-up, cosine over `steps`)
    steps: int = 300  # step budget of every model
    signals: Tuple[str, ...] = SIGNALS  # error signals compared
    step_size: float = 1.0  # recoding step when training with recoding (and evaluating it)
    step_sizes: Tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)  # test-time sweep
    recoding_steps: int = 1  # gradient steps per time step
    create_graph: bool = True  # backpropagate through the recoding gradient (second order)
    redecode: bool = True  # label-free signals: predict from the recoded state (paper's code)
    dropout: float = 0.3  # MC-dropout rate on the LM's last hidden vector
    samples: int = 8  # MC-dropout masks
    eval_windows: int = 32  # validation windows (length 4 * `length`)
    plain_seeds: int = 3  # plain LMs trained (seeds seed, seed+1, ...): the seed-to-seed spread
    seed: int = 0  # model init and data order (every model: the same)
    out: str = "results/recoding"  # metrics.json, recoding.png
    device: str = "cpu"  # torch device


def check_config(cfg: RecodingConfig) -> torch.device:
    """Raise naming the option for any value out of range; the device, once checked."""
    device = _lm.check_config(lm_config(cfg))
    for field in ("recoding_steps", "samples", "plain_seeds"):
        _options.integer(cfg, field, 2 if field == "samples" else 1)
    _options.number(cfg, "step_size")
    _options.number(cfg, "dropout", high=0.99)
    for field, values in (("signals", cfg.signals), ("step_sizes", cfg.step_sizes)):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{_options.option(field)}: expected a non-empty list, "
                             f"got {values!r}")
    for signal in cfg.signals:
        check_choice(None, "--signals", signal, SIGNALS)
    for size in cfg.step_sizes:
        if not isinstance(size, (int, float)) or not 0 <= size < math.inf:
            raise ValueError(f"--step-sizes: expected finite numbers >= 0, got {size!r}")
    for field in ("create_graph", "redecode"):
        if not isinstance(getattr(cfg, field), bool):
            raise TypeError(f"{_options.option(field)}: expected a bool, got "
                            f"{getattr(cfg, field)!r}")
    return device


def lm_config(cfg: RecodingConfig) -> _lm.LMConfig:
    """``train lm``'s settings for this run: one validation at the end, no time budget."""
    return _lm.LMConfig(data=cfg.data, max_chars=cfg.max_chars, cell=cfg.cell,
                        d_model=cfg.d_model, n_layers=cfg.n_layers, length=cfg.length,
                        batch=cfg.batch, lr=cfg.lr, steps=cfg.steps, minutes=math.inf,
                        eval_every=cfg.steps, eval_windows=cfg.eval_windows, seed=cfg.seed,
                        out=cfg.out, device=cfg.device)


# ---- the LM as one cell -------------------------------------------------------------------------

class LMCell(nn.Module):
    """An ``LM`` of recurrent default blocks (no conv, FSMN or attention) as one cell: input
    ids ``(B, T)``, state = every layer's state tensors in one tuple, readout = the residual
    stream after the last block ``(B, D)``. ``LMHead`` maps it to logits."""

    def __init__(self, lm: LM):
        super().__init__()
        for i, block in enumerate(lm.blocks):
            if not isinstance(block.mixer, RecurrentMixer) or block.conv is not None \
                    or block.fsmn is not None or block.post_norm:
                raise ValueError(f"LMCell: block {i} is not a plain recurrent block (attention, "
                                 f"conv, FSMN or published blocks hold states that are not the "
                                 f"cell's); recoding needs an LM of recurrent default blocks")
        self.lm = lm
        self.sizes = [len(as_tuple(b.mixer.rnn.cell.init_state(1))) for b in lm.blocks]

    def project(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(ids)  # (B, T) -> (B, T, D)

    def init_state(self, batch: int, dtype=torch.float32, device=None) -> tuple:
        return tuple(t for b in self.lm.blocks
                     for t in as_tuple(b.mixer.rnn.cell.init_state(batch, dtype, device)))

    def _layers(self, state: tuple) -> List:
        """The flat state split per layer (a tensor, or a tuple for cells like the LSTM)."""
        out, i = [], 0
        for n in self.sizes:
            out.append(state[i] if n == 1 else tuple(state[i:i + n]))
            i += n
        return out

    def _block(self, block, x: torch.Tensor, s, new: bool):
        """One block on the residual stream ``x (B, D)``: its cell steps from ``s`` (``new``)
        or reads out the given ``s``; returns ``(x, s)``."""
        cell = block.mixer.rnn.cell
        u = cell.project(block.norm(x)[:, None])[:, 0]  # (B, D) -> (B, 1, P) -> (B, P)
        if new:
            s = cell.step(u, s)
        x = x + block.mixer.proj(cell.readout(s, u))
        if block.mlp is not None:
            x = x + block.mlp(block.mlp_norm(x))
        return x, s

    def step_readout(self, e_t: torch.Tensor, state: tuple):
        x, new = e_t, []
        for block, s in zip(self.lm.blocks, self._layers(state)):
            x, s = self._block(block, x, s, True)
            new.extend(as_tuple(s))
        return tuple(new), x

    def step(self, e_t: torch.Tensor, state: tuple) -> tuple:
        return self.step_readout(e_t, state)[0]

    def readout(self, state: tuple, e_t: torch.Tensor) -> torch.Tensor:
        x = e_t
        for block, s in zip(self.lm.blocks, self._layers(state)):
            x = self._block(block, x, s, False)[0]
        return x


class LMHead(nn.Module):
    """The LM's final norm and (tied) output layer: ``(B, D) -> (B, V)``."""

    def __init__(self, lm: LM):
        super().__init__()
        self.norm, self.out = lm.norm, lm.head

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(y))


def recoded(lm: LM, cfg: RecodingConfig, signal: str, step_size: float,
            redecode: Optional[bool] = None) -> Recoding:
    """``lm`` with ``signal`` recoding of ``step_size`` (``redecode``: ``cfg.redecode``)."""
    return Recoding(LMCell(lm), LMHead(lm), signal=signal, step_size=step_size,
                    steps=cfg.recoding_steps, create_graph=cfg.create_graph,
                    redecode=cfg.redecode if redecode is None else redecode,
                    dropout=cfg.dropout, samples=cfg.samples)


# ---- measuring and training ---------------------------------------------------------------------

def recoded_bpc(model: Recoding, data: torch.Tensor, cfg: RecodingConfig) -> dict:
    """Bits/char on the validation windows ``bits_per_char`` reads, with recoding; and the
    mean error signal before and after the recoding step."""
    gen = torch.Generator().manual_seed(EVAL_SEED)
    torch.manual_seed(cfg.seed)  # MC-dropout masks: the same in every measurement
    model.eval()
    total, count, before, after = 0.0, 0, [], []
    with torch.no_grad():
        for start in range(0, cfg.eval_windows, 16):
            x, y = windows(data, min(16, cfg.eval_windows - start), 4 * cfg.length, gen)
            x, y = x.to(cfg.device), y.to(cfg.device)
            logits, _ = model(x, targets=y)
            total += nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                                 reduction="sum").item()
            count += y.numel()
            before.append(model.last_delta)
            after.append(model.last_delta_after)
    model.train()
    return {"bpc": total / count / math.log(2), "delta_before": sum(before) / len(before),
            "delta_after": sum(after) / len(after)}


def train_plain(lm: LM, corpus, cfg: RecodingConfig, console: Console) -> float:
    """``train lm``'s own loop for ``cfg.steps`` steps; returns the training seconds."""
    lcfg = lm_config(cfg)
    opt = torch.optim.AdamW(lm.parameters(), lr=lcfg.lr, weight_decay=lcfg.weight_decay)
    gens = {"data": torch.Generator().manual_seed(cfg.seed)}
    meta = _lm.train_loop(lm, opt, gens, corpus, lcfg, {"step": 0, "seconds": 0.0,
                                                          "history": []},
                          console, lambda m: None)
    return meta["seconds"]


def train_recoded(lm: LM, corpus, cfg: RecodingConfig, signal: str) -> float:
    """The same loop (data, optimizer, schedule, clipping) with recoding in the forward pass:
    the loss is the cross-entropy of the logits ``Recoding`` returns, backpropagated through
    the recoded states. Returns the training seconds."""
    lcfg = lm_config(cfg)
    model = recoded(lm, cfg, signal, cfg.step_size)
    opt = torch.optim.AdamW(lm.parameters(), lr=lcfg.lr, weight_decay=lcfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for step in range(cfg.steps):
        x, y = windows(corpus.train, cfg.batch, cfg.length, gen)
        x, y = x.to(cfg.device), y.to(cfg.device)
        logits, _ = model(x, targets=y)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train recoding: the loss is {loss.item()} at step {step} "
                                     f"with {signal} recoding; try a smaller --step-size")
        optimizer_step(lm, opt, loss, lr_at(cfg.lr, step, cfg.steps), 1.0)
    return time.perf_counter() - start


def fresh(cfg: RecodingConfig, vocab: int, device: torch.device) -> LM:
    """``train lm``'s LM at the run's seed: every model starts from the same weights."""
    lm = _lm.build(lm_config(cfg), vocab, device)
    LMCell(lm)  # refuses a model recoding cannot run, before any training
    return lm


def test_time_sweep(lm: LM, corpus, cfg: RecodingConfig, console: Console) -> dict:
    """Held-out bits/char of the plain ``lm`` recoded at test time, per signal and step size;
    a label-free signal also as ``"<signal>, state only"`` (no re-decoding: the recoded state
    changes only the later predictions), when ``cfg.redecode``."""
    variants = [(s, None, s) for s in cfg.signals]
    if cfg.redecode:
        variants += [(s, False, f"{s}, state only") for s in cfg.signals if s != "surprisal"]
    sweep = {}
    for signal, redecode, name in variants:
        sweep[name] = [{"step_size": a, **recoded_bpc(recoded(lm, cfg, signal, a, redecode),
                                                      corpus.val, cfg)}
                       for a in cfg.step_sizes]
        console.print(f"  test-time {name}: " + ", ".join(
            f"a={r['step_size']:g} {r['bpc']:.4f}" for r in sweep[name]), markup=False)
    return sweep


def seed_spread(corpus, cfg: RecodingConfig, console: Console) -> List[float]:
    """Held-out bits/char of plain LMs at the seeds after ``cfg.seed`` (init and data order):
    how far apart runs differing only in their seed land, to weigh a gain against."""
    out = []
    for seed in range(cfg.seed + 1, cfg.seed + cfg.plain_seeds):
        other = dataclasses.replace(cfg, seed=seed)
        lm = fresh(other, len(corpus.vocab), torch.device(cfg.device))
        train_plain(lm, corpus, other, console)
        out.append(_lm.bits_per_char(lm, corpus.val, lm_config(other), cfg.eval_windows))
    if out:
        console.print(f"plain LM at seeds {cfg.seed + 1}..{cfg.seed + cfg.plain_seeds - 1}: "
                      + ", ".join(f"{b:.4f}" for b in out), markup=False)
    return out


def run(cfg: RecodingConfig, console: Console) -> dict:
    """Train and measure every model (module docstring); returns and writes the metrics."""
    device = check_config(cfg)
    corpus = _lm.load_data(lm_config(cfg), warner(console))
    vocab = len(corpus.vocab)
    out = Path(cfg.out)
    lm = fresh(cfg, vocab, device)
    console.print(f"corpus: {corpus.source}, {len(corpus.text):,} characters, vocabulary "
                  f"{vocab}; {cfg.cell} LM, {cfg.n_layers} x {cfg.d_model}, {cfg.steps} steps "
                  f"per model", markup=False)
    seconds = {"plain": train_plain(lm, corpus, cfg, console)}
    plain = _lm.bits_per_char(lm, corpus.val, lm_config(cfg), cfg.eval_windows)
    console.print(f"plain LM: {plain:.4f} bits/char", markup=False)
    zero = recoded_bpc(recoded(lm, cfg, cfg.signals[0], 0.0), corpus.val, cfg)["bpc"]
    sweep = test_time_sweep(lm, corpus, cfg, console)
    others = seed_spread(corpus, cfg, console)
    trained = {}
    for signal in cfg.signals:  # trained with recoding: same seed, steps, data
        model = fresh(cfg, vocab, device)
        seconds[signal] = train_recoded(model, corpus, cfg, signal)
        with_rec = recoded_bpc(recoded(model, cfg, signal, cfg.step_size), corpus.val, cfg)
        without = _lm.bits_per_char(model, corpus.val, lm_config(cfg), cfg.eval_windows)
        trained[signal] = {"bpc_with_recoding": with_rec["bpc"], "bpc_without": without,
                           "delta_before": with_rec["delta_before"],
                           "delta_after": with_rec["delta_after"]}
        console.print(f"trained with {signal} recoding (a={cfg.step_size:g}): "
                      f"{with_rec['bpc']:.4f} bits/char with recoding, {without:.4f} without",
                      markup=False)
    config = {**dataclasses.asdict(cfg), "signals": list(cfg.signals),
              "step_sizes": list(cfg.step_sizes)}
    result = {"corpus": corpus.source, "vocab": vocab, "val_chars": len(corpus.val),
              "eval_chars": cfg.eval_windows * 4 * cfg.length,
              "parameters": sum(p.numel() for p in lm.parameters()),
              "plain_bpc": plain, "plain_bpc_via_recoding_step0": zero,
              "plain_bpc_other_seeds": others,
              "test_time_sweep": sweep, "trained_with_recoding": trained,
              "train_seconds": {k: round(v, 1) for k, v in seconds.items()}, "config": config}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "metrics.json", json.dumps(result, indent=1))
    plot(result, out / "recoding.png")
    console.print(f"wrote {out}/{{metrics.json, recoding.png}}", markup=False)
    return result


def plot(result: dict, path: Path) -> None:
    """Left: test-time step-size sensitivity of the plain LM; right: plain vs trained with
    recoding, each measured with and without it."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=90)
    plain = result["plain_bpc"]
    for signal, rows in result["test_time_sweep"].items():
        left.plot([r["step_size"] for r in rows], [r["bpc"] for r in rows], marker="o",
                  ls=":" if "state only" in signal else "-", label=signal)
    left.axhline(plain, color="k", ls="--", lw=1, label="no recoding")
    left.set_xscale("log")
    low = min(r["bpc"] for rows in result["test_time_sweep"].values() for r in rows)
    left.set_ylim(min(low, plain) - 0.02, plain + 0.6)  # large steps go far off: clipped
    left.set_xlabel("recoding step size (test time only)")
    left.set_ylabel("held-out bits per character")
    left.set_title("plain LM, recoded at test time")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    signals = list(result["trained_with_recoding"])
    rows = [result["trained_with_recoding"][s] for s in signals]
    seeds = [plain] + result.get("plain_bpc_other_seeds", [])
    right.axhspan(min(seeds), max(seeds), color="0.85", label=f"plain LM, {len(seeds)} seeds")
    right.axhline(plain, color="k", ls="--", lw=1, label="plain LM, same seed")
    bars = right.bar(range(len(signals)), [r["bpc_with_recoding"] for r in rows], 0.5,
                     color="tab:orange", label="evaluated with recoding")
    for bar, r in zip(bars, rows):  # without recoding these models are far off: as text
        right.annotate(f"without: {r['bpc_without']:.2f}", (bar.get_x() + 0.25,
                       bar.get_height()), ha="center", va="bottom", fontsize=8)
    values = seeds + [r["bpc_with_recoding"] for r in rows]
    right.set_ylim(min(values) - 0.03, max(values) + 0.03)
    right.set_xticks(range(len(signals)), signals)
    right.set_ylabel("held-out bits per character")
    right.set_title(f"trained with recoding (a={result['config']['step_size']:g}), same seed")
    right.legend(fontsize=8, loc="upper left")
    right.grid(alpha=0.3, axis="y")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
