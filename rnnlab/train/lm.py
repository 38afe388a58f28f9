"""``rnnlab train lm``: a character-level language model on a text file, readable top to bottom.

Check every setting, load the text (default: the Python standard library's sources), build the
character vocabulary, split off the last ``val_fraction`` for validation, check the model fits in
memory; then take the output directory (``rundir.claim``: refused when it holds a run of other
settings or data, locked against a second writer) and train ``rnnlab.models.LM`` on random
windows with AdamW, resuming from its checkpoint. Report validation bits per character, write a
loss-curve PNG, the checkpoint, the final model (``save_pretrained``) and metrics JSON, and print
samples.

Under ``torchrun --nproc-per-node N`` the same command trains data-parallel (DDP, or FSDP2 with
``fsdp``; see ``distributed``): each rank takes its slice of the same global batch, so the run
equals a single-process one; rank 0 alone prints and writes, and the checkpoint is the
single-process format (a run may resume with another number of processes).

The learning rate (warm-up, then cosine) is a function of the step and the step budget only, so
a seeded run is bit-reproducible. A time budget (``minutes``) only stops training early: with
both budgets, the schedule runs over the step budget, and a run the clock stops has not
finished its decay.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import List, Optional

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..models.block import check_mixer
from ..models.lm import LM
from ..tools import checkpoint
from ..tools.device import check_device
from ..tools.files import write_atomic
from ..tools.schedule import lr_at, optimizer_step
from . import distributed
from . import options as _options
from .rundir import claim, fingerprint, record, save_model, warner
from .text import Vocab, load_text, undecodable_share, windows


@dataclasses.dataclass
class LMConfig:
    data: Optional[str] = None  # text file or folder; None: the Python stdlib's sources
    max_chars: int = 3_000_000  # characters read from the corpus
    val_fraction: float = 0.05  # the last part of the text, held out; in (0, 0.5]
    cell: str = "gru"  # any registered cell, or "attention"
    d_model: int = 256  # width
    n_layers: int = 2  # LM blocks
    conv: int = 0  # short causal conv width before each mixer (0: none)
    cell_options: dict = dataclasses.field(default_factory=dict)  # e.g. {"allow_neg_eigval": True}
    length: int = 128  # characters per training window (T)
    batch: int = 32  # windows per step
    lr: float = 2e-3  # AdamW peak learning rate (warm-up, cosine over `steps`)
    weight_decay: float = 0.01  # AdamW weight decay
    steps: int = 100_000  # step budget; the learning-rate schedule runs over it
    minutes: float = 10.0  # time budget (training only; math.inf: none): stops training early
    eval_every: int = 200  # steps between validation estimates (and checkpoints)
    eval_windows: int = 64  # validation windows per estimate (length 4 * `length`)
    seed: int = 0  # model init and data order
    out: str = "results/lm"  # checkpoint, model, metrics, loss curve
    sample_chars: int = 400  # characters sampled at the end
    device: str = "cpu"  # torch device (under torchrun, cuda means cuda:LOCAL_RANK)
    fsdp: bool = False  # under torchrun: shard the model with FSDP2 instead of DDP


# Not recorded in OUT/config.json: budgets may be raised to continue a run, and these do not
# change its numbers. The data is recorded by content (a fingerprint), not by path.
UNRECORDED = ("data", "steps", "minutes", "out", "device", "sample_chars", "fsdp")
CHECKPOINT = "checkpoint.safetensors"
BINARY_SHARE = 0.01  # more NUL or undecodable characters than this: --data is not text


def check_config(cfg: LMConfig) -> torch.device:
    """Raise naming the option for any value out of range; the device, once it is checked."""
    for field in ("max_chars", "d_model", "n_layers", "length", "batch", "steps", "eval_every",
                  "eval_windows"):
        _options.integer(cfg, field, 1)
    _options.integer(cfg, "conv", 0)
    _options.integer(cfg, "sample_chars", 0)
    _options.integer(cfg, "seed", 0, _options.SEED_MAX)
    _options.number(cfg, "lr")
    _options.number(cfg, "weight_decay", strict=False)
    _options.number(cfg, "minutes", infinite=True)
    _options.number(cfg, "val_fraction", high=0.5)
    check_mixer(None, "--cell", cfg.cell)
    if not isinstance(cfg.cell_options, dict):
        raise TypeError(f"--cell-options: expected a dict of options, got {cfg.cell_options!r}")
    return check_device(cfg.device)


@dataclasses.dataclass
class Corpus:
    text: str  # the characters read
    source: str  # where from
    vocab: Vocab  # its characters
    train: torch.Tensor  # ids (N,): the first part
    val: torch.Tensor  # ids (M,): the last ``val_fraction``


def load_data(cfg: LMConfig, warn) -> Corpus:
    """The corpus of ``cfg.data``, split; refuses a text too short for the windows asked for."""
    text, source = load_text(Path(cfg.data) if cfg.data is not None else None, cfg.max_chars)
    share = undecodable_share(text)
    if share > BINARY_SHARE:
        warn(f"--data: {source} does not look like text ({share:.0%} of its characters are NUL "
             f"or not UTF-8); training on it anyway")
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    split = int(len(data) * (1 - cfg.val_fraction))
    train, val = data[:split], data[split:]
    if len(val) < 4 * cfg.length + 2 or len(train) < cfg.length + 2:
        raise ValueError(f"--length: expected at most {min((len(val) - 2) // 4, len(train) - 2)} "
                         f"for this text (validation windows are 4 x --length + 1 of its "
                         f"last {len(val):,} characters), got {cfg.length}; give more text or a "
                         f"shorter --length")
    return Corpus(text, source, vocab, train, val)


def build(cfg: LMConfig, vocab_size: int, device: torch.device) -> LM:
    """The LM, once its options are checked and a lower bound of a training step's memory fits
    the device (sized on the meta device, so any sizes cost nothing to check)."""
    def make(n_layers: int) -> LM:
        return LM(vocab_size, cfg.d_model, n_layers, cell=cfg.cell, conv=cfg.conv,
                  cell_options=cfg.cell_options or None)
    try:
        params = _options.parameter_count(make, cfg.n_layers)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"--cell-options/--d-model/--conv: cannot build an LM of "
                         f"{cfg.cell!r}: {err}") from None
    tokens = cfg.batch * cfg.length  # each layer keeps at least its fp32 output per token
    _options.check_memory(params, 4 * tokens * (cfg.d_model * cfg.n_layers + 2 * vocab_size),
                          device, "--d-model/--layers/--batch/--length")
    torch.manual_seed(cfg.seed)
    return make(cfg.n_layers).to(device)


def bits_per_char(lm: LM, data: torch.Tensor, cfg: LMConfig, n_windows: int) -> float:
    """Mean cross-entropy in bits on fixed validation windows (the same ones every time)."""
    gen = torch.Generator().manual_seed(12345)
    lm.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n_windows, 16):
            x, y = windows(data, min(16, n_windows - start), 4 * cfg.length, gen)
            logits = lm(x.to(cfg.device))
            total += torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), y.to(cfg.device).flatten(), reduction="sum").item()
            count += y.numel()
    lm.train()
    return total / count / math.log(2)


def plot_curve(history: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    train = [(h["step"], h["train_bpc"]) for h in history if "train_bpc" in h]
    val = [(h["step"], h["val_bpc"]) for h in history if "val_bpc" in h]
    if train:
        ax.plot(*zip(*train), label="train (running mean)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def train_loop(lm: LM, opt, gens: dict, corpus: Corpus, cfg: LMConfig, meta: dict,
               console: Console, save, world: distributed.World = distributed.SINGLE,
               model: Optional[torch.nn.Module] = None) -> dict:
    """Train from ``meta`` (step, seconds, history) until a budget ends; returns the new meta.
    Distributed: ``model`` is ``lm`` made data-parallel; every rank draws the global batch and
    trains on its slice, and the budget and loss checks use values all ranks share."""
    model = lm if model is None else model
    step, history = meta["step"], meta["history"]
    budget = cfg.minutes * 60
    start = time.perf_counter() - meta["seconds"]
    running = None
    columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        job = progress.add_task(f"training {cfg.cell}", total=1.0)
        while step < cfg.steps and not distributed.any_rank(
                time.perf_counter() - start >= budget, world):
            x, y = windows(corpus.train, cfg.batch, cfg.length, gens["data"])
            x, y = distributed.shard(x, world), distributed.shard(y, world)  # (B / ranks, T)
            logits = model(x.to(cfg.device))
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                                     y.to(cfg.device).flatten())
            global_loss = distributed.mean(loss, world)  # the global batch's mean
            if not torch.isfinite(global_loss):
                raise FloatingPointError(
                    f"train lm: the loss is {global_loss.item()} at step {step}; try a smaller "
                    f"--lr (the last checkpoint, from before, is kept)")
            optimizer_step(lm, opt, loss, lr_at(cfg.lr, step, cfg.steps), 1.0)
            step += 1
            bpc = global_loss.item() / math.log(2)
            running = bpc if running is None else 0.98 * running + 0.02 * bpc
            if step % cfg.eval_every == 0:
                val_bpc = bits_per_char(lm, corpus.val, cfg, cfg.eval_windows)
                history.append({"step": step, "train_bpc": running, "val_bpc": val_bpc,
                                "seconds": time.perf_counter() - start})
                save({"step": step, "seconds": time.perf_counter() - start,
                      "history": history})
            done = max(step / cfg.steps, (time.perf_counter() - start) / budget)  # display only
            progress.update(job, completed=done, description=escape(
                f"training {cfg.cell}: step {step}, train {running:.3f} bpc"
                + (f", val {history[-1]['val_bpc']:.3f}" if history else "")))
    return {"step": step, "seconds": time.perf_counter() - start, "history": history}


def run(cfg: LMConfig, console: Console) -> dict:
    """Train (or resume) and report; returns (and writes to ``out/metrics.json``) the metrics.
    Every check comes before the first file is written. Under torchrun every rank returns rank
    0's metrics, and the process group is left at the end however the run ends."""
    device = check_config(cfg)
    world, device = distributed.setup(device)
    try:
        result = train(cfg, distributed.quiet(console, world), world, device)
    except BaseException:
        distributed.teardown(world, finished=False)
        raise
    distributed.teardown(world)
    return result


def train(cfg: LMConfig, console: Console, world: distributed.World,
          device: torch.device) -> dict:
    if cfg.fsdp and not world.launched:
        raise ValueError("--fsdp: shards the model across the processes of a torchrun launch; "
                         "run under `torchrun --nproc-per-node N`, or leave --fsdp out")
    distributed.check_batch(cfg.batch, world)
    warn = warner(console)
    corpus = load_data(cfg, warn)
    lm = build(cfg, len(corpus.vocab), device)
    adamw = lambda params: torch.optim.AdamW(params, lr=cfg.lr,  # noqa: E731
                                             weight_decay=cfg.weight_decay)
    opt = adamw(lm.parameters())
    gens = {"data": torch.Generator().manual_seed(cfg.seed)}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNRECORDED}
    settings["data"] = f"{len(corpus.text):,} characters, sha256 {fingerprint(corpus.text)}"
    claimed = lambda: claim(Path(cfg.out), settings, CHECKPOINT, "train lm")  # noqa: E731
    with distributed.main_context(world, claimed, Path(cfg.out)) as out:
        ckpt = out / CHECKPOINT  # refused past the step budget, before a file is written
        meta = distributed.main_first(world, lambda: prepare(ckpt, lm, opt, gens, corpus, cfg,
                                                             settings, console, warn))
        if not world.main:  # read only now: rank 0 has moved a damaged checkpoint aside
            meta = checkpoint.load(ckpt, lm, opt, gens, max_step=cfg.steps)
        meta = meta or {"step": 0, "seconds": 0.0, "history": []}
        par = distributed.parallel(lm, opt, world, cfg.fsdp, adamw)

        def save(m: dict):  # every rank gathers (FSDP); rank 0 writes
            held = par.full_state()  # (model, optimizer) with the full state; None off rank 0
            if held is not None:
                checkpoint.save(ckpt, *held, gens, m)
            return held
        meta = train_loop(lm, par.optimizer, gens, corpus, cfg, meta, console, save, world,
                          par.model)
        held = save(meta)
        result = finish(held[0].to(device), corpus, cfg, meta, out, console) if held else None
        return distributed.broadcast(result, world)


def prepare(ckpt: Path, lm: LM, opt, gens: dict, corpus: Corpus, cfg: LMConfig, settings: dict,
            console: Console, warn) -> Optional[dict]:
    """Rank 0, holding the output directory: resume from its checkpoint (None: none), record
    the settings and vocabulary, say what is trained on."""
    meta = checkpoint.load_or_restart(ckpt, lm, opt, gens, warn, max_step=cfg.steps)
    record(ckpt.parent, settings)
    corpus.vocab.save(ckpt.parent / "vocab.json")
    console.print(f"corpus: {corpus.source}, {len(corpus.text):,} characters, vocabulary "
                  f"{len(corpus.vocab)}; train {len(corpus.train):,} / validation "
                  f"{len(corpus.val):,}", markup=False)
    if meta and meta["step"]:
        console.print(f"resuming from step {meta['step']} ({meta['seconds']:.0f}s trained)")
    return meta


def finish(lm: LM, corpus: Corpus, cfg: LMConfig, meta: dict, out: Path,
           console: Console) -> dict:
    """The final validation, model, loss curve, sample and metrics."""
    step, seconds, history = meta["step"], meta["seconds"], meta["history"]
    val_bpc = bits_per_char(lm, corpus.val, cfg, 4 * cfg.eval_windows)
    history = history + [{"step": step, "val_bpc": val_bpc, "seconds": seconds}]
    save_model(lm, out / "model")
    plot_curve(history, out / "loss.png")
    split = len(corpus.train)
    ids = corpus.vocab.encode(corpus.text[split:split + 40])[None].to(cfg.device)
    sample = lm.generate(ids, cfg.sample_chars, temperature=0.8, top_k=20,
                         generator=torch.Generator().manual_seed(cfg.seed))
    config = {**dataclasses.asdict(cfg), "minutes": cfg.minutes if math.isfinite(cfg.minutes)
              else None}  # JSON has no infinity
    result = {"cell": cfg.cell, "val_bpc": round(val_bpc, 4), "steps": step,
              "train_seconds": round(seconds, 1), "parameters": sum(
                  p.numel() for p in lm.parameters()),
              "vocab": len(corpus.vocab), "corpus": corpus.source, "config": config,
              "sample": corpus.vocab.decode(sample[0].tolist())}
    write_atomic(out / "metrics.json", json.dumps(result, indent=1))
    console.print(f"{cfg.cell}: validation {val_bpc:.3f} bits/char after {step} steps "
                  f"({seconds:.0f}s, {result['parameters']:,} parameters); wrote {out}/"
                  f"{{metrics.json, loss.png, model/, checkpoint.safetensors}}", markup=False)
    console.print("[bold]sample[/bold] (prompt from the validation text, then generated):")
    console.print(result["sample"], markup=False, highlight=False)
    return result
